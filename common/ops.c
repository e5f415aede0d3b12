/* SPDX-License-Identifier: Apache-2.0 */
#include "p11psk/ops.h"

#include <stdio.h>

/* Field rules. ANY: the handler (handle decoder, ladder) judges the size, with its own
 * error text. A fixed size (min == max) is reported as "missing or malformed". */
#define ANY UINT16_MAX
/* Rows kept as written: tests/fuzz/make_corpus.py parses them. */
/* clang-format off */
#define REQ(tag, lo, hi) {tag, 1, lo, hi, 0, 0}
#define OPT(tag, lo, hi) {tag, 0, lo, hi, 0, 0}
#define REQ_U16(tag, vlo, vhi) {tag, 1, 2, 2, vlo, vhi}

/*
 * One row per operation, in the order STATUS lists their counters:
 *   {code, name, permission, refusal text, answer field, {request fields, checked in order}}
 * ping:          answers INFO "p11pskd VERSION".
 * tls13-early:   HANDLE is a PSK handle; answers an early-secret handle.
 * tls13-expand:  HANDLE is an early-secret handle; HKDF-Expand-Label, OUTLEN bytes.
 * tls13-extract: HANDLE is an early-secret handle; IKM absent means zeros; hash-length OUT.
 * tls12-prf:     HANDLE is a PSK handle; premaster = u16 len ‖ OTHER ‖ u16 len ‖ PSK (an
 *                all-zero OTHER means plain PSK and is resized to the key's real length).
 * status:        answers INFO, "name value" lines (requests{op="..",result=".."} 12).
 * flush:         HANDLE absent: every key; answers INFO "flushed N".
 * gen-page:      answers OUT, the current key generation (u64, big endian), and passes the
 *                generation page's descriptor with the answer (SCM_RIGHTS). Anyone who may
 *                connect: the page holds a counter that moves when some key changes, which
 *                says nothing about any key, and a provider on a handle needs it before its
 *                first key operation is judged by an allow rule.
 */
const p11psk_op_info p11psk_ops[] = {
    {P11PSK_OP_PING, "ping", P11PSK_PERM_NONE, "ping", P11PSK_T_INFO,
     {{0}}},
    {P11PSK_OP_TLS13_EARLY, "tls13-early", P11PSK_PERM_KEY, "use the key", P11PSK_T_HANDLE,
     {REQ(P11PSK_T_DIGEST, 1, 1), REQ(P11PSK_T_HANDLE, 0, ANY)}},
    {P11PSK_OP_TLS13_EXPAND, "tls13-expand", P11PSK_PERM_KEY, "use the key", P11PSK_T_OUT,
     {REQ(P11PSK_T_PREFIX, 0, ANY), REQ(P11PSK_T_LABEL, 0, ANY),
      REQ_U16(P11PSK_T_OUTLEN, 1, P11PSK_WIRE_OUT_MAX), REQ(P11PSK_T_DIGEST, 1, 1),
      REQ(P11PSK_T_HANDLE, 0, ANY), OPT(P11PSK_T_DATA, 0, ANY)}},
    {P11PSK_OP_TLS13_EXTRACT, "tls13-extract", P11PSK_PERM_KEY, "use the key", P11PSK_T_OUT,
     {REQ(P11PSK_T_PREFIX, 0, ANY), REQ(P11PSK_T_LABEL, 0, ANY), REQ(P11PSK_T_DIGEST, 1, 1),
      REQ(P11PSK_T_HANDLE, 0, ANY), OPT(P11PSK_T_IKM, 0, ANY)}},
    {P11PSK_OP_TLS12_PRF, "tls12-prf", P11PSK_PERM_KEY, "use the key", P11PSK_T_OUT,
     {REQ(P11PSK_T_OTHER, 0, ANY), REQ(P11PSK_T_SEED, 0, ANY),
      REQ_U16(P11PSK_T_OUTLEN, 1, P11PSK_WIRE_OUT_MAX), REQ(P11PSK_T_DIGEST, 1, 1),
      REQ(P11PSK_T_HANDLE, 0, ANY)}},
    {P11PSK_OP_STATUS, "status", P11PSK_PERM_STATUS, "read the status", P11PSK_T_INFO,
     {{0}}},
    {P11PSK_OP_FLUSH, "flush", P11PSK_PERM_ADMIN, "flush the cache", P11PSK_T_INFO,
     {OPT(P11PSK_T_HANDLE, 0, ANY)}},
    {P11PSK_OP_GEN_PAGE, "gen-page", P11PSK_PERM_NONE, "map the generation page", P11PSK_T_OUT,
     {{0}}},
};
/* clang-format on */

const size_t p11psk_ops_n = sizeof(p11psk_ops) / sizeof(p11psk_ops[0]);

_Static_assert(sizeof(p11psk_ops) / sizeof(p11psk_ops[0]) <= P11PSK_OPS_MAX,
               "raise P11PSK_OPS_MAX: the counters have no slot for every row");

static const char *const tag_names[P11PSK_T_MAX_] = {
    [P11PSK_T_DIGEST] = "DIGEST", [P11PSK_T_HANDLE] = "HANDLE", [P11PSK_T_PREFIX] = "PREFIX",
    [P11PSK_T_LABEL] = "LABEL",   [P11PSK_T_DATA] = "DATA",     [P11PSK_T_IKM] = "IKM",
    [P11PSK_T_OTHER] = "OTHER",   [P11PSK_T_SEED] = "SEED",     [P11PSK_T_OUTLEN] = "OUTLEN",
    [P11PSK_T_OUT] = "OUT",       [P11PSK_T_CKR] = "CKR",       [P11PSK_T_MSG] = "MSG",
    [P11PSK_T_INFO] = "INFO",
};

size_t p11psk_op_index(int code)
{
    size_t i;

    for (i = 0; i < p11psk_ops_n; i++)
        if (p11psk_ops[i].code == code)
            return i;
    return p11psk_ops_n;
}

const p11psk_op_info *p11psk_op_find(int code)
{
    size_t i = p11psk_op_index(code);

    return i < p11psk_ops_n ? &p11psk_ops[i] : NULL;
}

const char *p11psk_op_str(int op)
{
    const p11psk_op_info *row = p11psk_op_find(op);

    return row != NULL ? row->name : "unknown";
}

const char *p11psk_op_slot_name(size_t slot)
{
    return slot < p11psk_ops_n ? p11psk_ops[slot].name : "other";
}

const char *p11psk_tag_str(int tag)
{
    return tag > 0 && tag < P11PSK_T_MAX_ && tag_names[tag] != NULL ? tag_names[tag] : "unknown";
}

static uint32_t field_value(const p11psk_field *f)
{
    return f->len == 1 ? f->p[0] : f->len == 2 ? p11psk_load_be16(f->p) : p11psk_load_be32(f->p);
}

static int check_rule(const p11psk_field_rule *r, const p11psk_field *f, char *why, size_t whylen)
{
    const char *name = p11psk_tag_str(r->tag);
    uint32_t v;

    if (!f->present && !r->required)
        return P11PSK_FIELD_OK;
    if (!f->present || (r->minlen == r->maxlen && f->len != r->minlen)) {
        snprintf(why, whylen,
                 r->minlen == r->maxlen ? "missing or malformed %s field" : "missing %s field",
                 name);
        return f->present ? P11PSK_FIELD_BAD_SIZE : P11PSK_FIELD_MISSING;
    }
    if (f->len < r->minlen || f->len > r->maxlen) {
        snprintf(why, whylen, "%s field of %u bytes, outside %u..%u", name, f->len, r->minlen,
                 r->maxlen);
        return P11PSK_FIELD_BAD_SIZE;
    }
    if (r->maxval != 0 && (f->len == 1 || f->len == 2 || f->len == 4)) {
        v = field_value(f);
        if (v < r->minval || v > r->maxval) {
            snprintf(why, whylen, "%s %lu outside %lu..%lu", name, (unsigned long)v,
                     (unsigned long)r->minval, (unsigned long)r->maxval);
            return P11PSK_FIELD_BAD_VALUE;
        }
    }
    return P11PSK_FIELD_OK;
}

int p11psk_op_validate(const p11psk_op_info *op, const p11psk_msg *m, char *why, size_t whylen)
{
    uint8_t listed[P11PSK_T_MAX_] = {0};
    size_t i;
    int tag, rc;

    for (i = 0; i < P11PSK_OP_FIELDS_MAX && op->fields[i].tag != 0; i++) {
        const p11psk_field_rule *r = &op->fields[i];

        if (r->tag >= P11PSK_T_MAX_)
            continue; /* not a tag the parser accepts: can never be present */
        listed[r->tag] = 1;
        if ((rc = check_rule(r, &m->f[r->tag], why, whylen)) != P11PSK_FIELD_OK)
            return rc;
    }
    /* Deny by default: a field the row does not name is a client bug or a probe. */
    for (tag = 1; tag < P11PSK_T_MAX_; tag++)
        if (m->f[tag].present && !listed[tag]) {
            snprintf(why, whylen, "%s field not allowed in a %s request", p11psk_tag_str(tag),
                     op->name);
            return P11PSK_FIELD_FORBIDDEN;
        }
    return P11PSK_FIELD_OK;
}
