#include "token.h"

#include <openssl/crypto.h>
#include <p11-kit/p11-kit.h>
#include <p11-kit/uri.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "p11psk/wire.h"

#define CACHE_BUCKETS 256 /* power of two */

struct cache_ent {
    struct cache_ent *next;
    p11psk_key key;
};

struct p11psk_token {
    CK_FUNCTION_LIST *fl;
    CK_FUNCTION_LIST **registry; /* set when the module came from the p11-kit registry */
    int initialized;
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE sess;
    int have_sess;
    int logged_in;
    char label[33];
    char module[256];
    struct cache_ent *cache[CACHE_BUCKETS];
};

static void id_hex(const uint8_t *id, size_t idlen, char *out)
{
    p11psk_hex_encode(id, idlen < P11PSK_KEY_ID_MAX ? idlen : P11PSK_KEY_ID_MAX, out);
}

/* ---- module, slot, session ---- */

static int module_is_path(const char *m)
{
    size_t n = strlen(m);

    return strchr(m, '/') != NULL || (n > 3 && strcmp(m + n - 3, ".so") == 0);
}

static int module_load(p11psk_token *tok, const char *m, p11psk_err *err)
{
    CK_RV rv;
    size_t i, off = 0;
    char names[160] = "";

    snprintf(tok->module, sizeof(tok->module), "%s", m);
    if (module_is_path(m)) {
        tok->fl = p11_kit_module_load(m, 0);
        if (tok->fl == NULL)
            return p11psk_err_set(err, P11PSK_ST_UNAVAILABLE,
                                  "cannot load PKCS#11 module %s: %s; fix `module =` in the "
                                  "config",
                                  m, p11_kit_message() ? p11_kit_message() : "unknown error");
    } else {
        tok->registry = p11_kit_modules_load(NULL, 0);
        if (tok->registry == NULL)
            return p11psk_err_set(err, P11PSK_ST_UNAVAILABLE,
                                  "cannot load the p11-kit module registry: %s",
                                  p11_kit_message() ? p11_kit_message() : "unknown error");
        tok->fl = p11_kit_module_for_name(tok->registry, m);
        if (tok->fl == NULL) {
            for (i = 0; tok->registry[i] != NULL && off < sizeof(names) - 1; i++) {
                char *nm = p11_kit_module_get_name(tok->registry[i]);
                int w = snprintf(names + off, sizeof(names) - off, "%s%s", i ? ", " : "",
                                 nm ? nm : "?");

                free(nm);
                off += w > 0 ? (size_t)w : 0;
            }
            return p11psk_err_set(err, P11PSK_ST_UNAVAILABLE,
                                  "no p11-kit module named '%s' (registered: %s); set `module "
                                  "=` to a module path or one of those names",
                                  m, names[0] ? names : "none");
        }
    }
    rv = p11_kit_module_initialize(tok->fl);
    if (rv != CKR_OK) {
        p11psk_err_ckr(err, rv, "C_Initialize");
        snprintf(err->msg + strlen(err->msg), sizeof(err->msg) - strlen(err->msg), " (module %s)",
                 m);
        return P11PSK_ST_TOKEN;
    }
    tok->initialized = 1;
    return P11PSK_ST_OK;
}

static void token_label(const CK_TOKEN_INFO *ti, char out[33])
{
    size_t n = sizeof(ti->label);

    memcpy(out, ti->label, n);
    while (n > 0 && out[n - 1] == ' ')
        n--;
    out[n] = '\0';
}

static int slot_choose(p11psk_token *tok, const char *uri_text, CK_TOKEN_INFO *chosen,
                       p11psk_err *err)
{
    P11KitUri *uri = NULL;
    CK_SLOT_ID *slots = NULL;
    CK_ULONG n = 0, i;
    CK_TOKEN_INFO ti;
    char labels[200] = "", lab[33];
    size_t off = 0, matches = 0, present = 0;
    CK_RV rv;
    int st = P11PSK_ST_OK;

    if (uri_text != NULL) {
        uri = p11_kit_uri_new();
        if (uri == NULL || p11_kit_uri_parse(uri_text, P11_KIT_URI_FOR_TOKEN, uri) != 0) {
            p11_kit_uri_free(uri);
            return p11psk_err_set(err, P11PSK_ST_INTERNAL, "bad token URI %s", uri_text);
        }
    }
    rv = tok->fl->C_GetSlotList(CK_TRUE, NULL, &n);
    if (rv == CKR_OK && n > 0) {
        slots = calloc(n, sizeof(*slots));
        rv = slots ? tok->fl->C_GetSlotList(CK_TRUE, slots, &n) : CKR_HOST_MEMORY;
    }
    if (rv != CKR_OK) {
        st = p11psk_err_ckr(err, rv, "C_GetSlotList");
        goto out;
    }
    for (i = 0; i < n; i++) {
        if (tok->fl->C_GetTokenInfo(slots[i], &ti) != CKR_OK || !(ti.flags & CKF_TOKEN_INITIALIZED))
            continue; /* SoftHSM always shows one empty slot */
        present++;
        token_label(&ti, lab);
        if (off < sizeof(labels) - 1) {
            int w = snprintf(labels + off, sizeof(labels) - off, "%s'%s'", off ? ", " : "", lab);

            off += w > 0 ? (size_t)w : 0;
        }
        if (uri != NULL && !p11_kit_uri_match_token_info(uri, &ti))
            continue;
        if (matches++ == 0) {
            tok->slot = slots[i];
            *chosen = ti;
            snprintf(tok->label, sizeof(tok->label), "%s", lab);
        }
    }
    if (matches == 1)
        goto out;
    if (present == 0)
        st = p11psk_err_set(err, P11PSK_ST_UNAVAILABLE,
                            "no initialised token in module %s; create one, e.g. "
                            "softhsm2-util --init-token --free --label p11psk",
                            tok->module);
    else if (uri == NULL)
        st = p11psk_err_set(err, P11PSK_ST_UNAVAILABLE,
                            "%zu tokens present (%s); choose one with `token = "
                            "pkcs11:token=LABEL` in the config",
                            present, labels);
    else if (matches == 0)
        st = p11psk_err_set(err, P11PSK_ST_UNAVAILABLE,
                            "no token matches %s (present: %s); fix `token =` in the config",
                            uri_text, labels);
    else
        st = p11psk_err_set(err, P11PSK_ST_UNAVAILABLE,
                            "%zu tokens match %s (present: %s); make the URI more specific, "
                            "e.g. add ;serial=...",
                            matches, uri_text, labels);
out:
    free(slots);
    p11_kit_uri_free(uri);
    return st;
}

static int token_login(p11psk_token *tok, const p11psk_token_params *prm, const CK_TOKEN_INFO *ti,
                       p11psk_err *err)
{
    char *pin = NULL, msg[256];
    size_t pinlen = 0;
    CK_RV rv;

    if (prm->pin != NULL) {
        rv = tok->fl->C_Login(tok->sess, CKU_USER, (CK_UTF8CHAR_PTR)prm->pin, strlen(prm->pin));
    } else if (prm->pin_source != NULL) {
        if (!p11psk_pin_read(prm->pin_source, &pin, &pinlen, msg, sizeof(msg)))
            return p11psk_err_set(err, P11PSK_ST_UNAVAILABLE, "%s", msg);
        rv = tok->fl->C_Login(tok->sess, CKU_USER, (CK_UTF8CHAR_PTR)pin, pinlen);
        p11psk_pin_free(pin, pinlen);
    } else if (ti->flags & CKF_LOGIN_REQUIRED) {
        return p11psk_err_set(err, P11PSK_ST_UNAVAILABLE,
                              "token '%s' needs the user PIN; set `pin-source = "
                              "file:/etc/p11psk/pin` in the config",
                              tok->label);
    } else {
        return P11PSK_ST_OK;
    }
    if (rv == CKR_OK)
        tok->logged_in = 1;
    else if (rv != CKR_USER_ALREADY_LOGGED_IN) {
        p11psk_err_ckr(err, rv, "C_Login");
        if (rv == CKR_PIN_INCORRECT || rv == CKR_PIN_LEN_RANGE)
            snprintf(err->msg + strlen(err->msg), sizeof(err->msg) - strlen(err->msg),
                     "; check the PIN in the pin-source file for token '%s'", tok->label);
        return P11PSK_ST_TOKEN;
    }
    return P11PSK_ST_OK;
}

int p11psk_token_open(const p11psk_token_params *prm, p11psk_token **out, p11psk_err *err)
{
    p11psk_token *tok;
    CK_TOKEN_INFO ti = {0};
    CK_FLAGS fl = CKF_SERIAL_SESSION;
    CK_RV rv;
    int st;

    *out = NULL;
    if ((tok = calloc(1, sizeof(*tok))) == NULL)
        return p11psk_err_set(err, P11PSK_ST_INTERNAL, "out of memory");
    st = module_load(tok, prm->module != NULL ? prm->module : P11PSK_DEFAULT_MODULE, err);
    if (st == P11PSK_ST_OK)
        st = slot_choose(tok, prm->token_uri, &ti, err);
    if (st == P11PSK_ST_OK) {
        if (prm->rw)
            fl |= CKF_RW_SESSION;
        rv = tok->fl->C_OpenSession(tok->slot, fl, NULL, NULL, &tok->sess);
        if (rv != CKR_OK)
            st = p11psk_err_ckr(err, rv, "C_OpenSession");
        else
            tok->have_sess = 1;
    }
    if (st == P11PSK_ST_OK)
        st = token_login(tok, prm, &ti, err);
    if (st != P11PSK_ST_OK) {
        p11psk_token_close(tok);
        return st;
    }
    *out = tok;
    return P11PSK_ST_OK;
}

static void cache_clear(p11psk_token *tok)
{
    struct cache_ent *e, *next;
    size_t i;

    for (i = 0; i < CACHE_BUCKETS; i++) {
        for (e = tok->cache[i]; e != NULL; e = next) {
            next = e->next;
            free(e);
        }
        tok->cache[i] = NULL;
    }
}

void p11psk_token_close(p11psk_token *tok)
{
    if (tok == NULL)
        return;
    cache_clear(tok);
    if (tok->logged_in)
        tok->fl->C_Logout(tok->sess);
    if (tok->have_sess)
        tok->fl->C_CloseSession(tok->sess);
    if (tok->initialized)
        p11_kit_module_finalize(tok->fl);
    if (tok->registry != NULL)
        p11_kit_modules_release(tok->registry);
    else if (tok->fl != NULL)
        p11_kit_module_release(tok->fl);
    free(tok);
}

const char *p11psk_token_label(const p11psk_token *tok)
{
    return tok->label;
}

const char *p11psk_token_module(const p11psk_token *tok)
{
    return tok->module;
}

CK_FUNCTION_LIST *p11psk_token_functions(const p11psk_token *tok)
{
    return tok->fl;
}

CK_SESSION_HANDLE p11psk_token_session(const p11psk_token *tok)
{
    return tok->sess;
}

/* ---- keys ---- */

static int key_type_ok(CK_KEY_TYPE t)
{
    return t == CKK_GENERIC_SECRET || t == CKK_AES;
}

/* Reads the attributes p11psk needs. Over-long ids keep their length but no bytes. */
static int key_read(p11psk_token *tok, CK_OBJECT_HANDLE obj, p11psk_key *k, p11psk_err *err)
{
    CK_BBOOL sens = CK_TRUE, extr = CK_FALSE;
    CK_ULONG vlen = 0;
    CK_ATTRIBUTE len_t[] = {{CKA_ID, NULL, 0}, {CKA_LABEL, NULL, 0}};
    CK_ATTRIBUTE t[] = {
        {CKA_KEY_TYPE, &k->type, sizeof(k->type)},
        {CKA_VALUE_LEN, &vlen, sizeof(vlen)},
        {CKA_SENSITIVE, &sens, sizeof(sens)},
        {CKA_EXTRACTABLE, &extr, sizeof(extr)},
        {CKA_ID, k->id, 0},
        {CKA_LABEL, NULL, 0},
    };
    char *label = NULL;
    CK_ULONG n = 4;
    CK_RV rv;

    memset(k, 0, sizeof(*k));
    k->obj = obj;
    k->type = (CK_KEY_TYPE)-1;
    rv = tok->fl->C_GetAttributeValue(tok->sess, obj, len_t, 2);
    if (rv != CKR_OK && rv != CKR_ATTRIBUTE_TYPE_INVALID && rv != CKR_ATTRIBUTE_SENSITIVE)
        return p11psk_err_ckr(err, rv, "C_GetAttributeValue");
    if (len_t[0].ulValueLen != CK_UNAVAILABLE_INFORMATION) {
        k->idlen = len_t[0].ulValueLen;
        if (k->idlen <= P11PSK_KEY_ID_MAX)
            t[n++].ulValueLen = len_t[0].ulValueLen;
    }
    if (len_t[1].ulValueLen != CK_UNAVAILABLE_INFORMATION && len_t[1].ulValueLen > 0) {
        if ((label = calloc(1, len_t[1].ulValueLen + 1)) == NULL)
            return p11psk_err_set(err, P11PSK_ST_INTERNAL, "out of memory");
        if (n == 4) /* keep the template dense */
            t[4] = t[5];
        t[n].type = CKA_LABEL;
        t[n].pValue = label;
        t[n++].ulValueLen = len_t[1].ulValueLen;
    }
    rv = tok->fl->C_GetAttributeValue(tok->sess, obj, t, n);
    if (rv != CKR_OK && rv != CKR_ATTRIBUTE_TYPE_INVALID && rv != CKR_ATTRIBUTE_SENSITIVE) {
        free(label);
        return p11psk_err_ckr(err, rv, "C_GetAttributeValue");
    }
    if (t[0].ulValueLen == CK_UNAVAILABLE_INFORMATION)
        k->type = (CK_KEY_TYPE)-1;
    k->len = t[1].ulValueLen != CK_UNAVAILABLE_INFORMATION ? vlen : 0;
    k->readable = t[2].ulValueLen != CK_UNAVAILABLE_INFORMATION &&
                  t[3].ulValueLen != CK_UNAVAILABLE_INFORMATION && !sens && extr;
    if (label != NULL) {
        snprintf(k->label, sizeof(k->label), "%s", label);
        free(label);
    }
    return P11PSK_ST_OK;
}

static int find_objects(p11psk_token *tok, CK_ATTRIBUTE *tmpl, CK_ULONG tn, CK_OBJECT_HANDLE **objs,
                        size_t *count, p11psk_err *err)
{
    CK_OBJECT_HANDLE *v = NULL, *nv;
    size_t n = 0, cap = 0;
    CK_ULONG got;
    CK_RV rv;

    *objs = NULL;
    *count = 0;
    rv = tok->fl->C_FindObjectsInit(tok->sess, tmpl, tn);
    if (rv != CKR_OK)
        return p11psk_err_ckr(err, rv, "C_FindObjectsInit");
    for (;;) {
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            if ((nv = realloc(v, cap * sizeof(*v))) == NULL) {
                rv = CKR_HOST_MEMORY;
                break;
            }
            v = nv;
        }
        rv = tok->fl->C_FindObjects(tok->sess, v + n, cap - n, &got);
        if (rv != CKR_OK || got == 0)
            break;
        n += got;
    }
    tok->fl->C_FindObjectsFinal(tok->sess);
    if (rv != CKR_OK) {
        free(v);
        return p11psk_err_ckr(err, rv, "C_FindObjects");
    }
    *objs = v;
    *count = n;
    return P11PSK_ST_OK;
}

static unsigned cache_hash(const uint8_t *id, size_t idlen)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    size_t i;

    for (i = 0; i < idlen; i++)
        h = (h ^ id[i]) * 16777619u;
    return h & (CACHE_BUCKETS - 1);
}

static struct cache_ent **cache_slot(p11psk_token *tok, const uint8_t *id, size_t idlen)
{
    struct cache_ent **pp = &tok->cache[cache_hash(id, idlen)];

    for (; *pp != NULL; pp = &(*pp)->next)
        if ((*pp)->key.idlen == idlen && memcmp((*pp)->key.id, id, idlen) == 0)
            break;
    return pp;
}

void p11psk_token_forget(p11psk_token *tok, const uint8_t *id, size_t idlen)
{
    struct cache_ent **pp = cache_slot(tok, id, idlen), *e = *pp;

    if (e != NULL) {
        *pp = e->next;
        free(e);
    }
}

int p11psk_token_find_id(p11psk_token *tok, const uint8_t *id, size_t idlen, p11psk_key *key,
                         p11psk_err *err)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_ID, (void *)id, idlen}};
    CK_OBJECT_HANDLE *objs;
    struct cache_ent **pp, *e;
    char hex[2 * P11PSK_KEY_ID_MAX + 1];
    size_t n, i, found = 0;
    p11psk_key k;
    int st;

    if (idlen == 0 || idlen > P11PSK_ID_MAX)
        return p11psk_err_set(err, P11PSK_ST_BAD_HANDLE, "bad key id length %zu", idlen);
    pp = cache_slot(tok, id, idlen);
    if (*pp != NULL) {
        *key = (*pp)->key;
        return P11PSK_ST_OK;
    }
    id_hex(id, idlen, hex);
    if ((st = find_objects(tok, t, 2, &objs, &n, err)) != P11PSK_ST_OK)
        return st;
    for (i = 0; i < n; i++) {
        if ((st = key_read(tok, objs[i], &k, err)) != P11PSK_ST_OK) {
            free(objs);
            return st;
        }
        if (found++ == 0)
            *key = k;
    }
    free(objs);
    if (found == 0)
        return p11psk_err_set(err, P11PSK_ST_NOT_FOUND, "no key with CKA_ID %s in token %s", hex,
                              tok->label);
    if (found > 1)
        return p11psk_err_set(err, P11PSK_ST_UNSUPPORTED,
                              "%zu keys share CKA_ID %s in token %s; remove the extra ones", found,
                              hex, tok->label);
    if (!key_type_ok(key->type))
        return p11psk_err_set(err, P11PSK_ST_UNSUPPORTED,
                              "key '%s' (CKA_ID %s) is not a generic secret or AES key", key->label,
                              hex);
    if (key->len == 0 || key->len > P11PSK_KEY_LEN_MAX)
        return p11psk_err_set(err, P11PSK_ST_UNSUPPORTED,
                              "key '%s' (CKA_ID %s) has an unsupported length %zu", key->label, hex,
                              key->len);
    if ((e = calloc(1, sizeof(*e))) != NULL) { /* no cache entry is only slower */
        e->key = *key;
        e->next = NULL;
        *pp = e;
    }
    return P11PSK_ST_OK;
}

int p11psk_token_list(p11psk_token *tok, const char *label, p11psk_key **keys, size_t *n,
                      p11psk_err *err)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                        {CKA_LABEL, (void *)label, label ? strlen(label) : 0}};
    CK_OBJECT_HANDLE *objs;
    size_t count, i;
    int st;

    *keys = NULL;
    *n = 0;
    if ((st = find_objects(tok, t, label ? 2 : 1, &objs, &count, err)) != P11PSK_ST_OK)
        return st;
    if (count > 0 && (*keys = calloc(count, sizeof(**keys))) == NULL) {
        free(objs);
        return p11psk_err_set(err, P11PSK_ST_INTERNAL, "out of memory");
    }
    for (i = 0; i < count; i++) {
        if ((st = key_read(tok, objs[i], &(*keys)[*n], err)) != P11PSK_ST_OK) {
            free(objs);
            free(*keys);
            *keys = NULL;
            *n = 0;
            return st;
        }
        if (key_type_ok((*keys)[*n].type))
            (*n)++;
    }
    free(objs);
    return P11PSK_ST_OK;
}

int p11psk_token_create_key(p11psk_token *tok, const p11psk_new_key *nk, p11psk_key *key,
                            p11psk_err *err)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_BBOOL on_token = nk->session_only ? CK_FALSE : CK_TRUE;
    CK_ULONG vlen = nk->value_len;
    CK_MECHANISM gen = {CKM_GENERIC_SECRET_KEY_GEN, NULL, 0};
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_TOKEN, &on_token, sizeof(on_token)},
        {CKA_PRIVATE, &yes, sizeof(yes)},
        {CKA_SENSITIVE, nk->readable ? &no : &yes, sizeof(CK_BBOOL)},
        {CKA_EXTRACTABLE, nk->readable ? &yes : &no, sizeof(CK_BBOOL)},
        {CKA_LABEL, (void *)nk->label, strlen(nk->label)},
        {CKA_ID, (void *)nk->id, nk->idlen},
        {CKA_VALUE_LEN, &vlen, sizeof(vlen)}, /* replaced by CKA_VALUE on import */
    };
    CK_OBJECT_HANDLE obj;
    CK_RV rv;

    if (nk->value_len < P11PSK_KEY_LEN_MIN || nk->value_len > P11PSK_KEY_LEN_MAX)
        return p11psk_err_set(err, P11PSK_ST_BAD_REQUEST, "key length %zu is outside %d..%d",
                              nk->value_len, P11PSK_KEY_LEN_MIN, P11PSK_KEY_LEN_MAX);
    if (nk->value != NULL) {
        t[8].type = CKA_VALUE;
        t[8].pValue = (void *)nk->value;
        t[8].ulValueLen = nk->value_len;
        rv = tok->fl->C_CreateObject(tok->sess, t, 9, &obj);
        if (rv != CKR_OK)
            return p11psk_err_ckr(err, rv, "C_CreateObject");
    } else {
        /* C_GenerateKey takes class and type from the mechanism; pass them anyway. */
        rv = tok->fl->C_GenerateKey(tok->sess, &gen, t, 9, &obj);
        if (rv != CKR_OK)
            return p11psk_err_ckr(err, rv, "C_GenerateKey");
    }
    return key_read(tok, obj, key, err);
}

int p11psk_token_destroy_key(p11psk_token *tok, const p11psk_key *key, p11psk_err *err)
{
    CK_RV rv = tok->fl->C_DestroyObject(tok->sess, key->obj);

    if (key->idlen <= P11PSK_KEY_ID_MAX)
        p11psk_token_forget(tok, key->id, key->idlen);
    return rv == CKR_OK ? P11PSK_ST_OK : p11psk_err_ckr(err, rv, "C_DestroyObject");
}

int p11psk_token_random(p11psk_token *tok, uint8_t *out, size_t len, p11psk_err *err)
{
    CK_RV rv = tok->fl->C_GenerateRandom(tok->sess, out, len);

    return rv == CKR_OK ? P11PSK_ST_OK : p11psk_err_ckr(err, rv, "C_GenerateRandom");
}

/* ---- token-side math ---- */

int p11psk_token_digest_key(p11psk_token *tok, int md, const uint8_t *prefix, size_t prefixlen,
                            const p11psk_key *key, uint8_t *out, p11psk_err *err)
{
    CK_MECHANISM mech = {md == P11PSK_MD_SHA384 ? CKM_SHA384 : CKM_SHA256, NULL, 0};
    CK_ULONG outlen = p11psk_md_size(md);
    uint8_t junk[64];
    CK_ULONG junklen = sizeof(junk);
    const char *fn = "C_DigestInit";
    CK_RV rv;

    if (outlen == 0)
        return p11psk_err_set(err, P11PSK_ST_UNSUPPORTED, "unsupported digest %d", md);
    rv = tok->fl->C_DigestInit(tok->sess, &mech);
    if (rv != CKR_OK)
        return p11psk_err_ckr(err, rv, fn);
    if (prefixlen > 0) {
        fn = "C_DigestUpdate";
        rv = tok->fl->C_DigestUpdate(tok->sess, (CK_BYTE_PTR)prefix, prefixlen);
    }
    if (rv == CKR_OK) {
        fn = "C_DigestKey";
        rv = tok->fl->C_DigestKey(tok->sess, key->obj);
    }
    if (rv == CKR_OK) {
        fn = "C_DigestFinal";
        rv = tok->fl->C_DigestFinal(tok->sess, out, &outlen);
        if (rv == CKR_OK && outlen != p11psk_md_size(md)) {
            OPENSSL_cleanse(out, outlen);
            return p11psk_err_set(err, P11PSK_ST_TOKEN, "C_DigestFinal returned %lu bytes",
                                  (unsigned long)outlen);
        }
        if (rv == CKR_OK)
            return P11PSK_ST_OK;
    }
    /* Make sure no digest operation stays active on the session. */
    tok->fl->C_DigestFinal(tok->sess, junk, &junklen);
    OPENSSL_cleanse(junk, sizeof(junk));
    return p11psk_err_ckr(err, rv, fn);
}

int p11psk_token_key_value(p11psk_token *tok, const p11psk_key *key, uint8_t **val, size_t *len,
                           p11psk_err *err)
{
    CK_ATTRIBUTE t = {CKA_VALUE, NULL, 0};
    CK_RV rv;

    *val = NULL;
    *len = 0;
    if (!key->readable)
        return p11psk_err_set(err, P11PSK_ST_NEED_READABLE, "key '%s' is not readable", key->label);
    if (key->len == 0 || (t.pValue = OPENSSL_secure_malloc(key->len)) == NULL)
        return p11psk_err_set(err, P11PSK_ST_INTERNAL, "out of memory");
    t.ulValueLen = key->len;
    rv = tok->fl->C_GetAttributeValue(tok->sess, key->obj, &t, 1);
    if (rv != CKR_OK || t.ulValueLen == CK_UNAVAILABLE_INFORMATION || t.ulValueLen > key->len) {
        OPENSSL_secure_clear_free(t.pValue, key->len);
        return p11psk_err_ckr(err, rv != CKR_OK ? rv : CKR_GENERAL_ERROR,
                              "C_GetAttributeValue(CKA_VALUE)");
    }
    *val = t.pValue;
    *len = t.ulValueLen;
    return P11PSK_ST_OK;
}
