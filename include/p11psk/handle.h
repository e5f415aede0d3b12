/*
 * PSK handles: what applications hold instead of a raw PSK.
 *
 * Layout (n = 32 for PSK handles; n = hash length for TLS 1.3 early-secret handles):
 *   [0..5]    magic D1 'p' '1' '1' 'p' 'k' (leading non-ASCII byte: never an ASCII key)
 *   [6]       version (1)
 *   [7]       type (P11PSK_HT_*)
 *   [8]       digest (P11PSK_MD_*; 0 for PSK handles)
 *   [9]       key reference length (1..16)
 *   [10..25]  key reference: the key's CKA_ID, zero padded
 *   [26..n-7] zero padding
 *   [n-6..n)  check value: SHA-256 of bytes [0..n-6), first 6 bytes
 * Handles are not secrets: they name a key; access control decides who may use it.
 *
 * Applications may hand the handle to libssl in binary (openssl -psk, stunnel and mosquitto
 * decode hex) or as its 64 ASCII hex characters (applications that take a PSK as text
 * verbatim), so both forms are recognised wherever a handle is accepted.
 */
#ifndef P11PSK_HANDLE_H
#define P11PSK_HANDLE_H

#include <stddef.h>
#include <stdint.h>

#define P11PSK_HANDLE_LEN 32
#define P11PSK_HANDLE_MAX 48
#define P11PSK_HANDLE_VERSION 1
#define P11PSK_MAGIC_LEN 6
#define P11PSK_ID_MAX 16
#define P11PSK_CHECK_LEN 6
#define P11PSK_HANDLE_HEX_LEN (2 * P11PSK_HANDLE_LEN)

enum p11psk_handle_type {
    P11PSK_HT_PSK = 1,      /* a TLS pre-shared key in the token */
    P11PSK_HT_TLS13_ES = 2, /* TLS 1.3 early secret of a PSK, held by p11pskd */
};

enum p11psk_md {
    P11PSK_MD_NONE = 0,
    P11PSK_MD_SHA256 = 1,
    P11PSK_MD_SHA384 = 2,
};

typedef struct {
    uint8_t type;
    uint8_t digest;
    uint8_t idlen;
    uint8_t id[P11PSK_ID_MAX];
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
};

/* True if buf carries the magic, binary or hex; such a buffer must never be used as a key. */
int p11psk_handle_has_magic(const uint8_t *buf, size_t len);

/* Decodes buf (binary, or a PSK handle's 64 hex characters); on P11PSK_HANDLE_OK (0) fills
 * *h. P11PSK_HANDLE_NOT (1) is no failure: buf is ordinary key material. Negative: a bad
 * handle. Never reads past len. */
int p11psk_handle_decode(const uint8_t *buf, size_t len, p11psk_handle *h);

/* Encodes h into exactly outlen bytes (32..48). Returns P11PSK_HANDLE_OK (0), or a negative
 * P11PSK_HANDLE_* on bad input. */
int p11psk_handle_encode(const p11psk_handle *h, uint8_t *out, size_t outlen);

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
