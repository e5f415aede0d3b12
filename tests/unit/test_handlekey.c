/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The handle key in a real SoftHSM2 token: created once, mk the same for every process that
 * loads it, tags verified in-process, forged, foreign and re-issued handles refused.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handlekey.h"
#include "p11psk/handle.h"
#include "token.h"
#include "unit.h"

#define TOKEN_LABEL "p11psk-hk-unit"
#define TOKEN2_LABEL "p11psk-hk-unit2"
#define USER_PIN "1234"

static char tmpdir[] = "/tmp/p11psk-hk-XXXXXX";
static int have_tmpdir;
static p11psk_token *tok, *tok2;

static const uint8_t key_id[] = {0x01};

static p11psk_handlekey *loaded(p11psk_token *t, int create)
{
    p11psk_handlekey *hk = p11psk_handlekey_new();
    p11psk_err err;

    ck_assert_ptr_nonnull(hk);
    if (p11psk_handlekey_load(hk, t, create, &err) != P11PSK_ST_OK)
        ck_abort_msg("load: %s", err.msg);
    return hk;
}

/* Number of handle key objects in the token. */
static size_t handle_keys(p11psk_token *t)
{
    p11psk_key *keys = NULL;
    p11psk_err err;
    size_t n = 0, i, hk = 0;

    ck_assert_int_eq(p11psk_token_list(t, P11PSK_HK_LABEL, &keys, &n, &err), P11PSK_ST_OK);
    for (i = 0; i < n; i++) {
        hk += p11psk_handlekey_is_key(&keys[i]);
        ck_assert(!keys[i].readable); /* sensitive, not extractable */
    }
    free(keys);
    return hk;
}

START_TEST(create_once_and_agree)
{
    p11psk_handlekey *a = loaded(tok, 1), *b = loaded(tok, 0);
    uint8_t ha[P11PSK_HANDLE_LEN], hb[P11PSK_HANDLE_LEN];
    p11psk_handle d;

    ck_assert_int_eq(handle_keys(tok), 1);
    ck_assert_int_eq(p11psk_handlekey_make(a, key_id, sizeof(key_id), ha), 0);
    ck_assert_int_eq(p11psk_handlekey_make(b, key_id, sizeof(key_id), hb), 0);
    ck_assert_mem_eq(ha, hb, sizeof(ha)); /* a second load finds the same key */
    ck_assert_int_eq(p11psk_handle_decode(ha, sizeof(ha), &d), P11PSK_HANDLE_OK);
    ck_assert_int_eq(p11psk_handlekey_verify(b, &d), 0);
    /* Loading with create again creates nothing new. */
    p11psk_handlekey_free(b);
    b = loaded(tok, 1);
    ck_assert_int_eq(handle_keys(tok), 1);
    p11psk_handlekey_free(a);
    p11psk_handlekey_free(b);
}
END_TEST

START_TEST(forged_tag_refused)
{
    p11psk_handlekey *hk = loaded(tok, 1);
    uint8_t hb[P11PSK_HANDLE_LEN];
    p11psk_handle d;

    ck_assert_int_eq(p11psk_handlekey_make(hk, key_id, sizeof(key_id), hb), 0);
    ck_assert_int_eq(p11psk_handle_decode(hb, sizeof(hb), &d), P11PSK_HANDLE_OK);
    for (int i = 0; i < P11PSK_TAG_LEN; i++) {
        d.tag[i] ^= 0x01;
        ck_assert_int_eq(p11psk_handlekey_verify(hk, &d), -1);
        d.tag[i] ^= 0x01;
    }
    /* The same tag on another CKA_ID: the tag binds the id. */
    d.id[0] = 0x02;
    ck_assert_int_eq(p11psk_handlekey_verify(hk, &d), -1);
    d.id[0] = 0x01;
    ck_assert_int_eq(p11psk_handlekey_verify(hk, &d), 0);
    /* The v1 way of making a handle (no tag at all) fails too. */
    memset(d.tag, 0, sizeof(d.tag));
    ck_assert_int_eq(p11psk_handlekey_verify(hk, &d), -1);
    p11psk_handlekey_free(hk);
}
END_TEST

START_TEST(handle_key_is_no_psk)
{
    p11psk_handlekey *hk = loaded(tok, 1);
    uint8_t hb[P11PSK_HANDLE_LEN];

    ck_assert_int_eq(p11psk_handlekey_make(hk, (const uint8_t *)P11PSK_HK_ID, P11PSK_HK_IDLEN, hb),
                     -1);
    ck_assert(p11psk_handlekey_is_id((const uint8_t *)P11PSK_HK_ID, P11PSK_HK_IDLEN));
    p11psk_handlekey_free(hk);
}
END_TEST

START_TEST(other_token_refuses)
{
    p11psk_handlekey *a = loaded(tok, 1), *b = loaded(tok2, 1);
    uint8_t ha[P11PSK_HANDLE_LEN], hb[P11PSK_HANDLE_LEN];
    p11psk_handle d;

    ck_assert_int_eq(p11psk_handlekey_make(a, key_id, sizeof(key_id), ha), 0);
    ck_assert_int_eq(p11psk_handlekey_make(b, key_id, sizeof(key_id), hb), 0);
    ck_assert(memcmp(ha, hb, sizeof(ha)) != 0); /* same CKA_ID, different handles */
    ck_assert_int_eq(p11psk_handle_decode(ha, sizeof(ha), &d), P11PSK_HANDLE_OK);
    ck_assert_int_eq(p11psk_handlekey_verify(b, &d), -1);
    p11psk_handlekey_free(a);
    p11psk_handlekey_free(b);
}
END_TEST

START_TEST(reissue_invalidates)
{
    p11psk_handlekey *hk = loaded(tok2, 1), *fresh;
    uint8_t before[P11PSK_HANDLE_LEN], after[P11PSK_HANDLE_LEN];
    p11psk_handle d;
    p11psk_err err;

    ck_assert_int_eq(p11psk_handlekey_make(hk, key_id, sizeof(key_id), before), 0);
    ck_assert_int_eq(p11psk_handlekey_reissue(hk, tok2, &err), P11PSK_ST_OK);
    ck_assert_int_eq(handle_keys(tok2), 1);
    ck_assert_int_eq(p11psk_handlekey_make(hk, key_id, sizeof(key_id), after), 0);
    ck_assert(memcmp(before, after, sizeof(before)) != 0);
    ck_assert_int_eq(p11psk_handle_decode(before, sizeof(before), &d), P11PSK_HANDLE_OK);
    ck_assert_int_eq(p11psk_handlekey_verify(hk, &d), -1);
    fresh = loaded(tok2, 0); /* another process loading now gets the new key */
    ck_assert_int_eq(p11psk_handlekey_verify(fresh, &d), -1);
    ck_assert_int_eq(p11psk_handle_decode(after, sizeof(after), &d), P11PSK_HANDLE_OK);
    ck_assert_int_eq(p11psk_handlekey_verify(fresh, &d), 0);
    p11psk_handlekey_free(fresh);
    p11psk_handlekey_free(hk);
}
END_TEST

START_TEST(empty_holder_refuses)
{
    p11psk_handlekey *hk = p11psk_handlekey_new();
    uint8_t hb[P11PSK_HANDLE_LEN];
    p11psk_handle d;

    memset(&d, 0, sizeof(d));
    d.type = P11PSK_HT_PSK;
    d.idlen = 1;
    d.id[0] = 1;
    ck_assert(!p11psk_handlekey_ready(hk));
    ck_assert_int_eq(p11psk_handlekey_verify(hk, &d), -1);
    ck_assert_int_eq(p11psk_handlekey_make(hk, key_id, sizeof(key_id), hb), -1);
    p11psk_handlekey_free(hk);
}
END_TEST

/* ---- temporary SoftHSM2 tokens ---- */

static p11psk_token *open_token(const char *uri)
{
    p11psk_token_params prm;
    p11psk_token *t = NULL;
    p11psk_err err;

    memset(&prm, 0, sizeof(prm));
    prm.module = getenv("P11PSK_TEST_MODULE") ? getenv("P11PSK_TEST_MODULE")
                                              : "/usr/lib/softhsm/libsofthsm2.so";
    prm.token_uri = uri;
    prm.pin = USER_PIN;
    prm.rw = 0; /* as p11pskd: creating the handle key needs its own RW session */
    if (p11psk_token_open(&prm, &t, &err) != P11PSK_ST_OK)
        fprintf(stderr, "token open: %s\n", err.msg);
    return t;
}

static int setup_tokens(void)
{
    char cmd[512];

    if (!p11psk_unit_softhsm_dir(tmpdir, &have_tmpdir))
        return 0;
    snprintf(
        cmd, sizeof(cmd),
        "softhsm2-util --init-token --free --label " TOKEN_LABEL " --pin " USER_PIN
        " --so-pin 12345678 >/dev/null && softhsm2-util --init-token --free --label " TOKEN2_LABEL
        " --pin " USER_PIN " --so-pin 12345678 >/dev/null");
    if (system(cmd) != 0)
        return 0;
    tok = open_token("pkcs11:token=" TOKEN_LABEL);
    tok2 = open_token("pkcs11:token=" TOKEN2_LABEL);
    return tok != NULL && tok2 != NULL;
}

static void teardown_tokens(void)
{
    p11psk_token_close(tok);
    p11psk_token_close(tok2);
    p11psk_unit_softhsm_remove(tmpdir, have_tmpdir);
}

int main(void)
{
    Suite *s = suite_create("handlekey");
    TCase *tc = tcase_create("softhsm2");
    SRunner *sr;
    int failed;

    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, empty_holder_refuses);
    tcase_add_test(tc, create_once_and_agree);
    tcase_add_test(tc, forged_tag_refused);
    tcase_add_test(tc, handle_key_is_no_psk);
    tcase_add_test(tc, other_token_refuses);
    tcase_add_test(tc, reissue_invalidates);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK); /* PKCS#11 sessions do not survive a fork */
    if (!setup_tokens()) {
        fprintf(stderr, "cannot set up SoftHSM2 tokens in %s\n", tmpdir);
        teardown_tokens();
        srunner_free(sr);
        return EXIT_FAILURE;
    }
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    teardown_tokens();
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
