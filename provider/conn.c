/*
 * The per-process connection to p11pskd, shared by every provider instance and thread, and
 * the mapping of daemon answers to OpenSSL errors.
 */
#include "prov.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "p11psk/client.h"

static struct {
    pthread_mutex_t lock; /* guards everything below */
    int refs;
    p11psk_conn conn;
    uint8_t resp[P11PSK_WIRE_MAX]; /* answers carry derived secrets: cleansed after use */
} svc = {.lock = PTHREAD_MUTEX_INITIALIZER};

void p11psk_svc_ref(const char *path, int timeout_ms)
{
    pthread_mutex_lock(&svc.lock);
    /* The first instance's configuration wins; later ones share its connection. */
    if (svc.refs++ == 0)
        p11psk_conn_init(&svc.conn, path, timeout_ms);
    pthread_mutex_unlock(&svc.lock);
}

void p11psk_svc_unref(void)
{
    pthread_mutex_lock(&svc.lock);
    if (svc.refs > 0 && --svc.refs == 0)
        p11psk_conn_close(&svc.conn);
    pthread_mutex_unlock(&svc.lock);
}

static int status_reason(int st)
{
    switch (st) {
    case P11PSK_ST_BAD_HANDLE:
        return P11PSK_R_BAD_HANDLE;
    case P11PSK_ST_NOT_FOUND:
        return P11PSK_R_KEY_NOT_FOUND;
    case P11PSK_ST_ACCESS_DENIED:
        return P11PSK_R_ACCESS_DENIED;
    case P11PSK_ST_TOKEN:
        return P11PSK_R_TOKEN_ERROR;
    case P11PSK_ST_NEED_READABLE:
        return P11PSK_R_KEY_NOT_READABLE;
    case P11PSK_ST_UNSUPPORTED:
        return P11PSK_R_UNSUPPORTED;
    case P11PSK_ST_POLICY:
        return P11PSK_R_POLICY;
    case P11PSK_ST_UNAVAILABLE:
        return P11PSK_R_TOKEN_UNAVAILABLE;
    case P11PSK_ST_INTERNAL:
        return P11PSK_R_INTERNAL;
    }
    /* BAD_REQUEST means we sent something the daemon does not understand. */
    return P11PSK_R_PROTOCOL_ERROR;
}

int p11psk_svc_call(const P11PSK_PROV_CTX *pc, p11psk_frame *req, int outtag, uint8_t *out,
                    size_t outlen)
{
    char path[sizeof(svc.conn.path)], msg[512] = "";
    int rc, err = 0, timeout_ms, ok = 0, bad_out = 0, has_ckr = 0, st = -1;
    uint8_t op = req->buf[P11PSK_WIRE_HDR + 1];
    uint32_t ckr = 0;
    p11psk_msg m;

    if (pc->config_error[0] != '\0') {
        p11psk_frame_cleanse(req);
        P11PSK_RAISE(pc, P11PSK_R_BAD_CONFIG, "%s", pc->config_error);
        return 0;
    }
    if (p11psk_frame_finish(req) == 0) {
        p11psk_frame_cleanse(req);
        P11PSK_RAISE(pc, P11PSK_R_INTERNAL, "%s request too large", p11psk_op_str(op));
        return 0;
    }

    pthread_mutex_lock(&svc.lock);
    rc = p11psk_conn_call(&svc.conn, req, svc.resp, &m, &err);
    memcpy(path, svc.conn.path, sizeof(path));
    timeout_ms = svc.conn.timeout_ms;
    if (rc == P11PSK_CALL_OK)
        st = m.code;
    if (st == P11PSK_ST_OK) {
        const p11psk_field *f = &m.f[outtag];

        if (f->present && f->len == outlen) {
            memcpy(out, f->p, outlen);
            ok = 1;
        } else {
            bad_out = 1;
        }
    } else if (rc == P11PSK_CALL_OK) {
        /* Error answers carry text for the operator, never key bytes. */
        p11psk_msg_str(&m, P11PSK_T_MSG, msg, sizeof(msg));
        has_ckr = p11psk_msg_u32(&m, P11PSK_T_CKR, &ckr);
    }
    OPENSSL_cleanse(svc.resp, sizeof(svc.resp));
    OPENSSL_cleanse(&m, sizeof(m));
    pthread_mutex_unlock(&svc.lock);
    p11psk_frame_cleanse(req);

    if (ok) {
        p11psk_debug("%s: ok", p11psk_op_str(op));
        return 1;
    }
    switch (rc) {
    case P11PSK_CALL_OK:
        break;
    case P11PSK_CALL_UNREACHABLE:
        P11PSK_RAISE(pc, P11PSK_R_SERVICE_UNREACHABLE, "at %s: %s", path, strerror(err));
        return 0;
    case P11PSK_CALL_TIMEOUT:
        P11PSK_RAISE(pc, P11PSK_R_SERVICE_TIMEOUT, "after %d ms at %s", timeout_ms, path);
        return 0;
    case P11PSK_CALL_IO:
        P11PSK_RAISE(pc, P11PSK_R_CONNECTION_LOST, "at %s during %s: %s", path, p11psk_op_str(op),
                     strerror(err));
        return 0;
    default:
        P11PSK_RAISE(pc, P11PSK_R_PROTOCOL_ERROR, "malformed answer to %s from %s",
                     p11psk_op_str(op), path);
        return 0;
    }
    if (bad_out) {
        P11PSK_RAISE(pc, P11PSK_R_PROTOCOL_ERROR, "answer to %s from %s lacks a %zu-byte result",
                     p11psk_op_str(op), path, outlen);
        return 0;
    }
    if (msg[0] == '\0' && has_ckr)
        snprintf(msg, sizeof(msg), "CKR 0x%08lx", (unsigned long)ckr);
    if (msg[0] == '\0')
        snprintf(msg, sizeof(msg), "%s: %s", p11psk_op_str(op), p11psk_status_str(st));
    P11PSK_RAISE(pc, status_reason(st), "%s", msg);
    return 0;
}
