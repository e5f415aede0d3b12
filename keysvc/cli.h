/* Shared between the CLI's command files (cli.c, migrate.c). */
#ifndef P11PSK_KEYSVC_CLI_H
#define P11PSK_KEYSVC_CLI_H

#include "config.h"
#include "p11psk/handle.h"
#include "token.h"

/* Opens the configured token; prints the reason naming the fix and returns 0 on failure. */
int p11psk_cli_open_token(const p11psk_config *cfg, int rw, p11psk_token **tok);
/* The hex handle of a key; prints why and returns 0 if its CKA_ID does not fit a handle. */
int p11psk_cli_handle_hex(const p11psk_key *k, char hex[P11PSK_HANDLE_HEX_LEN + 1]);

extern const char p11psk_usage_migrate[];
int p11psk_cli_migrate(const p11psk_config *cfg, int argc, char **argv);

#endif
