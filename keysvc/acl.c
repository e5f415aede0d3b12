/* SPDX-License-Identifier: Apache-2.0 */
#include "acl.h"

#include <errno.h>
#include <fnmatch.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int parse_id(const char *s, unsigned long *out)
{
    char *end;

    if (*s < '0' || *s > '9')
        return 0;
    errno = 0;
    *out = strtoul(s, &end, 10);
    return errno == 0 && *end == '\0' && *out < (unsigned long)(uid_t)-1;
}

static int cond_uid(p11psk_acl_rule *r, const char *v, char *err, size_t errlen)
{
    struct passwd *pw;
    unsigned long n;

    if (r->has_uid) {
        snprintf(err, errlen, "uid= given twice; write one allow line per user");
        return 0;
    }
    if (parse_id(v, &n)) {
        r->uid = (uid_t)n;
    } else if ((pw = getpwnam(v)) != NULL) {
        r->uid = pw->pw_uid;
    } else {
        snprintf(err, errlen, "unknown user '%s'; create it or use a numeric uid", v);
        return 0;
    }
    r->has_uid = 1;
    return 1;
}

static int cond_gid(p11psk_acl_rule *r, const char *v, char *err, size_t errlen)
{
    struct group *gr;
    unsigned long n;

    if (r->has_gid) {
        snprintf(err, errlen, "gid= given twice; write one allow line per group");
        return 0;
    }
    if (parse_id(v, &n)) {
        r->gid = (gid_t)n;
    } else if ((gr = getgrnam(v)) != NULL) {
        r->gid = gr->gr_gid;
    } else {
        snprintf(err, errlen, "unknown group '%s'; create it or use a numeric gid", v);
        return 0;
    }
    r->has_gid = 1;
    return 1;
}

/* Conditions a rule may carry; new policy keys are added here. */
static const struct {
    const char *key;
    int (*parse)(p11psk_acl_rule *r, const char *v, char *err, size_t errlen);
} acl_conds[] = {
    {"uid", cond_uid},
    {"gid", cond_gid},
};

static int rule_parse(p11psk_acl_rule *r, char *text, char *err, size_t errlen)
{
    char *save = NULL, *word, *eq;
    size_t i;

    word = strtok_r(text, " \t", &save);
    if (word == NULL) {
        snprintf(err, errlen,
                 "allow needs an identity glob, e.g. 'allow web-* uid=www-data' ('allow *' "
                 "lets everyone use every key)");
        return 0;
    }
    if ((r->glob = strdup(word)) == NULL) {
        snprintf(err, errlen, "out of memory");
        return 0;
    }
    while ((word = strtok_r(NULL, " \t", &save)) != NULL) {
        eq = strchr(word, '=');
        if (eq == NULL || eq == word || eq[1] == '\0') {
            snprintf(err, errlen, "bad condition '%s'; write uid=USER or gid=GROUP", word);
            return 0;
        }
        *eq = '\0';
        for (i = 0; i < sizeof(acl_conds) / sizeof(acl_conds[0]); i++)
            if (strcmp(word, acl_conds[i].key) == 0)
                break;
        if (i == sizeof(acl_conds) / sizeof(acl_conds[0])) {
            snprintf(err, errlen, "unknown condition '%s='; allowed are uid= and gid=", word);
            return 0;
        }
        if (!acl_conds[i].parse(r, eq + 1, err, errlen))
            return 0;
    }
    return 1;
}

static int acl_add_kind(p11psk_acl *acl, int kind, const char *text, const char *where, char *err,
                        size_t errlen);

int p11psk_acl_add(p11psk_acl *acl, const char *text, const char *where, char *err, size_t errlen)
{
    return acl_add_kind(acl, P11PSK_ACL_KEY, text, where, err, errlen);
}

int p11psk_acl_add_perm(p11psk_acl *acl, int kind, const char *text, const char *where, char *err,
                        size_t errlen)
{
    char buf[1024];

    if (strchr(text, '=') == NULL) {
        snprintf(err, errlen, "%s takes conditions only, e.g. %s uid=prometheus",
                 kind == P11PSK_ACL_ADMIN ? "allow-admin" : "allow-status",
                 kind == P11PSK_ACL_ADMIN ? "allow-admin" : "allow-status");
        return 0;
    }
    snprintf(buf, sizeof(buf), "* %s", text); /* the same parser, any identity */
    return acl_add_kind(acl, kind, buf, where, err, errlen);
}

static int acl_add_kind(p11psk_acl *acl, int kind, const char *text, const char *where, char *err,
                        size_t errlen)
{
    p11psk_acl_rule r;
    char *copy;
    int ok;

    memset(&r, 0, sizeof(r));
    r.kind = kind;
    snprintf(r.where, sizeof(r.where), "%s", where);
    if ((copy = strdup(text)) == NULL) {
        snprintf(err, errlen, "out of memory");
        return 0;
    }
    ok = rule_parse(&r, copy, err, errlen);
    free(copy);
    if (ok && acl->n == acl->cap) {
        size_t cap = acl->cap ? acl->cap * 2 : 8;
        p11psk_acl_rule *nr = realloc(acl->rules, cap * sizeof(*nr));

        if (nr == NULL) {
            snprintf(err, errlen, "out of memory");
            ok = 0;
        } else {
            acl->rules = nr;
            acl->cap = cap;
        }
    }
    if (!ok) {
        free(r.glob);
        return 0;
    }
    acl->rules[acl->n++] = r;
    return 1;
}

static int in_group(const p11psk_acl_peer *peer, gid_t gid)
{
    size_t i;

    if (peer->gid == gid)
        return 1;
    for (i = 0; i < peer->ngroups; i++)
        if (peer->groups[i] == gid)
            return 1;
    return 0;
}

/* The rule's uid= and gid= conditions hold for peer (a rule without them applies to all). */
static int rule_applies(const p11psk_acl_rule *r, const p11psk_acl_peer *peer)
{
    return (!r->has_uid || r->uid == peer->uid) && (!r->has_gid || in_group(peer, r->gid));
}

const p11psk_acl_rule *p11psk_acl_check(const p11psk_acl *acl, const char *ident,
                                        const p11psk_acl_peer *peer)
{
    size_t i;

    for (i = 0; i < acl->n; i++) {
        const p11psk_acl_rule *r = &acl->rules[i];

        if (r->kind == P11PSK_ACL_KEY && rule_applies(r, peer) &&
            (ident == NULL || fnmatch(r->glob, ident, 0) == 0))
            return r;
    }
    return NULL;
}

int p11psk_acl_peer_has_any_rule(const p11psk_acl *acl, const p11psk_acl_peer *peer)
{
    return p11psk_acl_check(acl, NULL, peer) != NULL;
}

int p11psk_acl_check_perm(const p11psk_acl *acl, int kind, const p11psk_acl_peer *peer)
{
    size_t i;

    for (i = 0; i < acl->n; i++) {
        const p11psk_acl_rule *r = &acl->rules[i];

        if (r->kind != kind && !(r->kind == P11PSK_ACL_ADMIN && kind == P11PSK_ACL_STATUS))
            continue;
        if (!rule_applies(r, peer))
            continue;
        return 1;
    }
    return 0;
}

void p11psk_acl_free(p11psk_acl *acl)
{
    size_t i;

    for (i = 0; i < acl->n; i++)
        free(acl->rules[i].glob);
    free(acl->rules);
    memset(acl, 0, sizeof(*acl));
}
