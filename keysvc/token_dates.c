/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A key's CKA_END_DATE, and its mirror for tokens that cannot return it. SoftHSM 2.6 stores
 * the dates of a private object in clear but decrypts them on reading, so C_GetAttributeValue
 * fails with CKR_GENERAL_ERROR (softhsm/SoftHSMv2#655). There the CLI also writes the date
 * to a private CKO_DATA object labelled "p11psk-not-after/<CKA_ID hex>", read only when the
 * key's own attribute cannot be.
 */
#include <stdio.h>
#include <string.h>

#include "token_int.h"

#define MIRROR_PREFIX "p11psk-not-after/"
#define MIRROR_LABEL_MAX (sizeof(MIRROR_PREFIX) + 2 * P11PSK_ID_MAX)

static void mirror_label(const p11psk_key *k, char *out)
{
    size_t n = strlen(MIRROR_PREFIX);

    memcpy(out, MIRROR_PREFIX, n);
    p11psk_hex_encode(k->id, k->idlen <= P11PSK_ID_MAX ? k->idlen : 0, out + n);
}

/* The mirror objects of k (up to cap) into objs; returns how many, 0 on any failure. */
static size_t mirror_find(p11psk_token *tok, CK_SESSION_HANDLE sess, const p11psk_key *k,
                          CK_OBJECT_HANDLE *objs, CK_ULONG cap, p11psk_call *c)
{
    CK_OBJECT_CLASS cls = CKO_DATA;
    char label[MIRROR_LABEL_MAX];
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_LABEL, label, 0}};
    CK_ULONG got = 0;

    mirror_label(k, label);
    t[1].ulValueLen = strlen(label);
    if (P11CALL(c, NULL, tok->fl, C_FindObjectsInit, sess, t, 2) != CKR_OK)
        return 0;
    if (P11CALL(c, NULL, tok->fl, C_FindObjects, sess, objs, cap, &got) != CKR_OK)
        got = 0;
    P11CALL_QUIET(tok->fl, C_FindObjectsFinal, sess);
    return got;
}

void token_key_read_end_date(p11psk_token *tok, CK_SESSION_HANDLE sess, p11psk_key *k)
{
    p11psk_call c = P11PSK_CALL_INIT; /* not the session's verdict: see token_int.h */
    CK_ATTRIBUTE t = {CKA_END_DATE, NULL, 0};
    CK_OBJECT_HANDLE obj;
    CK_DATE d;

    token_key_set_end_date(k, NULL, 0);
    t.pValue = &d;
    t.ulValueLen = sizeof(d);
    P11CALL(&c, NULL, tok->fl, C_GetAttributeValue, sess, k->obj, &t, 1);
    if (c.rv == CKR_OK || c.rv == CKR_ATTRIBUTE_TYPE_INVALID) {
        token_key_set_end_date(k, &d, c.rv == CKR_OK ? t.ulValueLen : 0);
        return;
    }
    /* The key has a date we cannot read: its mirror, else refused as undated is unsafe. */
    t.type = CKA_VALUE;
    t.pValue = &d;
    t.ulValueLen = sizeof(d);
    if (k->idlen >= 1 && k->idlen <= P11PSK_ID_MAX && mirror_find(tok, sess, k, &obj, 1, &c) == 1 &&
        P11CALL(&c, NULL, tok->fl, C_GetAttributeValue, sess, obj, &t, 1) == CKR_OK &&
        t.ulValueLen == sizeof(d)) {
        token_key_set_end_date(k, &d, sizeof(d));
        return;
    }
    snprintf(k->not_after, sizeof(k->not_after), "invalid");
    k->expires_at = 1; /* always past */
}

struct mirror_arg {
    const p11psk_key *key;
    const CK_DATE *d;
};

static int op_mirror(p11psk_token *tok, CK_SESSION_HANDLE sess, void *varg, p11psk_call *c,
                     p11psk_err *err)
{
    struct mirror_arg *a = varg;
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_BBOOL yes = CK_TRUE;
    CK_OBJECT_HANDLE objs[8], obj;
    char label[MIRROR_LABEL_MAX], app[] = "p11psk";
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},      {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_PRIVATE, &yes, sizeof(yes)},    {CKA_LABEL, label, 0},
        {CKA_APPLICATION, app, strlen(app)}, {CKA_VALUE, (void *)a->d, sizeof(CK_DATE)},
    };
    size_t n, i;

    mirror_label(a->key, label);
    t[3].ulValueLen = strlen(label);
    n = mirror_find(tok, sess, a->key, objs, 8, c);
    if (c->rv != CKR_OK)
        return p11psk_err_ckr(err, c->rv, c->fn);
    for (i = 0; i < n; i++)
        if (P11CALL(c, err, tok->fl, C_DestroyObject, sess, objs[i]) != CKR_OK)
            return P11PSK_ST_TOKEN;
    if (a->d != NULL &&
        P11CALL(c, err, tok->fl, C_CreateObject, sess, t, sizeof(t) / sizeof(t[0]), &obj) != CKR_OK)
        return P11PSK_ST_TOKEN;
    return P11PSK_ST_OK;
}

int p11psk_token_mirror_end_date(p11psk_token *tok, const p11psk_key *key, const CK_DATE *d,
                                 p11psk_err *err)
{
    struct mirror_arg a = {key, d};

    if (key->idlen == 0 || key->idlen > P11PSK_ID_MAX)
        return p11psk_err_set(err, P11PSK_ST_BAD_HANDLE, "key '%s' has no handle-sized CKA_ID",
                              key->label);
    return token_with_session(tok, op_mirror, &a, err);
}
