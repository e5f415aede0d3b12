/* SPDX-License-Identifier: Apache-2.0 */
/*
 * One request to its answer: frame checks, rate limit, then the operation's row of the
 * table (ops.h): its permission, its fields, its handler (handlers.c). Every request ends
 * in one counter (stats.c) and one audit line.
 */
#include "server_int.h"

#include <openssl/crypto.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "p11psk/clock.h"

int outcome_fail(outcome *o, int status, const char *fmt, ...)
{
    va_list ap;

    o->err.status = status;
    o->err.ckr = CKR_OK;
    va_start(ap, fmt);
    vsnprintf(o->err.msg, sizeof(o->err.msg), fmt, ap);
    va_end(ap);
    if (status == P11PSK_ST_BAD_REQUEST)
        o->close_after = 1;
    return status;
}

static int serve(server *s, conn *c, const p11psk_msg *m, p11psk_frame *resp, outcome *o)
{
    size_t row = p11psk_op_index(m->code);
    const p11psk_op_info *op;
    char why[sizeof(o->err.msg)];

    if (row == p11psk_ops_n)
        return outcome_fail(o, P11PSK_ST_BAD_REQUEST, "unknown operation 0x%02x", m->code);
    op = &p11psk_ops[row];
    if (!handlers_peer_has_perm(s, c, op->perm))
        return outcome_fail(o, P11PSK_ST_ACCESS_DENIED, "uid %lu may not %s; add %s uid=... to %s",
                            (unsigned long)c->cred.uid, op->what,
                            op->perm == P11PSK_PERM_STATUS ? "allow-status" : "allow-admin",
                            s->cfg->path);
    if (p11psk_op_validate(op, m, why, sizeof(why)) != P11PSK_FIELD_OK)
        return outcome_fail(o, P11PSK_ST_BAD_REQUEST, "%s", why);
    return handlers_for(row)(s, c, m, resp, o);
}

/* The audit line: one per request, logfmt key=value fields; result is one word and, on
 * failure, reason= says why. Everything the token or the peer controls (exe, key labels,
 * the reason, which may quote a label) goes through p11psk_log_value, so that no value can
 * end the line or fake a field. Never key bytes. */
static void log_outcome(const conn *c, const char *exe_now, const outcome *o, long long us)
{
    int ok = o->err.status == P11PSK_ST_OK;
    char result[48], exe[P11PSK_LOG_VALUE_CAP(64)], exe0[P11PSK_LOG_VALUE_CAP(64)],
        key[P11PSK_LOG_VALUE_CAP(64)], reason[P11PSK_LOG_VALUE_CAP(160)];

    stats_result_word(o->err.status, result, sizeof(result));
    p11psk_log_value(exe, sizeof(exe), exe_now);
    p11psk_log_value(exe0, sizeof(exe0), c->exe);
    p11psk_log_value(key, sizeof(key), o->ident[0] ? o->ident : "-");
    p11psk_log_value(reason, sizeof(reason), ok ? "" : o->err.msg);
    p11psk_log(ok ? P11PSK_LOG_INFO : P11PSK_LOG_WARN,
               "pid=%ld uid=%lu gid=%lu exe=%s%s%s op=%s key=%s result=%s%s%s%s%s latency=%lldus",
               (long)c->cred.pid, (unsigned long)c->cred.uid, (unsigned long)c->cred.gid, exe,
               strcmp(exe_now, c->exe) != 0 ? " exe_at_connect=" : "",
               strcmp(exe_now, c->exe) != 0 ? exe0 : "", p11psk_op_str(o->op), key, result,
               ok ? "" : " reason=", ok ? "" : reason, o->step ? " step=" : "",
               o->step ? p11psk_ladder_step_str(o->step) : "", us);
}

void dispatch_respond(server *s, conn *c, int header_rc)
{
    long long t0 = p11psk_mono_us(), us;
    char exe_now[sizeof(c->exe)];
    p11psk_msg m;
    outcome o;
    int rc, st;

    memset(&o, 0, sizeof(o));
    o.op = -1;
    /* The binary the peer runs now, for this request's audit line (conn.c). */
    conn_peer_exe(c, exe_now, sizeof(exe_now));
    p11psk_frame_start(&c->out, P11PSK_ST_OK);
    if (header_rc != P11PSK_WIRE_OK) {
        st = outcome_fail(&o, P11PSK_ST_BAD_REQUEST, "bad frame header: %s",
                          p11psk_wire_strerror(header_rc));
    } else if ((rc = p11psk_msg_parse(c->in + P11PSK_WIRE_HDR, c->need - P11PSK_WIRE_HDR, &m)) !=
               P11PSK_WIRE_OK) {
        st = outcome_fail(&o, P11PSK_ST_BAD_REQUEST, "malformed request: %s",
                          p11psk_wire_strerror(rc));
    } else if (o.op = m.code, !p11psk_ratelimit_take(&s->rate, s->cfg->policy.rate_limit,
                                                     c->cred.uid, (uint64_t)t0)) {
        st = outcome_fail(
            &o, P11PSK_ST_POLICY,
            "rate limit: uid %lu made more than %u requests per second (rate-limit in %s)",
            (unsigned long)c->cred.uid, s->cfg->policy.rate_limit, s->cfg->path);
    } else {
        st = serve(s, c, &m, &c->out, &o);
    }
    o.err.status = st;
    if (st != P11PSK_ST_OK) {
        p11psk_frame_cleanse(&c->out); /* drop any partial success fields */
        p11psk_frame_start(&c->out, (uint8_t)st);
        if (st == P11PSK_ST_TOKEN && o.err.ckr != CKR_OK)
            p11psk_frame_add_u32(&c->out, P11PSK_T_CKR, (uint32_t)o.err.ckr);
        p11psk_frame_add_str(&c->out, P11PSK_T_MSG, o.err.msg);
    }
    c->outlen = p11psk_frame_finish(&c->out);
    c->outoff = 0;
    if (c->outlen == 0) { /* cannot happen with bounded fields; never hang the peer */
        p11psk_frame_start(&c->out, P11PSK_ST_INTERNAL);
        c->outlen = p11psk_frame_finish(&c->out);
        o.close_after = 1;
    }
    c->closing = o.close_after;
    if (header_rc != P11PSK_WIRE_OK || c->need > c->inlen) { /* bad header: closing */
        OPENSSL_cleanse(c->in, sizeof(c->in));
        c->inlen = 0;
    } else { /* keep what followed the frame (a client that did not wait for the answer) */
        memmove(c->in, c->in + c->need, c->inlen - c->need);
        OPENSSL_cleanse(c->in + (c->inlen - c->need), c->need);
        c->inlen -= c->need;
    }
    c->need = 0;
    us = p11psk_mono_us() - t0;
    stats_count(s, &o, us);
    log_outcome(c, exe_now, &o, us);
}
