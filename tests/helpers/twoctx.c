/* SPDX-License-Identifier: Apache-2.0 */
/*
 * p11psk-twoctx CONF1 HANDLE1 RAW1 CONF2 HANDLE2 RAW2 ROUNDS: one process, two OSSL_LIB_CTXs,
 * each loading its own openssl.cnf (each naming its own p11psk-socket), for
 * tests/integration/two_libctx.sh. ROUNDS times, alternately in each context, a TLS 1.3
 * handshake over a BIO pair: the server on HANDLEn (hex), the client on the raw key RAWn
 * (hex), with data both ways. Then the crossed case: context 1 given HANDLE2 must fail, as
 * its daemon's token does not hold that key. Prints one line per handshake ("ctxN round R
 * ok" or "ctxN round R failed: ERROR", "cross failed: ERROR") and exits 0 when every
 * handshake of its own context worked and the crossed one failed, 1 otherwise, 2 on usage.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/provider.h>

#include "hs.h"

#define TWOCTX_ROUNDS_MAX 100

static int hex_decode(const char *hex, unsigned char *out, size_t cap, size_t *len)
{
    long n = 0;
    unsigned char *b = OPENSSL_hexstr2buf(hex, &n);

    if (b == NULL || n <= 0 || (size_t)n > cap) {
        OPENSSL_free(b);
        return -1;
    }
    memcpy(out, b, (size_t)n);
    *len = (size_t)n;
    OPENSSL_clear_free(b, (size_t)n);
    return 0;
}

/* A handshake in libctx with the server on handle and the client on raw. 0 when it worked. */
static int handshake(OSSL_LIB_CTX *libctx, const char *handle, const char *raw, char *err,
                     size_t errcap)
{
    p11psk_hs_config cfg;
    p11psk_hs *hs;
    int ok;

    memset(&cfg, 0, sizeof(cfg));
    cfg.tls13 = 1;
    cfg.libctx = libctx;
    snprintf(cfg.identity, sizeof(cfg.identity), "twoctx");
    if (hex_decode(handle, cfg.server_psk, sizeof(cfg.server_psk), &cfg.server_psk_len) != 0 ||
        hex_decode(raw, cfg.client_psk, sizeof(cfg.client_psk), &cfg.client_psk_len) != 0) {
        snprintf(err, errcap, "bad hex");
        OPENSSL_cleanse(&cfg, sizeof(cfg));
        return -1;
    }
    hs = p11psk_hs_new(&cfg, err, errcap);
    OPENSSL_cleanse(&cfg, sizeof(cfg));
    if (hs == NULL)
        return -1;
    ok = p11psk_hs_run(hs, err, errcap);
    p11psk_hs_free(hs);
    return ok ? 0 : -1;
}

int main(int argc, char **argv)
{
    OSSL_LIB_CTX *ctx[2] = {NULL, NULL};
    int rounds, r, i, bad = 0;
    char err[512];

    if (argc != 8 || (rounds = atoi(argv[7])) <= 0 || rounds > TWOCTX_ROUNDS_MAX) {
        fprintf(stderr, "usage: p11psk-twoctx CONF1 HANDLE1 RAW1 CONF2 HANDLE2 RAW2 ROUNDS\n");
        return 2;
    }
    for (i = 0; i < 2; i++) {
        const char *conf = argv[1 + 3 * i];

        if ((ctx[i] = OSSL_LIB_CTX_new()) == NULL || !OSSL_LIB_CTX_load_config(ctx[i], conf) ||
            !OSSL_PROVIDER_available(ctx[i], "p11psk")) {
            fprintf(stderr, "p11psk-twoctx: context %d: cannot load %s with p11psk\n", i + 1, conf);
            bad = 2;
            goto done;
        }
    }
    for (r = 0; r < rounds; r++) {
        for (i = 0; i < 2; i++) {
            if (handshake(ctx[i], argv[2 + 3 * i], argv[3 + 3 * i], err, sizeof(err)) == 0) {
                printf("ctx%d round %d ok\n", i + 1, r);
            } else {
                printf("ctx%d round %d failed: %s\n", i + 1, r, err);
                bad = 1;
            }
        }
    }
    /* Context 1 with context 2's key: its daemon must be asked, and must not know it. */
    if (handshake(ctx[0], argv[5], argv[6], err, sizeof(err)) == 0) {
        printf("cross ok: context 1 reached context 2's key\n");
        bad = 1;
    } else {
        printf("cross failed: %s\n", err);
    }
done:
    for (i = 0; i < 2; i++)
        OSSL_LIB_CTX_free(ctx[i]);
    return bad;
}
