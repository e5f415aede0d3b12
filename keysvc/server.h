/* SPDX-License-Identifier: Apache-2.0 */
/* p11pskd's socket and request loop. */
#ifndef P11PSK_KEYSVC_SERVER_H
#define P11PSK_KEYSVC_SERVER_H

#include <stddef.h>

#include "cache.h"
#include "config.h"
#include "ladder.h"
#include "token.h"

/*
 * Creates the listening socket at cfg->socket: parent directory made if missing (0755), a
 * stale socket file removed only when nothing answers on it, then socket-mode/socket-group
 * applied. Returns the fd, or -1 with a message naming the fix.
 */
int p11psk_server_listen(const p11psk_config *cfg, char *err, size_t errlen);

/* Worker threads the server will run (cfg->threads, or one per CPU). */
unsigned p11psk_server_threads(const p11psk_config *cfg);

/*
 * Serves requests with worker threads until SIGTERM or SIGINT: requests that have arrived
 * are answered, then it returns 0 (-1 on a fatal error). SIGHUP reloads cfg->path: ACL,
 * policy, log level and limits change without dropping connections; a bad file is refused
 * and the running configuration kept. Call with SIGTERM, SIGINT and SIGHUP unblocked in no
 * other thread.
 */
/*
 * Called on the signal thread before a SIGHUP reload (done = 0) and after it (done = 1, err
 * NULL when applied, else why the file was refused); p11pskd tells systemd.
 */
typedef void (*p11psk_reload_hook)(int done, const char *err);
void p11psk_server_set_reload_hook(p11psk_reload_hook hook);

int p11psk_server_run(p11psk_config *cfg, p11psk_token *tok, p11psk_ladder *lad,
                      p11psk_cache *cache, int listen_fd);

#endif
