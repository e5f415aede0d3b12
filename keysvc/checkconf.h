/* SPDX-License-Identifier: Apache-2.0 */
/* p11pskd --check-config: the configuration checked without the token or the socket. */
#ifndef P11PSK_KEYSVC_CHECKCONF_H
#define P11PSK_KEYSVC_CHECKCONF_H

/*
 * Loads path as p11pskd would (keys, values, ACL users and groups) and checks that the
 * PIN file can be read and a module given by path exists. Prints each problem to stderr as
 * "FILE:LINE: message" ("FILE: message" when no line applies) and "FILE: ok" to stdout when
 * there is none. Returns 1 when the file is good, else 0.
 */
int p11psk_check_config(const char *path);

#endif
