/* SPDX-License-Identifier: Apache-2.0 */
/* Daemon policy keys, their bad-value errors, and the per-uid rate limiter. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "p11psk/handle.h"
#include "policy.h"
#include "unit.h"

static char err[256];

/* Sets key = v on p; returns the parser's verdict, failing if the key is not a policy key. */
static int set(p11psk_policy *p, const char *key, const char *v)
{
    int ok = -1;

    err[0] = '\0';
    ck_assert_msg(p11psk_policy_set(p, key, v, &ok, err, sizeof(err)) == 1, "%s not handled", key);
    ck_assert(ok == 0 || ok == 1);
    return ok;
}

START_TEST(defaults)
{
    p11psk_policy p;
    char s[32];

    memset(&p, 0xff, sizeof(p));
    p11psk_policy_defaults(&p);
    ck_assert_int_eq(p.allow_psk_ke, 0);
    ck_assert_int_eq(p.readable_keys, 1);
    ck_assert_uint_eq(p.rate_limit, 0);
    ck_assert(p11psk_policy_digest_ok(&p, P11PSK_MD_SHA256));
    ck_assert(p11psk_policy_digest_ok(&p, P11PSK_MD_SHA384));
    ck_assert(!p11psk_policy_digest_ok(&p, P11PSK_MD_NONE));
    ck_assert(!p11psk_policy_digest_ok(&p, 3));
    ck_assert(!p11psk_policy_digest_ok(&p, -1));
    ck_assert(!p11psk_policy_digest_ok(&p, 40));
    p11psk_policy_digests_str(&p, s, sizeof(s));
    ck_assert_str_eq(s, "SHA256 SHA384");
}
END_TEST

START_TEST(not_a_policy_key)
{
    p11psk_policy p;
    int ok = 7;

    p11psk_policy_defaults(&p);
    ck_assert_int_eq(p11psk_policy_set(&p, "cache", "on", &ok, err, sizeof(err)), 0);
    ck_assert_int_eq(p11psk_policy_set(&p, "allow-psk", "yes", &ok, err, sizeof(err)), 0);
    ck_assert_int_eq(ok, 7);
}
END_TEST

START_TEST(yes_no_keys)
{
    static const char *const yes[] = {"yes", "true", "on"}, *const no[] = {"no", "false", "off"};
    static const char *const keys[] = {"allow-psk-ke", "readable-keys"};
    p11psk_policy p;

    for (size_t k = 0; k < 2; k++) {
        for (size_t i = 0; i < 3; i++) {
            p11psk_policy_defaults(&p);
            ck_assert(set(&p, keys[k], yes[i]));
            ck_assert_int_eq(k == 0 ? p.allow_psk_ke : p.readable_keys, 1);
            ck_assert(set(&p, keys[k], no[i]));
            ck_assert_int_eq(k == 0 ? p.allow_psk_ke : p.readable_keys, 0);
        }
    }
}
END_TEST

START_TEST(yes_no_bad_values)
{
    static const char *const bad[] = {"maybe", "1", "YES", "", "yes ", "n"};
    p11psk_policy p;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        p11psk_policy_defaults(&p);
        ck_assert(!set(&p, "allow-psk-ke", bad[i]));
        ck_assert_str_eq(err, "allow-psk-ke must be yes or no");
        ck_assert_int_eq(p.allow_psk_ke, 0); /* unchanged */
        ck_assert(!set(&p, "readable-keys", bad[i]));
        ck_assert_str_eq(err, "readable-keys must be yes or no");
        ck_assert_int_eq(p.readable_keys, 1);
    }
}
END_TEST

START_TEST(digests)
{
    p11psk_policy p;
    char s[32];

    p11psk_policy_defaults(&p);
    ck_assert(set(&p, "digests", "SHA256"));
    ck_assert(p11psk_policy_digest_ok(&p, P11PSK_MD_SHA256));
    ck_assert(!p11psk_policy_digest_ok(&p, P11PSK_MD_SHA384));
    p11psk_policy_digests_str(&p, s, sizeof(s));
    ck_assert_str_eq(s, "SHA256");
    ck_assert(set(&p, "digests", "sha384"));
    ck_assert(!p11psk_policy_digest_ok(&p, P11PSK_MD_SHA256));
    p11psk_policy_digests_str(&p, s, sizeof(s));
    ck_assert_str_eq(s, "SHA384");
    /* Commas, tabs and other spellings OpenSSL knows. */
    ck_assert(set(&p, "digests", "sha2-384,\tSHA-256 "));
    ck_assert(p11psk_policy_digest_ok(&p, P11PSK_MD_SHA256));
    ck_assert(p11psk_policy_digest_ok(&p, P11PSK_MD_SHA384));
    p11psk_policy_digests_str(&p, s, sizeof(s));
    ck_assert_str_eq(s, "SHA256 SHA384");
}
END_TEST

START_TEST(digests_bad_values)
{
    p11psk_policy p;

    p11psk_policy_defaults(&p);
    ck_assert(set(&p, "digests", "SHA256"));
    ck_assert(!set(&p, "digests", "MD5"));
    ck_assert_str_eq(err, "digests: 'MD5' is not supported; use SHA256 and/or SHA384");
    ck_assert(!set(&p, "digests", "SHA256 sha1"));
    ck_assert_str_eq(err, "digests: 'SHA1' is not supported; use SHA256 and/or SHA384");
    ck_assert(!set(&p, "digests", " , "));
    ck_assert_str_eq(err, "digests needs at least one of SHA256, SHA384");
    ck_assert(!set(&p, "digests", "SHA256-AND-A-VERY-LONG-TAIL-OF-TEXT"));
    ck_assert_str_eq(err, "digests: 'SHA256-AND-A-VERY-LONG-TAIL-OF-TEXT' is not a digest; use "
                          "SHA256 and/or SHA384");
    /* A refused value leaves the previous setting. */
    ck_assert(p11psk_policy_digest_ok(&p, P11PSK_MD_SHA256));
    ck_assert(!p11psk_policy_digest_ok(&p, P11PSK_MD_SHA384));
}
END_TEST

START_TEST(rate_limit)
{
    static const char *const bad[] = {
        "fast", "-1", "+5", " 5", "5 ", "10000001", "1e3", "", "99999999999999999999999"};
    p11psk_policy p;

    p11psk_policy_defaults(&p);
    ck_assert(set(&p, "rate-limit", "10"));
    ck_assert_uint_eq(p.rate_limit, 10);
    ck_assert(set(&p, "rate-limit", "10000000"));
    ck_assert_uint_eq(p.rate_limit, 10000000);
    ck_assert(set(&p, "rate-limit", "0"));
    ck_assert_uint_eq(p.rate_limit, 0);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ck_assert_msg(!set(&p, "rate-limit", bad[i]), "'%s' accepted", bad[i]);
        ck_assert_str_eq(err, "rate-limit must be requests per second (0 = unlimited)");
        ck_assert_uint_eq(p.rate_limit, 0);
    }
}
END_TEST

/* The limiter takes the time as an argument: these tests are exact, with no sleeping. */
#define T0 1000000000ULL

START_TEST(rate_burst_then_refill)
{
    p11psk_ratelimit rl;
    int n = 0;

    p11psk_ratelimit_init(&rl);
    for (int i = 0; i < 30; i++)
        n += p11psk_ratelimit_take(&rl, 10, 1000, T0);
    ck_assert_int_eq(n, 10);                                      /* one second's worth */
    ck_assert(!p11psk_ratelimit_take(&rl, 10, 1000, T0 + 50000)); /* half a token */
    ck_assert(p11psk_ratelimit_take(&rl, 10, 1000, T0 + 100000)); /* one token */
    ck_assert(!p11psk_ratelimit_take(&rl, 10, 1000, T0 + 100000));
    /* A long pause refills to the burst, not beyond. */
    n = 0;
    for (int i = 0; i < 30; i++)
        n += p11psk_ratelimit_take(&rl, 10, 1000, T0 + 60000000ULL);
    ck_assert_int_eq(n, 10);
    p11psk_ratelimit_destroy(&rl);
}
END_TEST

START_TEST(rate_per_uid)
{
    p11psk_ratelimit rl;

    p11psk_ratelimit_init(&rl);
    for (int i = 0; i < 3; i++)
        ck_assert(p11psk_ratelimit_take(&rl, 3, 1, T0));
    ck_assert(!p11psk_ratelimit_take(&rl, 3, 1, T0));
    /* Another uid has its own bucket. */
    ck_assert(p11psk_ratelimit_take(&rl, 3, 2, T0));
    ck_assert(!p11psk_ratelimit_take(&rl, 3, 1, T0));
    /* 0 = unlimited. */
    for (int i = 0; i < 1000; i++)
        ck_assert(p11psk_ratelimit_take(&rl, 0, 1, T0));
    p11psk_ratelimit_destroy(&rl);
}
END_TEST

/* Bounded: when every slot is taken, the least recently seen uid's slot is recycled. */
START_TEST(rate_slots_recycled)
{
    p11psk_ratelimit rl;
    uid_t u;

    p11psk_ratelimit_init(&rl);
    ck_assert(p11psk_ratelimit_take(&rl, 1, 5, T0));
    ck_assert(!p11psk_ratelimit_take(&rl, 1, 5, T0)); /* uid 5 drained */
    /* 255 more uids fill the table; uid 5 keeps its (empty) bucket. */
    for (u = 0; u < P11PSK_RATE_SLOTS - 1; u++)
        ck_assert(p11psk_ratelimit_take(&rl, 1, 10000 + u, T0 + 1 + u));
    ck_assert(!p11psk_ratelimit_take(&rl, 1, 5, T0 + 1000));
    /* One more uid recycles the oldest slot: uid 5 last seen at T0 + 1000 is not it now,
     * uid 10000 (seen at T0 + 1) is; uid 10000 then comes back with a full bucket. */
    ck_assert(p11psk_ratelimit_take(&rl, 1, 99999, T0 + 2000));
    ck_assert(!p11psk_ratelimit_take(&rl, 1, 5, T0 + 2000));
    ck_assert(p11psk_ratelimit_take(&rl, 1, 10000, T0 + 2000));
    p11psk_ratelimit_destroy(&rl);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("policy");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, defaults);
    tcase_add_test(tc, not_a_policy_key);
    tcase_add_test(tc, yes_no_keys);
    tcase_add_test(tc, yes_no_bad_values);
    tcase_add_test(tc, digests);
    tcase_add_test(tc, digests_bad_values);
    tcase_add_test(tc, rate_limit);
    tcase_add_test(tc, rate_burst_then_refill);
    tcase_add_test(tc, rate_per_uid);
    tcase_add_test(tc, rate_slots_recycled);
    suite_add_tcase(s, tc);
    return p11psk_unit_run(s);
}
