/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Access control: identity globs, uid=/gid= conditions, supplementary groups, several
 * rules, deny by default, status/admin permissions, and the errors an operator sees.
 * Uses users and groups every Debian system has: root (0), daemon (1), nogroup (65534).
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "acl.h"
#include "config.h"
#include "unit.h"

static char err[512];

static void add(p11psk_acl *acl, const char *text, const char *where)
{
    err[0] = '\0';
    ck_assert_msg(p11psk_acl_add(acl, text, where, err, sizeof(err)), "'%s' refused: %s", text,
                  err);
}

static p11psk_acl_peer peer(uid_t uid, gid_t gid)
{
    p11psk_acl_peer p = {.uid = uid, .gid = gid, .groups = NULL, .ngroups = 0};

    return p;
}

START_TEST(deny_by_default)
{
    p11psk_acl acl = {0};
    p11psk_acl_peer root = peer(0, 0);

    ck_assert_ptr_null(p11psk_acl_check(&acl, "web-1", &root));
    ck_assert_int_eq(p11psk_acl_check_perm(&acl, P11PSK_ACL_STATUS, &root), 0);
    ck_assert_int_eq(p11psk_acl_check_perm(&acl, P11PSK_ACL_ADMIN, &root), 0);
    p11psk_acl_free(&acl);
}
END_TEST

START_TEST(glob_without_conditions)
{
    p11psk_acl acl = {0};
    p11psk_acl_peer anyone = peer(4321, 4321);

    add(&acl, "web-*", "t:1");
    ck_assert_ptr_nonnull(p11psk_acl_check(&acl, "web-1", &anyone));
    ck_assert_ptr_nonnull(p11psk_acl_check(&acl, "web-", &anyone));
    ck_assert_ptr_null(p11psk_acl_check(&acl, "db-1", &anyone));
    ck_assert_ptr_null(p11psk_acl_check(&acl, "xweb-1", &anyone));
    ck_assert_ptr_null(p11psk_acl_check(&acl, "Web-1", &anyone)); /* case matters */
    add(&acl, "dev-?[0-9]", "t:2");
    ck_assert_ptr_nonnull(p11psk_acl_check(&acl, "dev-a7", &anyone));
    ck_assert_ptr_null(p11psk_acl_check(&acl, "dev-a", &anyone));
    ck_assert_ptr_null(p11psk_acl_check(&acl, "dev-ab7", &anyone));
    /* A key rule grants no status or admin permission. */
    ck_assert_int_eq(p11psk_acl_check_perm(&acl, P11PSK_ACL_STATUS, &anyone), 0);
    p11psk_acl_free(&acl);
}
END_TEST

START_TEST(uid_condition)
{
    p11psk_acl acl = {0};
    p11psk_acl_peer root = peer(0, 0), dmn = peer(1, 1), other = peer(1000, 0);
    const p11psk_acl_rule *r;

    add(&acl, "a-* uid=root", "t:1");
    add(&acl, "b-* uid=1", "t:2");
    r = p11psk_acl_check(&acl, "a-x", &root);
    ck_assert_ptr_nonnull(r);
    ck_assert_int_eq(r->has_uid, 1);
    ck_assert_int_eq(r->uid, 0);
    ck_assert_int_eq(r->has_gid, 0);
    ck_assert_ptr_null(p11psk_acl_check(&acl, "a-x", &dmn));
    ck_assert_ptr_null(p11psk_acl_check(&acl, "a-x", &other)); /* gid 0 is not uid 0 */
    ck_assert_ptr_nonnull(p11psk_acl_check(&acl, "b-x", &dmn));
    ck_assert_ptr_null(p11psk_acl_check(&acl, "b-x", &root));
    p11psk_acl_free(&acl);
    add(&acl, "* uid=daemon", "t:3");
    ck_assert_int_eq(acl.rules[0].uid, 1);
    p11psk_acl_free(&acl);
}
END_TEST

START_TEST(gid_primary_and_supplementary)
{
    p11psk_acl acl = {0};
    static const gid_t supp[] = {7, 65534, 9};
    p11psk_acl_peer prim = peer(1000, 65534), sup = peer(1000, 1000), none = peer(1000, 1000);

    sup.groups = supp;
    sup.ngroups = 3;
    none.groups = supp;
    none.ngroups = 1; /* only group 7 */
    add(&acl, "mqtt-* gid=nogroup", "t:1");
    ck_assert_int_eq(acl.rules[0].gid, 65534);
    ck_assert_ptr_nonnull(p11psk_acl_check(&acl, "mqtt-1", &prim));
    ck_assert_ptr_nonnull(p11psk_acl_check(&acl, "mqtt-1", &sup));
    ck_assert_ptr_null(p11psk_acl_check(&acl, "mqtt-1", &none));
    ck_assert_ptr_null(p11psk_acl_check(&acl, "web-1", &prim));
    p11psk_acl_free(&acl);
    add(&acl, "* gid=1", "t:2");
    ck_assert_int_eq(acl.rules[0].gid, 1);
    ck_assert_ptr_null(p11psk_acl_check(&acl, "k", &prim));
    p11psk_acl_free(&acl);
}
END_TEST

START_TEST(uid_and_gid_both_needed)
{
    p11psk_acl acl = {0};
    static const gid_t supp[] = {65534};
    p11psk_acl_peer both = peer(1, 1), uid_only = peer(1, 1), gid_only = peer(2, 65534);

    both.groups = supp;
    both.ngroups = 1;
    add(&acl, "k-* uid=daemon gid=nogroup", "t:1");
    ck_assert_ptr_nonnull(p11psk_acl_check(&acl, "k-1", &both));
    ck_assert_ptr_null(p11psk_acl_check(&acl, "k-1", &uid_only));
    ck_assert_ptr_null(p11psk_acl_check(&acl, "k-1", &gid_only));
    p11psk_acl_free(&acl);
}
END_TEST

/* Uniform denial: a peer no key rule could match, whatever the key's label. */
START_TEST(peer_has_any_rule)
{
    p11psk_acl acl = {0};
    static const gid_t supp[] = {65534};
    p11psk_acl_peer daemon_u = peer(1, 1), other = peer(1000, 1000), in_group = peer(1000, 1000);

    in_group.groups = supp;
    in_group.ngroups = 1;
    ck_assert_int_eq(p11psk_acl_peer_has_any_rule(&acl, &daemon_u), 0); /* no rules at all */
    add(&acl, "web-* uid=daemon", "t:1");
    add(&acl, "mqtt-* gid=nogroup", "t:2");
    ck_assert_int_eq(p11psk_acl_peer_has_any_rule(&acl, &daemon_u), 1);
    ck_assert_int_eq(p11psk_acl_peer_has_any_rule(&acl, &in_group), 1); /* supplementary */
    ck_assert_int_eq(p11psk_acl_peer_has_any_rule(&acl, &other), 0);
    /* status and admin rules grant no key */
    ck_assert(p11psk_acl_add_perm(&acl, P11PSK_ACL_ADMIN, "uid=1000", "t:3", err, sizeof(err)));
    ck_assert_int_eq(p11psk_acl_peer_has_any_rule(&acl, &other), 0);
    /* a rule without conditions could match everyone */
    add(&acl, "public-*", "t:4");
    ck_assert_int_eq(p11psk_acl_peer_has_any_rule(&acl, &other), 1);
    p11psk_acl_free(&acl);
}
END_TEST

/* Any one rule grants; the first that matches is the one reported (its FILE:LINE). */
START_TEST(several_rules)
{
    p11psk_acl acl = {0};
    p11psk_acl_peer root = peer(0, 0), dmn = peer(1, 1), other = peer(500, 500);
    const p11psk_acl_rule *r;

    add(&acl, "web-* uid=daemon", "p11pskd.conf:10");
    add(&acl, "web-1 uid=0", "p11pskd.conf:11");
    add(&acl, "* uid=0", "p11pskd.conf:12");
    r = p11psk_acl_check(&acl, "web-1", &dmn);
    ck_assert_ptr_nonnull(r);
    ck_assert_str_eq(r->where, "p11pskd.conf:10");
    r = p11psk_acl_check(&acl, "web-1", &root);
    ck_assert_ptr_nonnull(r);
    ck_assert_str_eq(r->where, "p11pskd.conf:11");
    r = p11psk_acl_check(&acl, "db", &root);
    ck_assert_ptr_nonnull(r);
    ck_assert_str_eq(r->where, "p11pskd.conf:12");
    ck_assert_ptr_null(p11psk_acl_check(&acl, "db", &dmn));
    ck_assert_ptr_null(p11psk_acl_check(&acl, "web-1", &other));
    ck_assert_uint_eq(acl.n, 3);
    p11psk_acl_free(&acl);
    ck_assert_uint_eq(acl.n, 0);
    ck_assert_ptr_null(acl.rules);
}
END_TEST

START_TEST(many_rules_grow)
{
    p11psk_acl acl = {0};
    p11psk_acl_peer p = peer(77, 77);
    char text[64], where[32];

    for (int i = 0; i < 40; i++) {
        snprintf(text, sizeof(text), "key-%d uid=%d", i, 100 + i);
        snprintf(where, sizeof(where), "f:%d", i + 1);
        add(&acl, text, where);
    }
    ck_assert_uint_eq(acl.n, 40);
    p.uid = 139;
    ck_assert_str_eq(p11psk_acl_check(&acl, "key-39", &p)->where, "f:40");
    ck_assert_ptr_null(p11psk_acl_check(&acl, "key-38", &p));
    p11psk_acl_free(&acl);
}
END_TEST

START_TEST(status_and_admin)
{
    p11psk_acl acl = {0};
    p11psk_acl_peer root = peer(0, 0), dmn = peer(1, 1), other = peer(500, 500);

    ck_assert(p11psk_acl_add_perm(&acl, P11PSK_ACL_STATUS, "uid=daemon", "t:1", err, sizeof(err)));
    ck_assert(p11psk_acl_add_perm(&acl, P11PSK_ACL_ADMIN, "uid=0", "t:2", err, sizeof(err)));
    ck_assert_int_eq(p11psk_acl_check_perm(&acl, P11PSK_ACL_STATUS, &dmn), 1);
    ck_assert_int_eq(p11psk_acl_check_perm(&acl, P11PSK_ACL_ADMIN, &dmn), 0);
    /* Admin implies status. */
    ck_assert_int_eq(p11psk_acl_check_perm(&acl, P11PSK_ACL_ADMIN, &root), 1);
    ck_assert_int_eq(p11psk_acl_check_perm(&acl, P11PSK_ACL_STATUS, &root), 1);
    ck_assert_int_eq(p11psk_acl_check_perm(&acl, P11PSK_ACL_STATUS, &other), 0);
    /* Permission rules match any identity, yet grant no key. */
    ck_assert_ptr_null(p11psk_acl_check(&acl, "web-1", &root));
    ck_assert_ptr_null(p11psk_acl_check(&acl, "web-1", &dmn));
    p11psk_acl_free(&acl);
}
END_TEST

/* text, expected error (exact) */
static const struct {
    const char *text, *want;
} bad_rules[] = {
    {"", "allow needs an identity glob, e.g. 'allow web-* uid=www-data' ('allow *' lets everyone "
         "use every key)"},
    {"web-* uid=p11psk-no-such-user",
     "unknown user 'p11psk-no-such-user'; create it or use a numeric uid"},
    {"web-* gid=p11psk-no-such-group",
     "unknown group 'p11psk-no-such-group'; create it or use a numeric gid"},
    {"web-* uid=0 uid=1", "uid= given twice; write one allow line per user"},
    {"web-* gid=0 gid=1", "gid= given twice; write one allow line per group"},
    {"web-* root", "bad condition 'root'; write uid=USER or gid=GROUP"},
    {"web-* uid=", "bad condition 'uid='; write uid=USER or gid=GROUP"},
    {"web-* =root", "bad condition '=root'; write uid=USER or gid=GROUP"},
    {"web-* user=root", "unknown condition 'user='; allowed are uid= and gid="},
    /* uid_t's all-ones value means "no uid": not a number, so looked up as a name. */
    {"web-* uid=4294967295", "unknown user '4294967295'; create it or use a numeric uid"},
};

START_TEST(bad_rule_errors)
{
    p11psk_acl acl = {0};

    err[0] = '\0';
    ck_assert_int_eq(p11psk_acl_add(&acl, bad_rules[_i].text, "t:1", err, sizeof(err)), 0);
    ck_assert_str_eq(err, bad_rules[_i].want);
    ck_assert_uint_eq(acl.n, 0); /* nothing half-added */
    p11psk_acl_free(&acl);
}
END_TEST

START_TEST(perm_needs_conditions)
{
    p11psk_acl acl = {0};

    ck_assert_int_eq(
        p11psk_acl_add_perm(&acl, P11PSK_ACL_STATUS, "prometheus", "t:1", err, sizeof(err)), 0);
    ck_assert_str_eq(err, "allow-status takes conditions only, e.g. allow-status uid=prometheus");
    ck_assert_int_eq(p11psk_acl_add_perm(&acl, P11PSK_ACL_ADMIN, "", "t:1", err, sizeof(err)), 0);
    ck_assert_str_eq(err, "allow-admin takes conditions only, e.g. allow-admin uid=prometheus");
    ck_assert_int_eq(p11psk_acl_add_perm(&acl, P11PSK_ACL_ADMIN, "gid=p11psk-no-such-group", "t:1",
                                         err, sizeof(err)),
                     0);
    ck_assert_str_eq(err, "unknown group 'p11psk-no-such-group'; create it or use a numeric gid");
    ck_assert_uint_eq(acl.n, 0);
    p11psk_acl_free(&acl);
}
END_TEST

/* The daemon's startup error for an unknown user or group names the file and line. */
START_TEST(startup_error_names_file_line)
{
    static const char *const lines[] = {
        "allow * uid=p11psk-no-such-user\n",
        "allow-status gid=p11psk-no-such-group\n",
        "allow-admin uid=p11psk-no-such-user\n",
    };
    static const char *const want[] = {
        "unknown user 'p11psk-no-such-user'; create it or use a numeric uid",
        "unknown group 'p11psk-no-such-group'; create it or use a numeric gid",
        "unknown user 'p11psk-no-such-user'; create it or use a numeric uid",
    };
    char path[] = "/tmp/p11psk-acl-XXXXXX", expect[600];
    p11psk_config cfg;
    FILE *f;
    int fd = mkstemp(path);

    ck_assert_int_ge(fd, 0);
    f = fdopen(fd, "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f, "# comment\nallow web-* uid=root gid=nogroup\n\n%s", lines[_i]);
    fclose(f);
    ck_assert_int_eq(p11psk_config_load(path, &cfg, err, sizeof(err)), 0);
    snprintf(expect, sizeof(expect), "%s:4: %s", path, want[_i]);
    unlink(path);
    ck_assert_str_eq(err, expect);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("acl");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, deny_by_default);
    tcase_add_test(tc, glob_without_conditions);
    tcase_add_test(tc, uid_condition);
    tcase_add_test(tc, gid_primary_and_supplementary);
    tcase_add_test(tc, uid_and_gid_both_needed);
    tcase_add_test(tc, several_rules);
    tcase_add_test(tc, peer_has_any_rule);
    tcase_add_test(tc, many_rules_grow);
    tcase_add_test(tc, status_and_admin);
    tcase_add_loop_test(tc, bad_rule_errors, 0, sizeof(bad_rules) / sizeof(bad_rules[0]));
    tcase_add_test(tc, perm_needs_conditions);
    tcase_add_loop_test(tc, startup_error_names_file_line, 0, 3);
    suite_add_tcase(s, tc);
    return p11psk_unit_run(s);
}
