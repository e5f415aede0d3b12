/* SPDX-License-Identifier: Apache-2.0 */
/*
 * In-process TLS-PSK handshakes: a client and a server SSL in one process, joined by a BIO
 * pair (memory), no sockets. Whatever OpenSSL configuration the process loaded applies to
 * both roles, so with the p11psk provider configured a PSK given as a handle goes through
 * p11pskd and a raw PSK through the default provider. Used by p11psk-hsloop and benchmarks.
 */
#ifndef P11PSK_HS_H
#define P11PSK_HS_H

#include <stddef.h>

#define P11PSK_HS_PSK_MAX 512 /* libssl's PSK_MAX_PSK_LEN */
#define P11PSK_HS_IDENTITY_MAX 128

typedef struct {
    int tls13;          /* 1: TLS 1.3 only, 0: TLS 1.2 only */
    const char *cipher; /* TLS 1.2 cipher list, TLS 1.3 ciphersuites; NULL: a SHA-256 default */
    char identity[P11PSK_HS_IDENTITY_MAX + 1];
    unsigned char client_psk[P11PSK_HS_PSK_MAX];
    size_t client_psk_len;
    unsigned char server_psk[P11PSK_HS_PSK_MAX];
    size_t server_psk_len;
    /* OSSL_LIB_CTX for both roles; NULL: the default one, which loaded OPENSSL_CONF. A
     * benchmark's raw baseline uses a context with the default provider only. */
    struct ossl_lib_ctx_st *libctx;
    /* With server_own_libctx set, the server uses server_libctx instead (NULL: the default
     * one): a benchmark puts the raw-key peer outside the provider, as on another host. */
    int server_own_libctx;
    struct ossl_lib_ctx_st *server_libctx;
} p11psk_hs_config;

/* The two SSL_CTXs; safe to share between threads once made. */
typedef struct p11psk_hs p11psk_hs;

/*
 * Makes the contexts. cfg is copied (PSKs included: p11psk_hs_free cleanses them). Returns
 * NULL with a reason in err on failure.
 */
p11psk_hs *p11psk_hs_new(const p11psk_hs_config *cfg, char *err, size_t errcap);
void p11psk_hs_free(p11psk_hs *hs);

/*
 * One full handshake, then a few bytes each way through the new connection to prove both
 * sides derived the same keys. Returns 1, or 0 with the first OpenSSL error (or what went
 * wrong) in err. Clears and leaves the calling thread's error queue empty.
 */
int p11psk_hs_run(p11psk_hs *hs, char *err, size_t errcap);

#endif
