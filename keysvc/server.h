/* p11pskd's socket and request loop. */
#ifndef P11PSK_KEYSVC_SERVER_H
#define P11PSK_KEYSVC_SERVER_H

#include <stddef.h>

#include "config.h"
#include "ladder.h"
#include "token.h"

#define P11PSK_SERVER_MAX_CONNS 256

/*
 * Creates the listening socket at cfg->socket: parent directory made if missing (0755), a
 * stale socket file removed only when nothing answers on it, then socket-mode/socket-group
 * applied. Returns the fd, or -1 with a message naming the fix.
 */
int p11psk_server_listen(const p11psk_config *cfg, char *err, size_t errlen);

/* Serves requests until SIGTERM or SIGINT. Returns 0 on a clean stop, -1 on a fatal error. */
int p11psk_server_run(const p11psk_config *cfg, p11psk_token *tok, p11psk_ladder *lad,
                      int listen_fd);

#endif
