/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Writes a TLS 1.3 external-PSK session (PEM) for `openssl s_client/s_server -psk_session`.
 * `-psk` always builds a SHA-256 session; this lets tests use TLS_AES_256_GCM_SHA384.
 * The key may be a raw PSK or a p11psk handle: the tool treats it as opaque bytes.
 */
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <string.h>

#include "p11psk/handle.h"

int main(int argc, char **argv)
{
    unsigned char key[512];
    const SSL_CIPHER *cipher = NULL;
    STACK_OF(SSL_CIPHER) * ciphers;
    SSL_SESSION *sess = NULL;
    SSL_CTX *ctx = NULL;
    SSL *ssl = NULL;
    BIO *out = NULL;
    long keylen;
    int i, ret = 1;

    if (argc != 4) {
        fprintf(stderr, "usage: %s TLS13-CIPHER KEY-HEX OUT.pem\n", argv[0]);
        return 2;
    }
    keylen = p11psk_hex_decode(argv[2], key, sizeof(key));
    if (keylen <= 0) {
        fprintf(stderr, "mksess: key is not hex of 1..512 bytes\n");
        return 2;
    }
    ctx = SSL_CTX_new(TLS_method());
    if (ctx == NULL || !SSL_CTX_set_ciphersuites(ctx, argv[1]) || (ssl = SSL_new(ctx)) == NULL)
        goto end;
    ciphers = SSL_get_ciphers(ssl);
    for (i = 0; i < sk_SSL_CIPHER_num(ciphers); i++)
        if (strcmp(SSL_CIPHER_get_name(sk_SSL_CIPHER_value(ciphers, i)), argv[1]) == 0)
            cipher = sk_SSL_CIPHER_value(ciphers, i);
    if (cipher == NULL) {
        fprintf(stderr, "mksess: unknown TLS 1.3 cipher suite %s\n", argv[1]);
        goto end;
    }
    sess = SSL_SESSION_new();
    if (sess == NULL || !SSL_SESSION_set1_master_key(sess, key, (size_t)keylen) ||
        !SSL_SESSION_set_cipher(sess, cipher) ||
        !SSL_SESSION_set_protocol_version(sess, TLS1_3_VERSION))
        goto end;
    out = BIO_new_file(argv[3], "w");
    if (out == NULL || !PEM_write_bio_SSL_SESSION(out, sess))
        goto end;
    ret = 0;
end:
    if (ret != 0 && ret != 2)
        ERR_print_errors_fp(stderr);
    OPENSSL_cleanse(key, sizeof(key));
    BIO_free(out);
    SSL_SESSION_free(sess);
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    return ret;
}
