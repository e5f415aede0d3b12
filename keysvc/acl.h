/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Access control: which peers may use which keys. Deny by default.
 *
 * Rule text (after "allow"):  IDENT-GLOB [uid=NAME|NUM] [gid=NAME|NUM]
 * A rule matches when fnmatch(IDENT-GLOB, key label) matches and every condition given
 * matches the peer's credentials; a rule without conditions matches everyone. gid= matches
 * the peer's primary group (SO_PEERCRED) or any supplementary group (SO_PEERGROUPS), as
 * file permissions do.
 * Conditions are key=value words parsed from a table so later policy keys slot in.
 */
#ifndef P11PSK_KEYSVC_ACL_H
#define P11PSK_KEYSVC_ACL_H

#include <stddef.h>
#include <sys/types.h>

/* What a rule grants: a key (by identity glob), status reports, or administration
 * (status and cache flushes). */
enum p11psk_acl_kind { P11PSK_ACL_KEY = 0, P11PSK_ACL_STATUS = 1, P11PSK_ACL_ADMIN = 2 };

typedef struct {
    int kind;
    char *glob;
    int has_uid;
    uid_t uid;
    int has_gid;
    gid_t gid;
    char where[64]; /* "FILE:LINE" for logs */
} p11psk_acl_rule;

typedef struct {
    p11psk_acl_rule *rules;
    size_t n;
    size_t cap;
} p11psk_acl;

/* Parses one rule's text and appends it. Returns 1, or 0 with a message naming the fix. */
int p11psk_acl_add(p11psk_acl *acl, const char *text, const char *where, char *err, size_t errlen);
/* "allow-status COND..." / "allow-admin COND...": conditions only (kind STATUS or ADMIN). */
int p11psk_acl_add_perm(p11psk_acl *acl, int kind, const char *text, const char *where, char *err,
                        size_t errlen);

/* The peer as the socket reports it. */
typedef struct {
    uid_t uid;
    gid_t gid;
    const gid_t *groups; /* supplementary groups */
    size_t ngroups;
} p11psk_acl_peer;

/* Returns the first matching rule, or NULL when the peer may not use the key (ident NULL:
 * the first key rule that applies to the peer, whatever its glob). */
const p11psk_acl_rule *p11psk_acl_check(const p11psk_acl *acl, const char *ident,
                                        const p11psk_acl_peer *peer);
/* 1 if some key rule could match the peer: one without conditions, or whose uid= names it or
 * whose gid= names one of its groups. A peer without one may use no key at all, so it is
 * refused before any lookup and learns nothing about which keys exist. */
int p11psk_acl_peer_has_any_rule(const p11psk_acl *acl, const p11psk_acl_peer *peer);
/* Status or admin permission: a matching rule of that kind (admin implies status). */
int p11psk_acl_check_perm(const p11psk_acl *acl, int kind, const p11psk_acl_peer *peer);

void p11psk_acl_free(p11psk_acl *acl);

#endif
