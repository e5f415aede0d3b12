/* SPDX-License-Identifier: Apache-2.0 */
/*
 * PSK handles: what applications hold instead of a raw PSK.
 *
 * PSK handle, version 2, 48 bytes:
 *   [0..5]    magic D1 'p' '1' '1' 'p' 'k' (leading non-ASCII byte: never an ASCII key)
 *   [6]       version (2)
 *   [7]       type (P11PSK_HT_PSK)
 *   [8]       digest (0)
 *   [9]       key reference length (1..16)
 *   [10..25]  key reference: the key's CKA_ID, zero padded
 *   [26..41]  tag: HMAC-SHA256(mk, "p11psk-handle" || idlen || id), first 16 bytes, where mk
 *             comes from the token's handle key (keysvc/handlekey.c). Without the token
 *             nobody can make a handle, so a handle is a capability.
 *   [42..47]  check value: SHA-256 of bytes [0..42), first 6 bytes (catches typos)
 *
 * TLS 1.3 early-secret (ES) placeholder, hash length n (32 or 48) bytes, made by the provider
 * and never sent to p11pskd:
 *   [0..5] magic, [6] version (2), [7] P11PSK_HT_TLS13_ES, [8] digest,
 *   [9..n)  ref: SHA-256(PSK handle || digest), first n-9 bytes, zero padded past 32 bytes.
 * The provider maps ref back to the PSK handle it came from (provider/keymap.c).
 *
 * Handles are not secrets in the cryptographic sense, but an application that does not load
 * the provider uses the handle bytes as its PSK: protect handle files like key files.
 *
 * Applications may hand the handle to libssl in binary (openssl -psk, stunnel and mosquitto
 * decode hex) or as its 96 ASCII hex characters (applications that take a PSK as text
 * verbatim), so both forms are recognised wherever a handle is accepted.
 */
#ifndef P11PSK_HANDLE_H
#define P11PSK_HANDLE_H

#include <stddef.h>
#include <stdint.h>

#define P11PSK_HANDLE_LEN 48
#define P11PSK_HANDLE_MAX 48
#define P11PSK_HANDLE_VERSION 2
#define P11PSK_MAGIC_LEN 6
#define P11PSK_ID_MAX 16
#define P11PSK_TAG_LEN 16
#define P11PSK_CHECK_LEN 6
#define P11PSK_ES_HEAD_LEN 9 /* magic, version, type, digest */
#define P11PSK_ES_REF_MAX (P11PSK_HANDLE_MAX - P11PSK_ES_HEAD_LEN) /* 39 for SHA-384 */
#define P11PSK_HANDLE_HEX_LEN (2 * P11PSK_HANDLE_LEN)
#define P11PSK_HANDLE_V1_LEN 32 /* version 1 PSK handles: recognised only to be refused */

enum p11psk_handle_type {
    P11PSK_HT_PSK = 1,      /* a TLS pre-shared key in the token */
    P11PSK_HT_TLS13_ES = 2, /* TLS 1.3 early-secret placeholder of a PSK handle */
};

enum p11psk_md {
    P11PSK_MD_NONE = 0,
    P11PSK_MD_SHA256 = 1,
    P11PSK_MD_SHA384 = 2,
};

typedef struct {
    uint8_t type;
    uint8_t digest;
    uint8_t idlen;                  /* PSK handles */
    uint8_t id[P11PSK_ID_MAX];      /* PSK handles */
    uint8_t tag[P11PSK_TAG_LEN];    /* PSK handles: checked only where the handle key is */
    uint8_t ref[P11PSK_ES_REF_MAX]; /* ES placeholders: md size - 9 bytes */
} p11psk_handle;

/* Result of decoding a buffer that might be a handle. */
enum p11psk_handle_rc {
    P11PSK_HANDLE_OK = 0,
    P11PSK_HANDLE_NOT = 1,         /* no magic: not a handle, treat as ordinary key material */
    P11PSK_HANDLE_BAD_LENGTH = -1, /* magic but wrong length */
    P11PSK_HANDLE_BAD_VERSION = -2,
    P11PSK_HANDLE_BAD_CHECK = -3,
    P11PSK_HANDLE_BAD_FIELD = -4, /* unknown type or digest, bad id length, non-zero padding */
    P11PSK_HANDLE_INTERNAL = -5,  /* encode: the check value's digest failed */
    P11PSK_HANDLE_V1 = -6,        /* a version 1 handle: re-issue it */
};

/* True if buf carries the magic, binary or hex; such a buffer must never be used as a key. */
int p11psk_handle_has_magic(const uint8_t *buf, size_t len);

/* Decodes buf (binary, or a PSK handle's 96 hex characters); on P11PSK_HANDLE_OK (0) fills
 * *h. P11PSK_HANDLE_NOT (1) is no failure: buf is ordinary key material. Negative: a bad
 * handle. Lays out bytes only: the tag is not verified here. Never reads past len. */
int p11psk_handle_decode(const uint8_t *buf, size_t len, p11psk_handle *h);

/* Encodes h into exactly outlen bytes: 48 for a PSK handle (id and tag from h), the digest's
 * size for an ES placeholder (ref from h). Returns P11PSK_HANDLE_OK (0), or a negative
 * P11PSK_HANDLE_* on bad input. */
int p11psk_handle_encode(const p11psk_handle *h, uint8_t *out, size_t outlen);

/* The ES placeholder of PSK handle psk (48 binary bytes) for digest md into out (md size
 * bytes): 0, or a negative P11PSK_HANDLE_*. */
int p11psk_handle_es_make(const uint8_t psk[P11PSK_HANDLE_LEN], int md, uint8_t *out,
                          size_t outlen);

/* Human-readable reason for a decode result. */
const char *p11psk_handle_strerror(int rc);

/* Digest helpers: ids, OpenSSL names, sizes. */
int p11psk_md_from_name(const char *name); /* P11PSK_MD_NONE if unsupported */
const char *p11psk_md_name(int md);        /* "SHA256" / "SHA384" or NULL */
size_t p11psk_md_size(int md);             /* 32 / 48 or 0 */
size_t p11psk_md_block(int md);            /* 64 / 128 or 0 */

/* Hex: encode writes 2*len chars plus NUL (lower case). Decode accepts upper/lower case and
 * returns the byte count, or -1 on odd length, bad char or overflow. */
void p11psk_hex_encode(const uint8_t *in, size_t len, char *out);
long p11psk_hex_decode(const char *in, uint8_t *out, size_t outcap);

#endif
