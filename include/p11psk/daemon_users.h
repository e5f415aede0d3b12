/* SPDX-License-Identifier: Apache-2.0 */
/* The users p11pskd may run as, which a client checks before it sends anything. */
#ifndef P11PSK_DAEMON_USERS_H
#define P11PSK_DAEMON_USERS_H

#include <stddef.h>
#include <sys/types.h>

/* The system user packages create for p11pskd; allowed as a daemon user when it exists. */
#define P11PSK_DAEMON_SYSUSER "p11psk"

#define P11PSK_DAEMON_USERS_MAX 8

/*
 * The users p11pskd may run as. A client checks the uid behind the socket (SO_PEERCRED)
 * before it sends anything: whoever can put a socket at the path (a directory another uid
 * controls, a stale path) must not receive handles or handshake secrets.
 */
typedef struct {
    uid_t uid[P11PSK_DAEMON_USERS_MAX];
    int n;
    char names[192]; /* "root, p11psk": for error messages */
} p11psk_daemon_users;

/* Adds uid (named name, or "uid N" when name is NULL) unless present; -1 when full. */
int p11psk_daemon_users_add(p11psk_daemon_users *p, uid_t uid, const char *name);
/* root and the P11PSK_DAEMON_SYSUSER user when it exists. */
void p11psk_daemon_users_default(p11psk_daemon_users *p);
/*
 * "NAME|UID[,NAME|UID...]" replaces p's contents. Returns -1 with a message in err on an
 * empty list, an unknown user or too many entries (p is then empty: deny).
 */
int p11psk_daemon_users_parse(p11psk_daemon_users *p, const char *spec, char *err, size_t errcap);
int p11psk_daemon_users_allows(const p11psk_daemon_users *p, uid_t uid);

#endif
