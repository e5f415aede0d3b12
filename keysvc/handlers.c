/* SPDX-License-Identifier: Apache-2.0 */
/*
 * What each wire operation does in p11pskd, and the array that binds a handler to each row
 * of the operation table (ops.h). By the time a handler runs, dispatch.c has checked the
 * row's permission and fields; key operations check the key's allow rule here, once the
 * key is known.
 */
#include "server_int.h"

#include <openssl/crypto.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "genpage.h"
#include "keychange.h"
#include "handlekey.h"
#include "log.h"
#include "p11psk/clock.h"
#include "p11psk/handle.h"

/* The peer as the ACL sees it. */
static p11psk_acl_peer conn_peer(const conn *c)
{
    p11psk_acl_peer p = {c->cred.uid, c->cred.gid, c->groups, c->ngroups};

    return p;
}

static int field_eq(const p11psk_field *f, const char *s)
{
    return f->present && f->len == strlen(s) && memcmp(f->p, s, f->len) == 0;
}

#define HK_RETRY_MS 2000 /* without mk, look for the handle key again at most this often */

/* p11pskd has no mk (the token was unavailable at start, or had no handle key and was
 * read-only): look again now and then, so the daemon recovers without a restart. With mk,
 * this never runs, so bad handles never cost a token call. */
static void handlekey_retry(server *s)
{
    static atomic_llong next_ms;
    long long now = p11psk_mono_ms(), due = atomic_load(&next_ms);

    if (now < due || !atomic_compare_exchange_strong(&next_ms, &due, now + HK_RETRY_MS))
        return; /* another thread is at it, or it is too soon */
    handlers_handlekey_load(s, 0);
}

/* The one answer to a handle this token did not issue: forged, from another token, made
 * before a re-issue, or version 1. It names no key, so it tells nothing about the token. */
#define BAD_HANDLE_MSG                                                                             \
    "bad handle: not issued for this token (forged, from another token, from before a "            \
    "re-issue, or version 1); get the current one with `p11psk handle ID`"

/* Judges DIGEST and HANDLE (dispatch.c has checked that they are there), verifies the
 * handle's tag, finds the key and applies its allow rule. Everything before the lookup is
 * in-process: a peer that may use no key, or a handle the token did not issue, costs no
 * token search. */
static int key_for(server *s, conn *c, const p11psk_msg *m, int want_type, p11psk_key *key, int *md,
                   outcome *o)
{
    const p11psk_field *hf = &m->f[P11PSK_T_HANDLE];
    p11psk_acl_peer peer = conn_peer(c);
    p11psk_handle h;
    uint8_t d = 0;
    int rc, st;

    p11psk_msg_u8(m, P11PSK_T_DIGEST, &d); /* absent or malformed: d stays 0, unsupported */
    if (p11psk_md_size(d) == 0)
        return outcome_fail(o, P11PSK_ST_UNSUPPORTED,
                            "digest id %u not supported (SHA256 or SHA384)", d);
    if (!p11psk_policy_digest_ok(&s->cfg->policy, d)) {
        char allowed[32];

        p11psk_policy_digests_str(&s->cfg->policy, allowed, sizeof(allowed));
        return outcome_fail(o, P11PSK_ST_POLICY, "%s is not in `digests = %s` (%s)",
                            p11psk_md_name(d), allowed, s->cfg->path);
    }
    *md = d;
    /* Uniform denial: the same words for every handle, existing key or not. */
    if (!p11psk_acl_peer_has_any_rule(&s->cfg->acl, &peer))
        return outcome_fail(o, P11PSK_ST_ACCESS_DENIED,
                            "uid %lu gid %lu may not use any key; add an allow rule to %s",
                            (unsigned long)c->cred.uid, (unsigned long)c->cred.gid, s->cfg->path);
    rc = p11psk_handle_decode(hf->p, hf->len, &h);
    if (rc == P11PSK_HANDLE_V1)
        return outcome_fail(o, P11PSK_ST_BAD_HANDLE, BAD_HANDLE_MSG);
    if (rc != P11PSK_HANDLE_OK)
        return outcome_fail(o, P11PSK_ST_BAD_HANDLE, "%s", p11psk_handle_strerror(rc));
    if (h.type != want_type)
        return outcome_fail(o, P11PSK_ST_BAD_HANDLE, "expected a %s handle, got a %s handle",
                            want_type == P11PSK_HT_PSK ? "PSK" : "TLS 1.3 early-secret",
                            h.type == P11PSK_HT_PSK ? "PSK" : "TLS 1.3 early-secret");
    if (!p11psk_handlekey_ready(s->hk))
        handlekey_retry(s);
    if (p11psk_handlekey_verify(s->hk, &h) != 0) {
        snprintf(o->ident, sizeof(o->ident), "(bad-handle)");
        return outcome_fail(o, P11PSK_ST_BAD_HANDLE, BAD_HANDLE_MSG);
    }
    p11psk_hex_encode(h.id, h.idlen, o->ident);
    st = p11psk_token_find_id(s->tok, h.id, h.idlen, key, &o->err);
    if (st != P11PSK_ST_OK)
        return st;
    snprintf(o->ident, sizeof(o->ident), "%s", key->label);
    o->keyed = 1;
    if (p11psk_acl_check(&s->cfg->acl, key->label, &peer) == NULL)
        return outcome_fail(
            o, P11PSK_ST_ACCESS_DENIED, "uid %lu gid %lu may not use '%s'; add an allow rule to %s",
            (unsigned long)c->cred.uid, (unsigned long)c->cred.gid, key->label, s->cfg->path);
    /* After the allow rule, so that only peers allowed to use the key learn its dates. */
    if (p11psk_key_expired(key, (long long)time(NULL)))
        return outcome_fail(o, P11PSK_ST_POLICY,
                            "key expired on %s (CKA_END_DATE of '%s'); give it a new key and "
                            "date with `p11psk rotate ID --not-after YYYY-MM-DD`",
                            key->not_after, key->label);
    if (!s->cfg->policy.readable_keys)
        key->readable = 0; /* strict HSM mode: ladder step 3 never runs */
    return P11PSK_ST_OK;
}

static const char *const expand_labels[] = {"ext binder", "res binder", "c e traffic",
                                            "e exp master"};

/* Runs one key operation, looking the key up again once if its object handle went stale. */
typedef int (*key_op)(server *s, const p11psk_msg *m, const p11psk_key *key, int md,
                      p11psk_frame *resp, outcome *o);

static int with_key(server *s, conn *c, const p11psk_msg *m, int want_type, key_op fn,
                    p11psk_frame *resp, outcome *o)
{
    p11psk_key key;
    int attempt, st, md = 0;

    for (attempt = 0;; attempt++) {
        st = key_for(s, c, m, want_type, &key, &md, o);
        if (st != P11PSK_ST_OK)
            return st;
        st = fn(s, m, &key, md, resp, o);
        if (st == P11PSK_ST_NEED_READABLE && !s->cfg->policy.readable_keys) {
            char why[sizeof(o->err.msg)];

            snprintf(why, sizeof(why), "%s", o->err.msg);
            outcome_fail(o, P11PSK_ST_POLICY,
                         "readable-keys = no (%s) forbids reading key values: %s", s->cfg->path,
                         why);
            st = P11PSK_ST_POLICY;
        }
        if (st == P11PSK_ST_TOKEN && p11psk_ckr_stale_handle(o->err.ckr) && attempt == 0) {
            /* The object went away: the key may have been replaced. */
            p11psk_keys_changed(s->tok, key.id, key.idlen, "object handle went stale");
            continue;
        }
        OPENSSL_cleanse(&key, sizeof(key));
        return st;
    }
}

/* TLS13_EARLY answers the ES placeholder the provider would make for the request's PSK
 * handle (handle.h); computing the ES here proves the key is usable. Clients make it
 * locally and send the PSK handle to EXPAND/EXTRACT, so this is a health check. */
static int do_early(server *s, const p11psk_msg *m, const p11psk_key *key, int md,
                    p11psk_frame *resp, outcome *o)
{
    const p11psk_field *hf = &m->f[P11PSK_T_HANDLE];
    uint8_t es[48], psk[P11PSK_HANDLE_LEN], hb[P11PSK_HANDLE_MAX];
    p11psk_handle h;
    int st;

    st = p11psk_ladder_tls13_early(s->lad, s->tok, key, md, es, &o->step, &o->err);
    OPENSSL_cleanse(es, sizeof(es));
    if (st != P11PSK_ST_OK)
        return st;
    /* key_for decoded the handle already; re-encode it to its binary form. */
    if (p11psk_handle_decode(hf->p, hf->len, &h) != P11PSK_HANDLE_OK ||
        p11psk_handle_encode(&h, psk, sizeof(psk)) != P11PSK_HANDLE_OK ||
        p11psk_handle_es_make(psk, md, hb, p11psk_md_size(md)) != P11PSK_HANDLE_OK)
        return outcome_fail(o, P11PSK_ST_INTERNAL, "cannot encode early-secret handle");
    p11psk_frame_add(resp, P11PSK_T_HANDLE, hb, p11psk_md_size(md));
    return P11PSK_ST_OK;
}

static int do_expand(server *s, const p11psk_msg *m, const p11psk_key *key, int md,
                     p11psk_frame *resp, outcome *o)
{
    const p11psk_field *pf = &m->f[P11PSK_T_PREFIX], *lf = &m->f[P11PSK_T_LABEL],
                       *df = &m->f[P11PSK_T_DATA];
    uint8_t out[P11PSK_WIRE_OUT_MAX];
    uint16_t outlen = 0;
    int st;

    p11psk_msg_u16(m, P11PSK_T_OUTLEN, &outlen);
    st = p11psk_ladder_tls13_expand(s->lad, s->tok, key, md, pf->p, pf->len, lf->p, lf->len,
                                    df->present ? df->p : NULL, df->len, out, outlen, &o->step,
                                    &o->err);
    if (st == P11PSK_ST_OK)
        p11psk_frame_add(resp, P11PSK_T_OUT, out, outlen);
    OPENSSL_cleanse(out, sizeof(out));
    return st;
}

static int do_extract(server *s, const p11psk_msg *m, const p11psk_key *key, int md,
                      p11psk_frame *resp, outcome *o)
{
    const p11psk_field *pf = &m->f[P11PSK_T_PREFIX], *lf = &m->f[P11PSK_T_LABEL],
                       *kf = &m->f[P11PSK_T_IKM];
    uint8_t out[48];
    int st;

    st = p11psk_ladder_tls13_extract(s->lad, s->tok, key, md, pf->p, pf->len, lf->p, lf->len,
                                     kf->present ? kf->p : NULL, kf->len, out, &o->step, &o->err);
    if (st == P11PSK_ST_OK)
        p11psk_frame_add(resp, P11PSK_T_OUT, out, p11psk_md_size(md));
    OPENSSL_cleanse(out, sizeof(out));
    return st;
}

static int do_prf(server *s, const p11psk_msg *m, const p11psk_key *key, int md, p11psk_frame *resp,
                  outcome *o)
{
    const p11psk_field *of = &m->f[P11PSK_T_OTHER], *sf = &m->f[P11PSK_T_SEED];
    uint8_t out[P11PSK_WIRE_OUT_MAX];
    uint16_t outlen = 0;
    int st;

    p11psk_msg_u16(m, P11PSK_T_OUTLEN, &outlen);
    st = p11psk_ladder_tls12_prf(s->lad, s->tok, key, md, of->p, of->len, sf->p, sf->len, out,
                                 outlen, &o->step, &o->err);
    if (st == P11PSK_ST_OK)
        p11psk_frame_add(resp, P11PSK_T_OUT, out, outlen);
    OPENSSL_cleanse(out, sizeof(out));
    return st;
}

int handlers_handlekey_load(server *s, int create)
{
    p11psk_err err;
    int st;

    if (s->hk == NULL)
        return -1;
    st = p11psk_handlekey_load(s->hk, s->tok, create, &err);
    if (st == P11PSK_ST_OK) {
        p11psk_log(P11PSK_LOG_INFO, "handle key of token '%s' loaded", p11psk_token_label(s->tok));
        return 0;
    }
    p11psk_log(P11PSK_LOG_WARN,
               "no handle key: %s. Every handle is refused meanwhile; p11pskd looks again "
               "every %d s and on a FLUSH",
               err.msg, HK_RETRY_MS / 1000);
    return -1;
}

/* Status and admin permissions; root and p11pskd's own user hold both. */
int handlers_peer_has_perm(server *s, const conn *c, int perm)
{
    p11psk_acl_peer peer = conn_peer(c);

    if (perm == P11PSK_PERM_NONE || perm == P11PSK_PERM_KEY)
        return 1; /* key operations: the key's allow rule, in key_for */
    return c->cred.uid == 0 || c->cred.uid == geteuid() ||
           p11psk_acl_check_perm(&s->cfg->acl,
                                 perm == P11PSK_PERM_STATUS ? P11PSK_ACL_STATUS : P11PSK_ACL_ADMIN,
                                 &peer);
}

static int h_ping(server *s, conn *c, const p11psk_msg *m, p11psk_frame *resp, outcome *o)
{
    p11psk_frame_add_str(resp, P11PSK_T_INFO, "p11pskd " P11PSK_VERSION);
    return P11PSK_ST_OK;
}

static int h_status(server *s, conn *c, const p11psk_msg *m, p11psk_frame *resp, outcome *o)
{
    return stats_status(s, resp, o);
}

/* FLUSH without a handle drops every cached value and derives mk again (after `p11psk
 * handle --reissue-all`); with one, that key's values. Admin only, so the handle's tag is
 * not checked: it only names what to forget. */
static int h_flush(server *s, conn *c, const p11psk_msg *m, p11psk_frame *resp, outcome *o)
{
    const p11psk_field *hf = &m->f[P11PSK_T_HANDLE];
    p11psk_handle h;
    char msg[96];
    size_t n;
    int rc;

    if (!hf->present) { /* every key */
        n = p11psk_keys_changed(s->tok, NULL, 0, "flush requested");
        snprintf(o->ident, sizeof(o->ident), "*");
        rc = handlers_handlekey_load(s, 0);
        snprintf(msg, sizeof(msg), "flushed %zu; handle key %s", n,
                 rc == 0 ? "reloaded" : "missing: every handle is refused");
    } else {
        if ((rc = p11psk_handle_decode(hf->p, hf->len, &h)) != P11PSK_HANDLE_OK)
            return outcome_fail(o, P11PSK_ST_BAD_HANDLE, "%s", p11psk_handle_strerror(rc));
        if (h.type != P11PSK_HT_PSK)
            return outcome_fail(o, P11PSK_ST_BAD_HANDLE, "FLUSH takes a PSK handle");
        p11psk_hex_encode(h.id, h.idlen, o->ident);
        n = p11psk_keys_changed(s->tok, h.id, h.idlen, "flush requested");
        snprintf(msg, sizeof(msg), "flushed %zu", n);
    }
    /* p11psk_keys_changed moved the generation page on before this answer: when `p11psk
     * rotate` or `rm` returns, every provider on this host has been told to drop its binder
     * keys. */
    p11psk_frame_add_str(resp, P11PSK_T_INFO, msg);
    return P11PSK_ST_OK;
}

static int h_gen_page(server *s, conn *c, const p11psk_msg *m, p11psk_frame *resp, outcome *o)
{
    uint64_t g = p11psk_genpage_value();
    uint8_t be[8];
    int fd = p11psk_genpage_fd(), i;

    if (fd < 0)
        return outcome_fail(o, P11PSK_ST_UNAVAILABLE,
                            "no generation page (see p11pskd's start-up log); binder keys are "
                            "not cached");
    for (i = 7; i >= 0; i--, g >>= 8)
        be[i] = (uint8_t)g;
    p11psk_frame_add(resp, P11PSK_T_OUT, be, sizeof(be));
    c->pass_fd = fd + 1;
    return P11PSK_ST_OK;
}

static int h_early(server *s, conn *c, const p11psk_msg *m, p11psk_frame *resp, outcome *o)
{
    return with_key(s, c, m, P11PSK_HT_PSK, do_early, resp, o);
}

static int h_expand(server *s, conn *c, const p11psk_msg *m, p11psk_frame *resp, outcome *o)
{
    const p11psk_field *pf = &m->f[P11PSK_T_PREFIX], *lf = &m->f[P11PSK_T_LABEL];
    char label[64];
    size_t i;

    if (!field_eq(pf, "tls13 "))
        return outcome_fail(o, P11PSK_ST_UNSUPPORTED, "only the \"tls13 \" label prefix is served");
    for (i = 0; i < sizeof(expand_labels) / sizeof(expand_labels[0]); i++)
        if (field_eq(lf, expand_labels[i]))
            break;
    if (i == sizeof(expand_labels) / sizeof(expand_labels[0])) {
        p11psk_msg_str(m, P11PSK_T_LABEL, label, sizeof(label));
        return outcome_fail(o, P11PSK_ST_UNSUPPORTED,
                            "label \"%s\" is not served from an early secret (allowed: ext "
                            "binder, res binder, c e traffic, e exp master)",
                            label);
    }
    return with_key(s, c, m, P11PSK_HT_PSK, do_expand, resp,
                    o); /* the provider sends the PSK handle */
}

static int h_extract(server *s, conn *c, const p11psk_msg *m, p11psk_frame *resp, outcome *o)
{
    const p11psk_field *pf = &m->f[P11PSK_T_PREFIX], *lf = &m->f[P11PSK_T_LABEL],
                       *kf = &m->f[P11PSK_T_IKM];

    if (!field_eq(pf, "tls13 ") || !field_eq(lf, "derived"))
        return outcome_fail(o, P11PSK_ST_UNSUPPORTED,
                            "only the \"tls13 \" prefix with label \"derived\" is served");
    if (kf->present && p11psk_handle_has_magic(kf->p, kf->len))
        return outcome_fail(o, P11PSK_ST_BAD_HANDLE,
                            "IKM carries the p11psk handle magic; a handle is never key material");
    /* psk_ke: no (EC)DHE input, so the handshake secret would be a PSK-equivalent
     * in the application. */
    if (!s->cfg->policy.allow_psk_ke && (!kf->present || p11psk_buf_is_zero(kf->p, kf->len)))
        return outcome_fail(o, P11PSK_ST_POLICY,
                            "TLS 1.3 psk_ke (PSK without (EC)DHE) is refused by allow-psk-ke = "
                            "no (%s); let the peers use psk_dhe_ke, or set allow-psk-ke = yes",
                            s->cfg->path);
    return with_key(s, c, m, P11PSK_HT_PSK, do_extract, resp, o);
}

static int h_prf(server *s, conn *c, const p11psk_msg *m, p11psk_frame *resp, outcome *o)
{
    return with_key(s, c, m, P11PSK_HT_PSK, do_prf, resp, o);
}

/* The daemon side of each row of p11psk_ops; handlers_bind puts them in row order. */
static const struct {
    uint8_t code;
    op_handler fn;
} handlers[] = {
    {P11PSK_OP_PING, h_ping},           {P11PSK_OP_STATUS, h_status},
    {P11PSK_OP_FLUSH, h_flush},         {P11PSK_OP_TLS13_EARLY, h_early},
    {P11PSK_OP_TLS13_EXPAND, h_expand}, {P11PSK_OP_TLS13_EXTRACT, h_extract},
    {P11PSK_OP_TLS12_PRF, h_prf},       {P11PSK_OP_GEN_PAGE, h_gen_page},
};

static op_handler by_row[P11PSK_OPS_MAX];

int handlers_bind(char *why, size_t whylen)
{
    size_t i, j;

    for (i = 0; i < p11psk_ops_n; i++) {
        by_row[i] = NULL;
        for (j = 0; j < sizeof(handlers) / sizeof(handlers[0]); j++)
            if (handlers[j].code == p11psk_ops[i].code)
                by_row[i] = handlers[j].fn;
        if (by_row[i] == NULL) {
            snprintf(why, whylen, "internal error: no handler for operation %s (0x%02x)",
                     p11psk_ops[i].name, p11psk_ops[i].code);
            return -1;
        }
    }
    for (j = 0; j < sizeof(handlers) / sizeof(handlers[0]); j++)
        if (p11psk_op_find(handlers[j].code) == NULL) {
            snprintf(why, whylen, "internal error: handler for code 0x%02x has no table row",
                     handlers[j].code);
            return -1;
        }
    return 0;
}

op_handler handlers_for(size_t row)
{
    return row < p11psk_ops_n ? by_row[row] : NULL;
}
