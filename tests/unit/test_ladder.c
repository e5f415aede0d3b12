/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Ladder tests against a real SoftHSM2 token in a temporary directory: every token-side
 * derivation must equal OpenSSL's computation over the raw key, and the ladder must take the
 * rung the math allows (token digest, key value, or NEED_READABLE).
 */
#include <check.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ladder.h"
#include "p11psk/buf.h"
#include "p11psk/wire.h"
#include "token.h"
#include "unit.h"

#define TOKEN_LABEL "ladder"
#define USER_PIN "1234"

static char tmpdir[] = "/tmp/p11psk-ladder-XXXXXX";
static p11psk_token *tok;
static p11psk_ladder *lad;
static unsigned next_id = 1;
static int have_tmpdir;

static const int mds[] = {P11PSK_MD_SHA256, P11PSK_MD_SHA384};

/* Creates a session key with known bytes and returns it as the daemon would find it. */
static void make_key(size_t len, int readable, uint8_t *value, p11psk_key *key)
{
    uint8_t id[2] = {(uint8_t)(next_id >> 8), (uint8_t)next_id};
    char label[32];
    p11psk_new_key nk;
    p11psk_key created;
    p11psk_err err;

    snprintf(label, sizeof(label), "key-%u", next_id++);
    ck_assert_int_eq(RAND_bytes(value, (int)len), 1);
    memset(&nk, 0, sizeof(nk));
    nk.label = label;
    nk.id = id;
    nk.idlen = sizeof(id);
    nk.value = value;
    nk.value_len = len;
    nk.readable = readable;
    nk.session_only = 1;
    ck_assert_msg(p11psk_token_create_key(tok, &nk, &created, &err) == P11PSK_ST_OK, "%s", err.msg);
    ck_assert_msg(p11psk_token_find_id(tok, id, sizeof(id), key, &err) == P11PSK_ST_OK, "%s",
                  err.msg);
    ck_assert_uint_eq(key->len, len);
    ck_assert_int_eq(key->readable, readable);
    ck_assert_str_eq(key->label, label);
    ck_assert_uint_eq(key->obj, created.obj);
}

/* ---- OpenSSL reference computations over the raw key ---- */

static void hkdf(int mode, int md, const uint8_t *salt, size_t saltlen, const uint8_t *key,
                 size_t keylen, const uint8_t *info, size_t infolen, uint8_t *out, size_t outlen)
{
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    EVP_KDF_CTX *kc = EVP_KDF_CTX_new(kdf);
    OSSL_PARAM params[6], *p = params;

    *p++ = OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode);
    *p++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)p11psk_md_name(md), 0);
    *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)key, keylen);
    if (salt != NULL)
        *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, saltlen);
    if (info != NULL)
        *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, infolen);
    *p = OSSL_PARAM_construct_end();
    ck_assert_int_eq(EVP_KDF_derive(kc, out, outlen, params), 1);
    EVP_KDF_CTX_free(kc);
    EVP_KDF_free(kdf);
}

static void ref_es(int md, const uint8_t *psk, size_t len, uint8_t *out)
{
    hkdf(EVP_KDF_HKDF_MODE_EXTRACT_ONLY, md, NULL, 0, psk, len, NULL, 0, out, p11psk_md_size(md));
}

static void ref_expand_label(int md, const uint8_t *secret, const char *label, const uint8_t *data,
                             size_t datalen, uint8_t *out, size_t outlen)
{
    uint8_t info[600];
    p11psk_wbuf w;

    p11psk_wbuf_init(&w, info, sizeof(info));
    p11psk_wbuf_u16(&w, (uint16_t)outlen);
    p11psk_wbuf_u8(&w, (uint8_t)(6 + strlen(label)));
    p11psk_wbuf_bytes(&w, "tls13 ", 6);
    p11psk_wbuf_bytes(&w, label, strlen(label));
    p11psk_wbuf_u8(&w, (uint8_t)datalen);
    p11psk_wbuf_bytes(&w, data, datalen);
    ck_assert(!w.err);
    hkdf(EVP_KDF_HKDF_MODE_EXPAND_ONLY, md, NULL, 0, secret, p11psk_md_size(md), info, w.len, out,
         outlen);
}

static void ref_tls1_prf(int md, const uint8_t *secret, size_t secretlen, const uint8_t *seed,
                         size_t seedlen, uint8_t *out, size_t outlen)
{
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "TLS1-PRF", NULL);
    EVP_KDF_CTX *kc = EVP_KDF_CTX_new(kdf);
    OSSL_PARAM params[4];

    params[0] =
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)p11psk_md_name(md), 0);
    params[1] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SECRET, (void *)secret, secretlen);
    params[2] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED, (void *)seed, seedlen);
    params[3] = OSSL_PARAM_construct_end();
    ck_assert_int_eq(EVP_KDF_derive(kc, out, outlen, params), 1);
    EVP_KDF_CTX_free(kc);
    EVP_KDF_free(kdf);
}

/* The real premaster: u16 n ‖ other(n) ‖ u16 L ‖ psk(L); plain PSK has n = L zero bytes. */
static size_t ref_premaster(const uint8_t *other, size_t otherlen, const uint8_t *psk, size_t len,
                            uint8_t *out)
{
    size_t n = other != NULL ? otherlen : len;

    p11psk_store_be16(out, (uint16_t)n);
    if (other != NULL)
        memcpy(out + 2, other, n);
    else
        memset(out + 2, 0, n);
    p11psk_store_be16(out + 2 + n, (uint16_t)len);
    memcpy(out + 4 + n, psk, len);
    return 4 + n + len;
}

/* ---- tests ---- */

START_TEST(test_tls13_early_secret)
{
    static const size_t lens[] = {16, 32, 48};
    uint8_t psk[64], es[48], ref[48];
    p11psk_key key;
    p11psk_err err;
    size_t i, j;
    int step;

    for (i = 0; i < 2; i++)
        for (j = 0; j < 3; j++) {
            make_key(lens[j], 0, psk, &key);
            ck_assert_msg(p11psk_ladder_tls13_early(lad, tok, &key, mds[i], es, &step, &err) ==
                              P11PSK_ST_OK,
                          "%s", err.msg);
            ck_assert_int_eq(step, P11PSK_STEP_TOKEN);
            ref_es(mds[i], psk, lens[j], ref);
            ck_assert_mem_eq(es, ref, p11psk_md_size(mds[i]));
        }
}
END_TEST

START_TEST(test_tls13_expand_extract)
{
    uint8_t psk[32], es[48], hash[48], out[64], ref[64], derived[48], ikm[32], zeros[48];
    const char *prefix = "tls13 ";
    p11psk_key key;
    p11psk_err err;
    size_t i, hs;
    int step;

    memset(zeros, 0, sizeof(zeros));
    RAND_bytes(hash, sizeof(hash));
    RAND_bytes(ikm, sizeof(ikm));
    for (i = 0; i < 2; i++) {
        hs = p11psk_md_size(mds[i]);
        make_key(sizeof(psk), 0, psk, &key);
        ref_es(mds[i], psk, sizeof(psk), es);

        ck_assert_msg(p11psk_ladder_tls13_expand(lad, tok, &key, mds[i], (const uint8_t *)prefix, 6,
                                                 (const uint8_t *)"ext binder", 10, hash, hs, out,
                                                 hs, &step, &err) == P11PSK_ST_OK,
                      "%s", err.msg);
        ck_assert_int_eq(step, P11PSK_STEP_TOKEN);
        ref_expand_label(mds[i], es, "ext binder", hash, hs, ref, hs);
        ck_assert_mem_eq(out, ref, hs);

        /* Derive-Secret(ES, "derived") must never leave the daemon. */
        ck_assert_int_eq(p11psk_ladder_tls13_expand(lad, tok, &key, mds[i], (const uint8_t *)prefix,
                                                    6, (const uint8_t *)"derived", 7, hash, hs, out,
                                                    hs, &step, &err),
                         P11PSK_ST_UNSUPPORTED);

        /* Handshake secret: HKDF-Extract(Derive-Secret(ES, "derived", ""), IKM or zeros). */
        EVP_Digest("", 0, hash, NULL, mds[i] == P11PSK_MD_SHA256 ? EVP_sha256() : EVP_sha384(),
                   NULL);
        ref_expand_label(mds[i], es, "derived", hash, hs, derived, hs);
        ck_assert_msg(p11psk_ladder_tls13_extract(lad, tok, &key, mds[i], (const uint8_t *)prefix,
                                                  6, (const uint8_t *)"derived", 7, ikm,
                                                  sizeof(ikm), out, &step, &err) == P11PSK_ST_OK,
                      "%s", err.msg);
        hkdf(EVP_KDF_HKDF_MODE_EXTRACT_ONLY, mds[i], derived, hs, ikm, sizeof(ikm), NULL, 0, ref,
             hs);
        ck_assert_mem_eq(out, ref, hs);
        ck_assert_msg(p11psk_ladder_tls13_extract(lad, tok, &key, mds[i], (const uint8_t *)prefix,
                                                  6, (const uint8_t *)"derived", 7, NULL, 0, out,
                                                  &step, &err) == P11PSK_ST_OK,
                      "%s", err.msg);
        hkdf(EVP_KDF_HKDF_MODE_EXTRACT_ONLY, mds[i], derived, hs, zeros, hs, NULL, 0, ref, hs);
        ck_assert_mem_eq(out, ref, hs);
    }
}
END_TEST

START_TEST(test_tls12_prf)
{
    static const size_t lens[] = {16, 31, 32, 48, 64};
    uint8_t psk[64], ecdhe[32], zeros[32], seed[77], out[100], ref[100], pm[256];
    char want[64];
    p11psk_key key;
    p11psk_err err;
    size_t i, j, pmlen, nprime;
    int kind, readable, step, st;

    memset(zeros, 0, sizeof(zeros));
    RAND_bytes(ecdhe, sizeof(ecdhe));
    RAND_bytes(seed, sizeof(seed));
    for (i = 0; i < 2; i++)
        for (j = 0; j < 5; j++)
            for (kind = 0; kind < 2; kind++)
                for (readable = 0; readable < 2; readable++) {
                    /* kind 0: plain PSK, the client sends zeros sized for the 32-byte handle */
                    const uint8_t *other = kind ? ecdhe : zeros;
                    int is_long;

                    make_key(lens[j], readable, psk, &key);
                    pmlen = ref_premaster(kind ? ecdhe : NULL, sizeof(ecdhe), psk, lens[j], pm);
                    ref_tls1_prf(mds[i], pm, pmlen, seed, sizeof(seed), ref, sizeof(ref));
                    nprime = kind ? sizeof(ecdhe) : lens[j];
                    is_long = 4 + nprime + lens[j] > p11psk_md_block(mds[i]);
                    st = p11psk_ladder_tls12_prf(lad, tok, &key, mds[i], other, 32, seed,
                                                 sizeof(seed), out, sizeof(out), &step, &err);
                    if (is_long || readable) {
                        ck_assert_msg(st == P11PSK_ST_OK, "md %d len %zu kind %d: %s", mds[i],
                                      lens[j], kind, err.msg);
                        ck_assert_int_eq(step, is_long ? P11PSK_STEP_TOKEN : P11PSK_STEP_VALUE);
                        ck_assert_mem_eq(out, ref, sizeof(out));
                    } else {
                        ck_assert_int_eq(st, P11PSK_ST_NEED_READABLE);
                        ck_assert_int_eq(err.status, P11PSK_ST_NEED_READABLE);
                        ck_assert_int_eq(step, P11PSK_STEP_NONE);
                        snprintf(want, sizeof(want), "at least %zu bytes",
                                 p11psk_ladder_tls12_min_len(mds[i], other, 32));
                        ck_assert_msg(strstr(err.msg, want) != NULL, "%s", err.msg);
                        ck_assert_ptr_nonnull(strstr(err.msg, "--readable"));
                    }
                }
}
END_TEST

START_TEST(test_premaster_rebuild)
{
    uint8_t zeros[32], other[32], head[128], want[128];
    size_t n;

    memset(zeros, 0, sizeof(zeros));
    RAND_bytes(other, sizeof(other));

    /* Handle-length zero OTHER, real key 48 bytes: both lengths and the block follow L. */
    n = p11psk_ladder_premaster_head(zeros, sizeof(zeros), 48, head, sizeof(head));
    ck_assert_uint_eq(n, 4 + 48);
    memset(want, 0, sizeof(want));
    p11psk_store_be16(want, 48);
    p11psk_store_be16(want + 2 + 48, 48);
    ck_assert_mem_eq(head, want, n);

    /* ... and a 16-byte key shrinks it. */
    n = p11psk_ladder_premaster_head(zeros, sizeof(zeros), 16, head, sizeof(head));
    ck_assert_uint_eq(n, 4 + 16);
    memset(want, 0, sizeof(want));
    p11psk_store_be16(want, 16);
    p11psk_store_be16(want + 2 + 16, 16);
    ck_assert_mem_eq(head, want, n);

    /* A real (EC)DHE secret is kept as sent; only the PSK length changes. */
    n = p11psk_ladder_premaster_head(other, sizeof(other), 16, head, sizeof(head));
    ck_assert_uint_eq(n, 4 + 32);
    p11psk_store_be16(want, 32);
    memcpy(want + 2, other, 32);
    p11psk_store_be16(want + 34, 16);
    ck_assert_mem_eq(head, want, n);

    ck_assert_uint_eq(p11psk_ladder_premaster_head(other, sizeof(other), 16, head, 20), 0);

    /* Minimum lengths quoted in NEED_READABLE messages. */
    ck_assert_uint_eq(p11psk_ladder_tls12_min_len(P11PSK_MD_SHA256, zeros, 32), 31);
    ck_assert_uint_eq(p11psk_ladder_tls12_min_len(P11PSK_MD_SHA384, zeros, 32), 63);
    ck_assert_uint_eq(p11psk_ladder_tls12_min_len(P11PSK_MD_SHA256, other, 32), 29);
    ck_assert_uint_eq(p11psk_ladder_tls12_min_len(P11PSK_MD_SHA384, other, 32), 93);
}
END_TEST

START_TEST(test_stale_cache)
{
    uint8_t psk[32], es[32];
    p11psk_key key, again;
    p11psk_err err;
    CK_RV rv;

    make_key(sizeof(psk), 0, psk, &key);
    /* Removed behind the daemon's back (softhsm2-util, p11psk rm): the cache still has it, */
    rv = p11psk_token_functions(tok)->C_DestroyObject(p11psk_token_session(tok), key.obj);
    ck_assert_uint_eq(rv, CKR_OK);
    ck_assert_int_eq(p11psk_token_find_id(tok, key.id, key.idlen, &again, &err), P11PSK_ST_OK);
    /* the token reports the stale handle, */
    ck_assert_int_eq(p11psk_ladder_tls13_early(lad, tok, &again, P11PSK_MD_SHA256, es, NULL, &err),
                     P11PSK_ST_TOKEN);
    ck_assert_msg(p11psk_ckr_stale_handle(err.ckr), "%s", err.msg);
    /* and after forgetting the entry the lookup goes back to the token. */
    p11psk_token_forget(tok, key.id, key.idlen);
    ck_assert_int_eq(p11psk_token_find_id(tok, key.id, key.idlen, &again, &err),
                     P11PSK_ST_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(err.msg, "no key with CKA_ID"));
    ck_assert_str_eq(p11psk_ckr_name(CKR_KEY_INDIGESTIBLE), "CKR_KEY_INDIGESTIBLE");
}
END_TEST

/* ---- temporary SoftHSM2 token ---- */

static int setup_token(void)
{
    char cmd[512];
    p11psk_token_params prm;
    p11psk_err err;

    if (!p11psk_unit_softhsm_dir(tmpdir, &have_tmpdir))
        return 0;
    snprintf(cmd, sizeof(cmd),
             "softhsm2-util --init-token --free --label " TOKEN_LABEL " --pin " USER_PIN
             " --so-pin 12345678 >/dev/null");
    if (system(cmd) != 0)
        return 0;
    memset(&prm, 0, sizeof(prm));
    prm.module = getenv("P11PSK_TEST_MODULE") ? getenv("P11PSK_TEST_MODULE")
                                              : "/usr/lib/softhsm/libsofthsm2.so";
    prm.token_uri = "pkcs11:token=" TOKEN_LABEL;
    prm.pin = USER_PIN;
    prm.rw = 1;
    if (p11psk_token_open(&prm, &tok, &err) != P11PSK_ST_OK) {
        fprintf(stderr, "token open: %s\n", err.msg);
        return 0;
    }
    return (lad = p11psk_ladder_new()) != NULL;
}

static void teardown_token(void)
{
    p11psk_ladder_free(lad);
    p11psk_token_close(tok);
    p11psk_unit_softhsm_remove(tmpdir, have_tmpdir);
}

int main(void)
{
    Suite *s = suite_create("ladder");
    TCase *tc = tcase_create("softhsm2");
    SRunner *sr;
    int failed, ok;

    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_premaster_rebuild);
    tcase_add_test(tc, test_tls13_early_secret);
    tcase_add_test(tc, test_tls13_expand_extract);
    tcase_add_test(tc, test_tls12_prf);
    tcase_add_test(tc, test_stale_cache);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    /* One PKCS#11 session shared by all tests: no fork between them. */
    srunner_set_fork_status(sr, CK_NOFORK);
    ok = setup_token();
    if (!ok) {
        fprintf(stderr, "cannot set up a SoftHSM2 token in %s\n", tmpdir);
        teardown_token();
        srunner_free(sr);
        return EXIT_FAILURE;
    }
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    teardown_token();
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
