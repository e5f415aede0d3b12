/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Token-first key derivations. The PSK stays in the token whenever the math allows:
 *   TLS 1.3 early secret = HMAC(zeros, PSK): the token hashes ipad ‖ PSK (C_DigestKey),
 *   software does the outer hash. TLS 1.2 PRF: when the premaster is longer than the hash
 *   block, HMAC keys with H(premaster), which the token computes because the PSK ends the
 *   premaster. Only otherwise is the value read, and only from readable keys.
 * OpenSSL work runs in a private OSSL_LIB_CTX with the default provider only, so a global
 * openssl.cnf that loads p11psk itself can never loop back into the daemon.
 */
#ifndef P11PSK_KEYSVC_LADDER_H
#define P11PSK_KEYSVC_LADDER_H

#include <stddef.h>
#include <stdint.h>

#include "cache.h"
#include "token.h"

/* Which rung of the ladder produced a result (logs and tests). */
enum p11psk_ladder_step {
    P11PSK_STEP_NONE = 0,
    P11PSK_STEP_TOKEN = 1, /* token digested the key (C_DigestKey) */
    P11PSK_STEP_VALUE = 2, /* key value read from a readable key, computed in software */
    P11PSK_STEP_CACHE = 3, /* PSK-only value from p11pskd's cache (see cache.h) */
};

typedef struct p11psk_ladder p11psk_ladder;

/* Private library context + fetched algorithms. NULL on failure. */
p11psk_ladder *p11psk_ladder_new(void);
void p11psk_ladder_free(p11psk_ladder *lad);
/* Values that depend on the PSK alone come from / go to cache (NULL: none). */
void p11psk_ladder_set_cache(p11psk_ladder *lad, p11psk_cache *cache);
const char *p11psk_ladder_step_str(int step);

/* TLS 1.3 early secret HKDF-Extract(zeros, PSK) into es_out (hash length). */
int p11psk_ladder_tls13_early(p11psk_ladder *lad, p11psk_token *tok, const p11psk_key *key, int md,
                              uint8_t *es_out, int *step, p11psk_err *err);

/* HKDF-Expand-Label(ES, label, data, outlen) with the early secret of key. */
int p11psk_ladder_tls13_expand(p11psk_ladder *lad, p11psk_token *tok, const p11psk_key *key, int md,
                               const uint8_t *prefix, size_t prefixlen, const uint8_t *label,
                               size_t labellen, const uint8_t *data, size_t datalen, uint8_t *out,
                               size_t outlen, int *step, p11psk_err *err);

/* OpenSSL TLS13-KDF EXTRACT_ONLY with SALT = early secret of key, KEY = ikm (NULL: zeros);
 * out gets hash length bytes. */
int p11psk_ladder_tls13_extract(p11psk_ladder *lad, p11psk_token *tok, const p11psk_key *key,
                                int md, const uint8_t *prefix, size_t prefixlen,
                                const uint8_t *label, size_t labellen, const uint8_t *ikm,
                                size_t ikmlen, uint8_t *out, int *step, p11psk_err *err);

/* TLS 1.2 PRF over premaster = u16 n ‖ other' ‖ u16 L ‖ PSK, L = the key's real length and
 * other' = L zero bytes when other is all zero (plain PSK), else other. */
int p11psk_ladder_tls12_prf(p11psk_ladder *lad, p11psk_token *tok, const p11psk_key *key, int md,
                            const uint8_t *other, size_t otherlen, const uint8_t *seed,
                            size_t seedlen, uint8_t *out, size_t outlen, int *step,
                            p11psk_err *err);

/* Writes the premaster part before the PSK (u16 n ‖ other' ‖ u16 keylen) into out.
 * Returns its length, or 0 if it does not fit in cap. */
size_t p11psk_ladder_premaster_head(const uint8_t *other, size_t otherlen, size_t keylen,
                                    uint8_t *out, size_t cap);

/* Smallest PSK length for which the TLS 1.2 PRF needs no key value (other all zero: plain). */
size_t p11psk_ladder_tls12_min_len(int md, const uint8_t *other, size_t otherlen);

#endif
