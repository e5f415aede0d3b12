/* SPDX-License-Identifier: Apache-2.0 */
/* In-process TLS-PSK handshakes over a BIO pair: see hs.h. */
#include "hs.h"

#include <stdio.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>

#define HS_TLS12_DEFAULT "PSK-AES128-GCM-SHA256"
#define HS_TLS13_DEFAULT "TLS_AES_128_GCM_SHA256"
#define HS_MAX_ROUNDS 32 /* a PSK handshake needs 3; more means nobody makes progress */
#define HS_PROBE_LEN 24

struct p11psk_hs {
    p11psk_hs_config cfg;
    SSL_CTX *cctx;
    SSL_CTX *sctx;
};

static const p11psk_hs *hs_of(SSL *ssl)
{
    return SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
}

/* First TLS 1.3 suite the SSL would offer: the external PSK session's cipher. */
static const SSL_CIPHER *hs_tls13_cipher(SSL *ssl)
{
    STACK_OF(SSL_CIPHER) *ciphers = SSL_get_ciphers(ssl);
    int i;

    for (i = 0; i < sk_SSL_CIPHER_num(ciphers); i++) {
        const SSL_CIPHER *c = sk_SSL_CIPHER_value(ciphers, i);

        if ((SSL_CIPHER_get_protocol_id(c) & 0xff00) == 0x1300)
            return c;
    }
    return NULL;
}

/* An external PSK as libssl wants it for TLS 1.3: a session whose master key is the PSK. */
static SSL_SESSION *hs_psk_session(SSL *ssl, const unsigned char *psk, size_t psklen)
{
    const SSL_CIPHER *c = hs_tls13_cipher(ssl);
    SSL_SESSION *sess;

    if (c == NULL || (sess = SSL_SESSION_new()) == NULL)
        return NULL;
    if (!SSL_SESSION_set1_master_key(sess, psk, psklen) || !SSL_SESSION_set_cipher(sess, c) ||
        !SSL_SESSION_set_protocol_version(sess, TLS1_3_VERSION)) {
        SSL_SESSION_free(sess);
        return NULL;
    }
    return sess;
}

static int hs_use_session_cb(SSL *ssl, const EVP_MD *md, const unsigned char **id, size_t *idlen,
                             SSL_SESSION **sess)
{
    const p11psk_hs *hs = hs_of(ssl);
    SSL_SESSION *s = hs_psk_session(ssl, hs->cfg.client_psk, hs->cfg.client_psk_len);

    *sess = NULL;
    *id = NULL;
    *idlen = 0;
    if (s == NULL)
        return 0;
    /* Second call (after HelloRetryRequest): the PSK only fits the negotiated hash. */
    if (md != NULL && md != SSL_CIPHER_get_handshake_digest(SSL_SESSION_get0_cipher(s))) {
        SSL_SESSION_free(s);
        return 1;
    }
    *sess = s;
    *id = (const unsigned char *)hs->cfg.identity;
    *idlen = strlen(hs->cfg.identity);
    return 1;
}

static int hs_find_session_cb(SSL *ssl, const unsigned char *id, size_t idlen, SSL_SESSION **sess)
{
    const p11psk_hs *hs = hs_of(ssl);

    *sess = NULL;
    if (idlen != strlen(hs->cfg.identity) || memcmp(id, hs->cfg.identity, idlen) != 0)
        return 1; /* unknown identity: no PSK, the handshake fails */
    *sess = hs_psk_session(ssl, hs->cfg.server_psk, hs->cfg.server_psk_len);
    return *sess != NULL;
}

static unsigned int hs_client_cb(SSL *ssl, const char *hint, char *identity,
                                 unsigned int max_identity_len, unsigned char *psk,
                                 unsigned int max_psk_len)
{
    const p11psk_hs *hs = hs_of(ssl);
    size_t idlen = strlen(hs->cfg.identity);

    if (idlen + 1 > max_identity_len || hs->cfg.client_psk_len > max_psk_len)
        return 0;
    memcpy(identity, hs->cfg.identity, idlen + 1);
    memcpy(psk, hs->cfg.client_psk, hs->cfg.client_psk_len);
    return (unsigned int)hs->cfg.client_psk_len;
}

static unsigned int hs_server_cb(SSL *ssl, const char *identity, unsigned char *psk,
                                 unsigned int max_psk_len)
{
    const p11psk_hs *hs = hs_of(ssl);

    if (identity == NULL || strcmp(identity, hs->cfg.identity) != 0 ||
        hs->cfg.server_psk_len > max_psk_len)
        return 0;
    memcpy(psk, hs->cfg.server_psk, hs->cfg.server_psk_len);
    return (unsigned int)hs->cfg.server_psk_len;
}

/* "error:...:reason" plus the error's data (the provider's details), or fallback. */
static void hs_first_error(char *err, size_t errcap, const char *fallback)
{
    const char *data = NULL;
    unsigned long e;
    int flags = 0;
    size_t n;

    e = ERR_get_error_all(NULL, NULL, NULL, &data, &flags);
    if (e == 0) {
        snprintf(err, errcap, "%s", fallback);
        return;
    }
    ERR_error_string_n(e, err, errcap);
    n = strlen(err);
    if ((flags & ERR_TXT_STRING) && data != NULL && data[0] != '\0' && n < errcap)
        snprintf(err + n, errcap - n, ":%s", data);
}

static SSL_CTX *hs_ctx(const p11psk_hs_config *cfg, int server, char *err, size_t errcap)
{
    int v = cfg->tls13 ? TLS1_3_VERSION : TLS1_2_VERSION;
    OSSL_LIB_CTX *libctx = server && cfg->server_own_libctx ? cfg->server_libctx : cfg->libctx;
    SSL_CTX *ctx = SSL_CTX_new_ex(libctx, NULL, server ? TLS_server_method() : TLS_client_method());
    int ok;

    if (ctx == NULL) {
        hs_first_error(err, errcap, "SSL_CTX_new failed");
        return NULL;
    }
    ok = SSL_CTX_set_min_proto_version(ctx, v) && SSL_CTX_set_max_proto_version(ctx, v);
    if (ok && cfg->tls13)
        ok = SSL_CTX_set_ciphersuites(ctx, cfg->cipher != NULL ? cfg->cipher : HS_TLS13_DEFAULT);
    else if (ok)
        ok = SSL_CTX_set_cipher_list(ctx, cfg->cipher != NULL ? cfg->cipher : HS_TLS12_DEFAULT);
    if (!ok) {
        hs_first_error(err, errcap, "cannot set the protocol version or cipher");
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (server) {
        SSL_CTX_set_psk_server_callback(ctx, hs_server_cb);
        SSL_CTX_set_psk_find_session_callback(ctx, hs_find_session_cb);
        /* Tickets would add work that has nothing to do with the PSK. */
        SSL_CTX_set_num_tickets(ctx, 0);
    } else {
        SSL_CTX_set_psk_client_callback(ctx, hs_client_cb);
        SSL_CTX_set_psk_use_session_callback(ctx, hs_use_session_cb);
    }
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    return ctx;
}

p11psk_hs *p11psk_hs_new(const p11psk_hs_config *cfg, char *err, size_t errcap)
{
    p11psk_hs *hs;

    ERR_clear_error();
    if (cfg->client_psk_len == 0 || cfg->client_psk_len > P11PSK_HS_PSK_MAX ||
        cfg->server_psk_len == 0 || cfg->server_psk_len > P11PSK_HS_PSK_MAX) {
        snprintf(err, errcap, "PSKs must be 1..%d bytes", P11PSK_HS_PSK_MAX);
        return NULL;
    }
    if ((hs = OPENSSL_zalloc(sizeof(*hs))) == NULL) {
        snprintf(err, errcap, "out of memory");
        return NULL;
    }
    hs->cfg = *cfg;
    hs->cfg.identity[P11PSK_HS_IDENTITY_MAX] = '\0';
    if ((hs->cctx = hs_ctx(cfg, 0, err, errcap)) == NULL ||
        (hs->sctx = hs_ctx(cfg, 1, err, errcap)) == NULL) {
        p11psk_hs_free(hs);
        return NULL;
    }
    SSL_CTX_set_app_data(hs->cctx, hs);
    SSL_CTX_set_app_data(hs->sctx, hs);
    ERR_clear_error();
    return hs;
}

void p11psk_hs_free(p11psk_hs *hs)
{
    if (hs == NULL)
        return;
    SSL_CTX_free(hs->cctx);
    SSL_CTX_free(hs->sctx);
    OPENSSL_clear_free(hs, sizeof(*hs));
}

/* One step of one side: 1 done, 0 wants more, -1 failed. */
static int hs_step(SSL *ssl)
{
    int r = SSL_do_handshake(ssl);

    if (r == 1)
        return 1;
    switch (SSL_get_error(ssl, r)) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
        return 0;
    }
    return -1;
}

/* Sends a random probe from one side and checks that the other reads it back unchanged. */
static int hs_probe(SSL *from, SSL *to, const char *dir, char *err, size_t errcap)
{
    unsigned char sent[HS_PROBE_LEN], got[HS_PROBE_LEN + 1];
    int n;

    if (RAND_bytes(sent, sizeof(sent)) != 1 ||
        SSL_write(from, sent, sizeof(sent)) != sizeof(sent)) {
        hs_first_error(err, errcap, "SSL_write failed");
        return 0;
    }
    n = SSL_read(to, got, sizeof(got));
    if (n != (int)sizeof(sent)) {
        hs_first_error(err, errcap, "SSL_read failed");
        return 0;
    }
    if (memcmp(sent, got, sizeof(sent)) != 0) {
        snprintf(err, errcap, "%s data differs: the two sides derived different keys", dir);
        return 0;
    }
    return 1;
}

int p11psk_hs_run(p11psk_hs *hs, char *err, size_t errcap)
{
    SSL *c = NULL, *s = NULL;
    BIO *cb = NULL, *sb = NULL;
    int cdone = 0, sdone = 0, round, ok = 0;

    err[0] = '\0';
    ERR_clear_error();
    if ((c = SSL_new(hs->cctx)) == NULL || (s = SSL_new(hs->sctx)) == NULL ||
        !BIO_new_bio_pair(&cb, 0, &sb, 0)) {
        hs_first_error(err, errcap, "cannot make the SSL objects or BIO pair");
        goto end;
    }
    SSL_set_bio(c, cb, cb);
    SSL_set_bio(s, sb, sb);
    cb = sb = NULL;
    SSL_set_connect_state(c);
    SSL_set_accept_state(s);

    for (round = 0; round < HS_MAX_ROUNDS && !(cdone && sdone); round++) {
        if (!cdone && (cdone = hs_step(c)) < 0)
            break;
        if (!sdone && (sdone = hs_step(s)) < 0)
            break;
    }
    if (cdone != 1 || sdone != 1) {
        hs_first_error(err, errcap,
                       cdone < 0 || sdone < 0 ? "handshake failed" : "handshake stalled");
        goto end;
    }
    ok = hs_probe(c, s, "client to server", err, errcap) &&
         hs_probe(s, c, "server to client", err, errcap);
end:
    ERR_clear_error();
    SSL_free(c);
    SSL_free(s);
    BIO_free(cb);
    BIO_free(sb);
    return ok;
}
