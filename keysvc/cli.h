/* SPDX-License-Identifier: Apache-2.0 */
/* Shared between the CLI's command files (cli.c, migrate.c, status.c, doctor.c). */
#ifndef P11PSK_KEYSVC_CLI_H
#define P11PSK_KEYSVC_CLI_H

#include <stdint.h>
#include <stdio.h>

#include "config.h"
#include "p11psk/handle.h"
#include "p11psk/wire.h"
#include "token.h"

/* Longest pkcs11: URI we print: a 255-byte label and a 64-byte CKA_ID, every byte %xx. */
#define P11PSK_URI_MAX 1280

/* Opens the configured token; prints the reason naming the fix and returns 0 on failure. */
int p11psk_cli_open_token(const p11psk_config *cfg, int rw, p11psk_token **tok);
/* The hex handle of a key in tok (the token's handle key is created if missing); prints why
 * and returns 0 if its CKA_ID does not fit a handle or the handle key is unusable. */
int p11psk_cli_handle_hex(p11psk_token *tok, const p11psk_key *k,
                          char hex[P11PSK_HANDLE_HEX_LEN + 1]);
/* The key as an RFC 7512 URI: pkcs11:token=...;id=...;object=LABEL;type=secret-key. */
void p11psk_cli_uri(const char *token_label, const p11psk_key *k, char *out, size_t cap);

/* An ID argument: a label, or a pkcs11: URI whose object= is the label; its id= narrows
 * the keys to that CKA_ID and its token= must name the configured token. */
typedef struct {
    char label[P11PSK_KEY_LABEL_MAX];
    uint8_t id[P11PSK_KEY_ID_MAX];
    size_t idlen;   /* 0: any CKA_ID */
    char token[33]; /* "" : any token */
    int is_uri;
} p11psk_id_arg;

/* Parses arg; prints why and returns -1 when it is a URI we cannot use. */
int p11psk_cli_id_parse(const char *arg, p11psk_id_arg *ia);
/* 1 if key k (in token token_label) is the one ia names. */
int p11psk_cli_id_match(const p11psk_id_arg *ia, const char *token_label, const p11psk_key *k);
/* Checks ia's token= against the open token; prints why and returns -1 on a mismatch. */
int p11psk_cli_id_token_ok(const p11psk_id_arg *ia, const char *token_label);

/* One request to p11pskd at socket (NULL: the default). Returns the answer's status
 * (P11PSK_ST_*), or a P11PSK_CALL_* (< 0) with why set. resp: P11PSK_WIRE_MAX bytes. */
int p11psk_cli_daemon_call(const char *socket, p11psk_frame *req, uint8_t *resp, p11psk_msg *m,
                           char *why, size_t whylen);
/* Exit status of rm, rotate and migrate --replace when the token change was made but
 * p11pskd could not be told (FLUSH): it notices within revalidate-ms. */
#define P11PSK_EXIT_NOT_TOLD 3

/* Tells p11pskd synchronously that key k was removed or replaced (FLUSH), after done
 * ("the key was removed from the token", ...) happened. Prints how many cached values it
 * dropped, or on stderr why it could not be told; returns 1 if told (or a key without a
 * handle, which p11pskd cannot serve), else 0. */
int p11psk_cli_flush(const p11psk_config *cfg, const p11psk_key *k, const char *done);
/* Writes s as a JSON string, quotes included. */
void p11psk_cli_json_str(FILE *f, const char *s);

extern const char p11psk_usage_migrate[];
int p11psk_cli_migrate(const p11psk_config *cfg, int argc, char **argv);
extern const char p11psk_usage_export[];
int p11psk_cli_export(const p11psk_config *cfg, int argc, char **argv);
extern const char p11psk_usage_status[];
int p11psk_cli_status(const p11psk_config *cfg, int argc, char **argv);
extern const char p11psk_usage_metrics[];
int p11psk_cli_metrics(const p11psk_config *cfg, int argc, char **argv);
extern const char p11psk_usage_doctor[];
int p11psk_cli_doctor(const p11psk_config *cfg, int argc, char **argv);

#endif
