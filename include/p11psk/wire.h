/* SPDX-License-Identifier: Apache-2.0 */
/*
 * p11pskd wire protocol: unix stream socket, one request then one response, repeated.
 *
 * Frame:  u32 body length (big endian, 2..P11PSK_WIRE_MAX) ‖ body
 * Body:   u8 protocol version (P11PSK_WIRE_VERSION) ‖ u8 code ‖ fields
 * Field:  u8 tag ‖ u16 length ‖ value        (each tag at most once, no unknown tags)
 * The code is a P11PSK_OP_* in requests and a P11PSK_ST_* in responses.
 *
 * The operations, their fields, bounds, permissions and answers: the table in
 * include/p11psk/ops.h (rows in common/ops.c).
 * Error responses carry MSG (text for the operator, never key bytes) and CKR when a
 * PKCS#11 call failed.
 *
 * Return values (docs/conventions.md): functions here and in common/ return 0 on success
 * and a negative code on failure; predicates (*_is_*, *_has_*) return 1/0; sizes are 0 when
 * nothing was produced. Only code called by OpenSSL uses OpenSSL's 1 = success.
 */
#ifndef P11PSK_WIRE_H
#define P11PSK_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "p11psk/buf.h"

#define P11PSK_WIRE_VERSION 1
#define P11PSK_WIRE_HDR 4
#define P11PSK_WIRE_MAX 8192     /* largest body accepted by either side */
#define P11PSK_WIRE_OUT_MAX 1024 /* largest OUTLEN a request may ask for */

enum p11psk_op {
    P11PSK_OP_PING = 0x01,
    P11PSK_OP_STATUS = 0x02, /* status permission (allow-status / allow-admin) */
    P11PSK_OP_FLUSH = 0x03,  /* admin permission */
    /* The answer passes the key generation page (SCM_RIGHTS). */
    P11PSK_OP_GEN_PAGE = 0x04,
    P11PSK_OP_TLS13_EARLY = 0x10,
    P11PSK_OP_TLS13_EXPAND = 0x11,
    P11PSK_OP_TLS13_EXTRACT = 0x12,
    P11PSK_OP_TLS12_PRF = 0x20,
};

enum p11psk_status {
    P11PSK_ST_OK = 0,
    P11PSK_ST_BAD_REQUEST = 1,   /* malformed or unsupported request */
    P11PSK_ST_BAD_HANDLE = 2,    /* handle fails check, or wrong handle type */
    P11PSK_ST_NOT_FOUND = 3,     /* no key with the handle's CKA_ID */
    P11PSK_ST_ACCESS_DENIED = 4, /* ACL refused this peer */
    P11PSK_ST_TOKEN = 5,         /* a PKCS#11 call failed; CKR field set */
    P11PSK_ST_NEED_READABLE = 6, /* derivation needs the key value, key is sensitive */
    P11PSK_ST_UNSUPPORTED = 7,   /* digest, mode or label not supported */
    P11PSK_ST_POLICY = 8,        /* refused by daemon policy */
    P11PSK_ST_UNAVAILABLE = 9,   /* token not available right now */
    P11PSK_ST_INTERNAL = 10,
    P11PSK_ST_MAX_
};

enum p11psk_tag {
    P11PSK_T_DIGEST = 1, /* u8 P11PSK_MD_* */
    P11PSK_T_HANDLE = 2,
    P11PSK_T_PREFIX = 3,
    P11PSK_T_LABEL = 4,
    P11PSK_T_DATA = 5,
    P11PSK_T_IKM = 6,
    P11PSK_T_OTHER = 7,
    P11PSK_T_SEED = 8,
    P11PSK_T_OUTLEN = 9, /* u16 */
    P11PSK_T_OUT = 10,
    P11PSK_T_CKR = 11, /* u32 */
    P11PSK_T_MSG = 12, /* text, not NUL terminated */
    P11PSK_T_INFO = 13,
    P11PSK_T_MAX_
};

typedef struct {
    const uint8_t *p;
    uint16_t len;
    uint8_t present;
} p11psk_field;

/* A parsed body. Field pointers point into the parsed buffer. */
typedef struct {
    uint8_t version;
    uint8_t code;
    p11psk_field f[P11PSK_T_MAX_];
} p11psk_msg;

/* A frame under construction, header included. May hold secrets: cleanse when done. */
typedef struct {
    uint8_t buf[P11PSK_WIRE_HDR + P11PSK_WIRE_MAX];
    p11psk_wbuf w;
} p11psk_frame;

enum p11psk_wire_rc {
    P11PSK_WIRE_OK = 0,
    P11PSK_WIRE_TRUNCATED = -1,
    P11PSK_WIRE_TOO_LARGE = -2,
    P11PSK_WIRE_BAD_VERSION = -3,
    P11PSK_WIRE_BAD_TAG = -4,
    P11PSK_WIRE_DUPLICATE = -5,
    P11PSK_WIRE_NO_FIELD = -6, /* typed getter: field absent or of another size */
};

void p11psk_frame_start(p11psk_frame *fr, uint8_t code);
void p11psk_frame_add(p11psk_frame *fr, uint8_t tag, const void *p, size_t len);
void p11psk_frame_add_u8(p11psk_frame *fr, uint8_t tag, uint8_t v);
void p11psk_frame_add_u16(p11psk_frame *fr, uint8_t tag, uint16_t v);
void p11psk_frame_add_u32(p11psk_frame *fr, uint8_t tag, uint32_t v);
void p11psk_frame_add_str(p11psk_frame *fr, uint8_t tag, const char *s);
/* Writes the length header. Returns the whole frame size, or 0 if anything overflowed. */
size_t p11psk_frame_finish(p11psk_frame *fr);
void p11psk_frame_cleanse(p11psk_frame *fr);

/* Reads a 4-byte header. Returns P11PSK_WIRE_OK and *bodylen, or TOO_LARGE/TRUNCATED. */
int p11psk_wire_header(const uint8_t *hdr, size_t *bodylen);
/* Parses a body. The result points into body. */
int p11psk_msg_parse(const uint8_t *body, size_t len, p11psk_msg *m);
const char *p11psk_wire_strerror(int rc);

/* Typed field getters: P11PSK_WIRE_OK and *v if present with the right size, else
 * P11PSK_WIRE_NO_FIELD (*v untouched). */
int p11psk_msg_u8(const p11psk_msg *m, int tag, uint8_t *v);
int p11psk_msg_u16(const p11psk_msg *m, int tag, uint16_t *v);
int p11psk_msg_u32(const p11psk_msg *m, int tag, uint32_t *v);
/* Copies a text field into out (NUL terminated, truncated to cap-1, non-printables as '?'). */
void p11psk_msg_str(const p11psk_msg *m, int tag, char *out, size_t cap);

const char *p11psk_status_str(int st);
/* An operation's name from the table in ops.h ("unknown" for other codes). */
const char *p11psk_op_str(int op);

#endif
