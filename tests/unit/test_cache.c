/* SPDX-License-Identifier: Apache-2.0 */
/* p11pskd's value cache through its public API: hits, misses, TTL, capacity, flushes. */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache.h"
#include "p11psk/handle.h"
#include "unit.h"

static const uint8_t ID_A[] = {0x01, 0x02, 0x03, 0x04};
static const uint8_t ID_B[] = {0x01, 0x02, 0x03, 0x05};

static void fill(uint8_t *v, size_t n, uint8_t seed)
{
    for (size_t i = 0; i < n; i++)
        v[i] = (uint8_t)(seed + i);
}

/* A stand-in for the fingerprint of key value number n (the token computes real ones). */
static const uint8_t *fp(unsigned n)
{
    static uint8_t fps[256][P11PSK_CACHE_FP_LEN];

    memset(fps[n & 0xff], 0x5a, P11PSK_CACHE_FP_LEN);
    fps[n & 0xff][0] = (uint8_t)n;
    return fps[n & 0xff];
}

static p11psk_cache_stats stats(p11psk_cache *c)
{
    p11psk_cache_stats st;

    p11psk_cache_get_stats(c, &st);
    return st;
}

START_TEST(hit_after_put)
{
    p11psk_cache *c = p11psk_cache_new(8, 300);
    uint8_t v[32], out[32];

    ck_assert_ptr_nonnull(c);
    fill(v, sizeof(v), 7);
    ck_assert_int_eq(
        p11psk_cache_get(c, ID_A, sizeof(ID_A), fp(11), P11PSK_CACHE_ES, P11PSK_MD_SHA256, out, 32),
        0);
    p11psk_cache_put(c, ID_A, sizeof(ID_A), fp(11), P11PSK_CACHE_ES, P11PSK_MD_SHA256, v, 32);
    memset(out, 0, sizeof(out));
    ck_assert_int_eq(
        p11psk_cache_get(c, ID_A, sizeof(ID_A), fp(11), P11PSK_CACHE_ES, P11PSK_MD_SHA256, out, 32),
        1);
    ck_assert_mem_eq(out, v, 32);
    ck_assert_uint_eq(stats(c).hits, 1);
    ck_assert_uint_eq(stats(c).misses, 1);
    ck_assert_uint_eq(stats(c).entries, 1);
    ck_assert_uint_eq(stats(c).max_entries, 8);
    ck_assert_uint_eq(stats(c).ttl_s, 300);
    p11psk_cache_free(c);
}
END_TEST

/* Kind, digest, CKA_ID and length are all part of what an entry answers for. */
START_TEST(entries_are_distinct)
{
    p11psk_cache *c = p11psk_cache_new(8, 300);
    uint8_t v1[32], v2[32], v3[48], out[48];

    fill(v1, sizeof(v1), 1);
    fill(v2, sizeof(v2), 2);
    fill(v3, sizeof(v3), 3);
    p11psk_cache_put(c, ID_A, sizeof(ID_A), fp(5), P11PSK_CACHE_ES, P11PSK_MD_SHA256, v1, 32);
    p11psk_cache_put(c, ID_A, sizeof(ID_A), fp(5), P11PSK_CACHE_PMH, P11PSK_MD_SHA256, v2, 32);
    p11psk_cache_put(c, ID_A, sizeof(ID_A), fp(5), P11PSK_CACHE_ES, P11PSK_MD_SHA384, v3, 48);
    ck_assert_uint_eq(stats(c).entries, 3);
    ck_assert(p11psk_cache_get(c, ID_A, sizeof(ID_A), fp(5), P11PSK_CACHE_PMH, P11PSK_MD_SHA256,
                               out, 32));
    ck_assert_mem_eq(out, v2, 32);
    ck_assert(
        p11psk_cache_get(c, ID_A, sizeof(ID_A), fp(5), P11PSK_CACHE_ES, P11PSK_MD_SHA384, out, 48));
    ck_assert_mem_eq(out, v3, 48);
    ck_assert(
        p11psk_cache_get(c, ID_A, sizeof(ID_A), fp(5), P11PSK_CACHE_ES, P11PSK_MD_SHA256, out, 32));
    ck_assert_mem_eq(out, v1, 32);
    /* Another CKA_ID, and a prefix of the cached one, miss. */
    ck_assert(!p11psk_cache_get(c, ID_B, sizeof(ID_B), fp(5), P11PSK_CACHE_ES, P11PSK_MD_SHA256,
                                out, 32));
    ck_assert(!p11psk_cache_get(c, ID_A, 3, fp(5), P11PSK_CACHE_ES, P11PSK_MD_SHA256, out, 32));
    p11psk_cache_free(c);
}
END_TEST

/*
 * A key rotated or replaced in the token keeps its CKA_ID but has another value, hence
 * another fingerprint: the value cached for the old one must not be served for the new one.
 */
START_TEST(other_fingerprint_misses)
{
    p11psk_cache *c = p11psk_cache_new(8, 300);
    uint8_t v[32], out[32];

    fill(v, sizeof(v), 9);
    p11psk_cache_put(c, ID_A, sizeof(ID_A), fp(100), P11PSK_CACHE_ES, P11PSK_MD_SHA256, v, 32);
    memset(out, 0xee, sizeof(out));
    ck_assert_int_eq(p11psk_cache_get(c, ID_A, sizeof(ID_A), fp(101), P11PSK_CACHE_ES,
                                      P11PSK_MD_SHA256, out, 32),
                     0);
    ck_assert_uint_eq(stats(c).hits, 0);
    ck_assert_uint_eq(stats(c).misses, 1);
    /* The new object's value replaces the old one's. */
    fill(v, sizeof(v), 0x40);
    p11psk_cache_put(c, ID_A, sizeof(ID_A), fp(101), P11PSK_CACHE_ES, P11PSK_MD_SHA256, v, 32);
    ck_assert(p11psk_cache_get(c, ID_A, sizeof(ID_A), fp(101), P11PSK_CACHE_ES, P11PSK_MD_SHA256,
                               out, 32));
    ck_assert_mem_eq(out, v, 32);
    ck_assert(!p11psk_cache_get(c, ID_A, sizeof(ID_A), fp(100), P11PSK_CACHE_ES, P11PSK_MD_SHA256,
                                out, 32));
    ck_assert_uint_le(stats(c).entries, 1);
    p11psk_cache_free(c);
}
END_TEST

START_TEST(other_length_misses)
{
    p11psk_cache *c = p11psk_cache_new(8, 300);
    uint8_t v[48], out[48];

    fill(v, sizeof(v), 9);
    p11psk_cache_put(c, ID_A, sizeof(ID_A), fp(1), P11PSK_CACHE_ES, P11PSK_MD_SHA256, v, 32);
    ck_assert(!p11psk_cache_get(c, ID_A, sizeof(ID_A), fp(1), P11PSK_CACHE_ES, P11PSK_MD_SHA256,
                                out, 48));
    p11psk_cache_free(c);
}
END_TEST

START_TEST(overwrite_keeps_one_entry)
{
    p11psk_cache *c = p11psk_cache_new(8, 300);
    uint8_t v[32], out[32];

    fill(v, sizeof(v), 1);
    p11psk_cache_put(c, ID_A, sizeof(ID_A), fp(1), P11PSK_CACHE_PMH, P11PSK_MD_SHA256, v, 32);
    fill(v, sizeof(v), 0x80);
    p11psk_cache_put(c, ID_A, sizeof(ID_A), fp(1), P11PSK_CACHE_PMH, P11PSK_MD_SHA256, v, 32);
    ck_assert_uint_eq(stats(c).entries, 1);
    ck_assert(p11psk_cache_get(c, ID_A, sizeof(ID_A), fp(1), P11PSK_CACHE_PMH, P11PSK_MD_SHA256,
                               out, 32));
    ck_assert_mem_eq(out, v, 32);
    p11psk_cache_free(c);
}
END_TEST

START_TEST(ttl_expiry)
{
    p11psk_cache *c = p11psk_cache_new(8, 1);
    struct timespec ts = {.tv_sec = 1, .tv_nsec = 150 * 1000000L};
    uint8_t v[32], out[32];

    fill(v, sizeof(v), 3);
    p11psk_cache_put(c, ID_A, sizeof(ID_A), fp(1), P11PSK_CACHE_ES, P11PSK_MD_SHA256, v, 32);
    ck_assert(
        p11psk_cache_get(c, ID_A, sizeof(ID_A), fp(1), P11PSK_CACHE_ES, P11PSK_MD_SHA256, out, 32));
    nanosleep(&ts, NULL); /* the TTL is whole seconds */
    ck_assert(!p11psk_cache_get(c, ID_A, sizeof(ID_A), fp(1), P11PSK_CACHE_ES, P11PSK_MD_SHA256,
                                out, 32));
    ck_assert_uint_eq(stats(c).entries, 0); /* the expired entry is gone, not just hidden */
    ck_assert_uint_eq(stats(c).hits, 1);
    ck_assert_uint_eq(stats(c).misses, 1);
    p11psk_cache_free(c);
}
END_TEST

/* A full cache never grows past its size; flushing makes room. */
START_TEST(capacity_bounded)
{
    enum { MAX = 4, PUT = 6 };
    p11psk_cache *c = p11psk_cache_new(MAX, 300);
    uint8_t id[2], v[32], out[32];
    int hits = 0;

    fill(v, sizeof(v), 5);
    for (int i = 0; i < PUT; i++) {
        id[0] = 0xc0;
        id[1] = (uint8_t)i;
        p11psk_cache_put(c, id, sizeof(id), fp(1), P11PSK_CACHE_ES, P11PSK_MD_SHA256, v, 32);
        ck_assert_uint_le(stats(c).entries, MAX);
    }
    ck_assert_uint_eq(stats(c).entries, MAX);
    for (int i = 0; i < PUT; i++) {
        id[0] = 0xc0;
        id[1] = (uint8_t)i;
        hits +=
            p11psk_cache_get(c, id, sizeof(id), fp(1), P11PSK_CACHE_ES, P11PSK_MD_SHA256, out, 32);
    }
    ck_assert_int_eq(hits, MAX);

    /* Flushing everything frees every slot. */
    ck_assert_uint_eq(p11psk_cache_flush(c, NULL, 0), MAX);
    ck_assert_uint_eq(stats(c).entries, 0);
    for (int i = 0; i < MAX; i++) {
        id[1] = (uint8_t)(0x10 + i);
        p11psk_cache_put(c, id, sizeof(id), fp(1), P11PSK_CACHE_ES, P11PSK_MD_SHA256, v, 32);
    }
    ck_assert_uint_eq(stats(c).entries, MAX);
    /* A rotated key's new value takes its old entry's place: the cache does not grow. */
    id[1] = 0x10;
    p11psk_cache_put(c, id, sizeof(id), fp(2), P11PSK_CACHE_ES, P11PSK_MD_SHA256, v, 32);
    ck_assert_uint_eq(stats(c).entries, MAX);
    ck_assert(
        p11psk_cache_get(c, id, sizeof(id), fp(2), P11PSK_CACHE_ES, P11PSK_MD_SHA256, out, 32));
    /* Flushing one key makes room for a new one. */
    ck_assert_uint_eq(p11psk_cache_flush(c, id, sizeof(id)), 1);
    ck_assert_uint_eq(stats(c).entries, MAX - 1);
    id[1] = 0x7f;
    p11psk_cache_put(c, id, sizeof(id), fp(1), P11PSK_CACHE_ES, P11PSK_MD_SHA256, v, 32);
    ck_assert(
        p11psk_cache_get(c, id, sizeof(id), fp(1), P11PSK_CACHE_ES, P11PSK_MD_SHA256, out, 32));
    ck_assert_uint_eq(stats(c).entries, MAX);
    p11psk_cache_free(c);
}
END_TEST

START_TEST(flush_one_key)
{
    p11psk_cache *c = p11psk_cache_new(16, 300);
    uint8_t v[48], out[48];

    fill(v, sizeof(v), 1);
    p11psk_cache_put(c, ID_A, sizeof(ID_A), fp(1), P11PSK_CACHE_ES, P11PSK_MD_SHA256, v, 32);
    p11psk_cache_put(c, ID_A, sizeof(ID_A), fp(1), P11PSK_CACHE_ES, P11PSK_MD_SHA384, v, 48);
    p11psk_cache_put(c, ID_A, sizeof(ID_A), fp(1), P11PSK_CACHE_PMH, P11PSK_MD_SHA256, v, 32);
    p11psk_cache_put(c, ID_B, sizeof(ID_B), fp(2), P11PSK_CACHE_ES, P11PSK_MD_SHA256, v, 32);
    ck_assert_uint_eq(stats(c).entries, 4);
    /* Every kind and digest of the key goes; the key that shares a prefix stays. */
    ck_assert_uint_eq(p11psk_cache_flush(c, ID_A, sizeof(ID_A)), 3);
    ck_assert_uint_eq(stats(c).entries, 1);
    ck_assert(!p11psk_cache_get(c, ID_A, sizeof(ID_A), fp(1), P11PSK_CACHE_ES, P11PSK_MD_SHA256,
                                out, 32));
    ck_assert(!p11psk_cache_get(c, ID_A, sizeof(ID_A), fp(1), P11PSK_CACHE_PMH, P11PSK_MD_SHA256,
                                out, 32));
    ck_assert(
        p11psk_cache_get(c, ID_B, sizeof(ID_B), fp(2), P11PSK_CACHE_ES, P11PSK_MD_SHA256, out, 32));
    ck_assert_uint_eq(p11psk_cache_flush(c, ID_A, sizeof(ID_A)), 0);
    ck_assert_uint_eq(p11psk_cache_flush(c, ID_A, 3), 0); /* a prefix is another key */
    ck_assert_uint_eq(p11psk_cache_flush(c, NULL, 0), 1);
    ck_assert_uint_eq(stats(c).entries, 0);
    p11psk_cache_free(c);
}
END_TEST

START_TEST(disabled_stores_nothing)
{
    p11psk_cache *off[2] = {p11psk_cache_new(0, 300), p11psk_cache_new(8, 0)};
    uint8_t v[32], out[32];

    fill(v, sizeof(v), 1);
    for (int i = 0; i < 2; i++) {
        ck_assert_ptr_nonnull(off[i]);
        p11psk_cache_put(off[i], ID_A, sizeof(ID_A), fp(1), P11PSK_CACHE_ES, P11PSK_MD_SHA256, v,
                         32);
        ck_assert(!p11psk_cache_get(off[i], ID_A, sizeof(ID_A), fp(1), P11PSK_CACHE_ES,
                                    P11PSK_MD_SHA256, out, 32));
        ck_assert_uint_eq(stats(off[i]).entries, 0);
        ck_assert_uint_eq(stats(off[i]).max_entries, 0);
        p11psk_cache_free(off[i]);
    }
}
END_TEST

START_TEST(bad_input_ignored)
{
    p11psk_cache *c = p11psk_cache_new(8, 300);
    uint8_t id[P11PSK_ID_MAX + 1], v[64], out[64];
    p11psk_cache_stats st;

    memset(id, 0x11, sizeof(id));
    fill(v, sizeof(v), 1);
    p11psk_cache_put(c, id, sizeof(id), fp(1), P11PSK_CACHE_ES, P11PSK_MD_SHA256, v, 32);
    ck_assert(
        !p11psk_cache_get(c, id, sizeof(id), fp(1), P11PSK_CACHE_ES, P11PSK_MD_SHA256, out, 32));
    p11psk_cache_put(c, ID_A, sizeof(ID_A), fp(1), P11PSK_CACHE_ES, P11PSK_MD_SHA256, v, 64);
    ck_assert_uint_eq(stats(c).entries, 0);
    p11psk_cache_free(c);
    /* A NULL cache (allocation failed, or cache = off) is a cache that misses. */
    p11psk_cache_put(NULL, ID_A, sizeof(ID_A), fp(1), P11PSK_CACHE_ES, P11PSK_MD_SHA256, v, 32);
    ck_assert(!p11psk_cache_get(NULL, ID_A, sizeof(ID_A), fp(1), P11PSK_CACHE_ES, P11PSK_MD_SHA256,
                                out, 32));
    ck_assert_uint_eq(p11psk_cache_flush(NULL, NULL, 0), 0);
    p11psk_cache_get_stats(NULL, &st);
    ck_assert_uint_eq(st.entries + st.hits + st.misses + st.max_entries, 0);
    p11psk_cache_free(NULL);
}
END_TEST

/* The whole fingerprint is compared, not a prefix: values differing in the last byte. */
START_TEST(fingerprint_last_byte_counts)
{
    p11psk_cache *c = p11psk_cache_new(8, 300);
    uint8_t f1[P11PSK_CACHE_FP_LEN], f2[P11PSK_CACHE_FP_LEN], v[32], out[32];

    memset(f1, 0x11, sizeof(f1));
    memcpy(f2, f1, sizeof(f2));
    f2[sizeof(f2) - 1] ^= 1;
    fill(v, sizeof(v), 0x21);
    p11psk_cache_put(c, ID_A, sizeof(ID_A), f1, P11PSK_CACHE_PMH, P11PSK_MD_SHA256, v, 32);
    ck_assert(
        !p11psk_cache_get(c, ID_A, sizeof(ID_A), f2, P11PSK_CACHE_PMH, P11PSK_MD_SHA256, out, 32));
    /* The mismatch dropped the entry: the old fingerprint finds nothing either. */
    ck_assert_uint_eq(stats(c).entries, 0);
    ck_assert(
        !p11psk_cache_get(c, ID_A, sizeof(ID_A), f1, P11PSK_CACHE_PMH, P11PSK_MD_SHA256, out, 32));
    p11psk_cache_free(c);
}
END_TEST

/* A key whose fingerprint is unknown is never stored nor answered. */
START_TEST(no_fingerprint_never_cached)
{
    p11psk_cache *c = p11psk_cache_new(8, 300);
    uint8_t v[32], out[32];

    fill(v, sizeof(v), 3);
    p11psk_cache_put(c, ID_A, sizeof(ID_A), NULL, P11PSK_CACHE_ES, P11PSK_MD_SHA256, v, 32);
    ck_assert_uint_eq(stats(c).entries, 0);
    p11psk_cache_put(c, ID_A, sizeof(ID_A), fp(1), P11PSK_CACHE_ES, P11PSK_MD_SHA256, v, 32);
    ck_assert(
        !p11psk_cache_get(c, ID_A, sizeof(ID_A), NULL, P11PSK_CACHE_ES, P11PSK_MD_SHA256, out, 32));
    ck_assert(
        p11psk_cache_get(c, ID_A, sizeof(ID_A), fp(1), P11PSK_CACHE_ES, P11PSK_MD_SHA256, out, 32));
    p11psk_cache_free(c);
}
END_TEST

/* After a replacement every kind and digest cached for the old value misses, one by one. */
START_TEST(stale_fingerprint_dropped_for_every_kind)
{
    p11psk_cache *c = p11psk_cache_new(8, 300);
    uint8_t v[48], out[48];

    fill(v, sizeof(v), 4);
    p11psk_cache_put(c, ID_A, sizeof(ID_A), fp(7), P11PSK_CACHE_ES, P11PSK_MD_SHA256, v, 32);
    p11psk_cache_put(c, ID_A, sizeof(ID_A), fp(7), P11PSK_CACHE_ES, P11PSK_MD_SHA384, v, 48);
    p11psk_cache_put(c, ID_A, sizeof(ID_A), fp(7), P11PSK_CACHE_PMH, P11PSK_MD_SHA256, v, 32);
    p11psk_cache_put(c, ID_B, sizeof(ID_B), fp(9), P11PSK_CACHE_ES, P11PSK_MD_SHA256, v, 32);
    ck_assert(!p11psk_cache_get(c, ID_A, sizeof(ID_A), fp(8), P11PSK_CACHE_ES, P11PSK_MD_SHA256,
                                out, 32));
    ck_assert(!p11psk_cache_get(c, ID_A, sizeof(ID_A), fp(8), P11PSK_CACHE_ES, P11PSK_MD_SHA384,
                                out, 48));
    ck_assert(!p11psk_cache_get(c, ID_A, sizeof(ID_A), fp(8), P11PSK_CACHE_PMH, P11PSK_MD_SHA256,
                                out, 32));
    ck_assert_uint_eq(stats(c).entries, 1); /* only the other key's */
    ck_assert(
        p11psk_cache_get(c, ID_B, sizeof(ID_B), fp(9), P11PSK_CACHE_ES, P11PSK_MD_SHA256, out, 32));
    p11psk_cache_free(c);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("cache");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, hit_after_put);
    tcase_add_test(tc, entries_are_distinct);
    tcase_add_test(tc, other_fingerprint_misses);
    tcase_add_test(tc, fingerprint_last_byte_counts);
    tcase_add_test(tc, no_fingerprint_never_cached);
    tcase_add_test(tc, stale_fingerprint_dropped_for_every_kind);
    tcase_add_test(tc, other_length_misses);
    tcase_add_test(tc, overwrite_keeps_one_entry);
    tcase_add_test(tc, ttl_expiry);
    tcase_add_test(tc, capacity_bounded);
    tcase_add_test(tc, flush_one_key);
    tcase_add_test(tc, disabled_stores_nothing);
    tcase_add_test(tc, bad_input_ignored);
    suite_add_tcase(s, tc);
    return p11psk_unit_run(s);
}
