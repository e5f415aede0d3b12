/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The token's handle key and the MAC key derived from it: what makes a PSK handle a
 * capability. The handle key is a secret key object in the token (label p11psk-handle-key,
 * CKA_ID "p11psk-hk", sensitive, never extractable); mk = HMAC-SHA256 by the token with it
 * over a fixed string, derived once per token open and kept in the secure heap. Handles are
 * then made and verified in-process (microseconds, no token call).
 */
#ifndef P11PSK_KEYSVC_HANDLEKEY_H
#define P11PSK_KEYSVC_HANDLEKEY_H

#include <stddef.h>
#include <stdint.h>

#include "p11psk/handle.h"
#include "token.h"

#define P11PSK_HK_LABEL "p11psk-handle-key"
#define P11PSK_HK_ID "p11psk-hk"
#define P11PSK_HK_IDLEN 9
#define P11PSK_MK_LEN 32

typedef struct p11psk_handlekey p11psk_handlekey;

/* An empty holder (no mk yet); NULL when out of memory. */
p11psk_handlekey *p11psk_handlekey_new(void);
/* Cleanses mk and frees. NULL is fine. */
void p11psk_handlekey_free(p11psk_handlekey *hk);

/* Finds the token's handle key and derives mk into hk. With create, a missing handle key is
 * generated first (on a read/write session of its own). When two processes create one at
 * the same time, both end up using the same one. P11PSK_ST_OK; P11PSK_ST_NOT_FOUND when
 * there is none and create is 0 (hk is then emptied); another status with err->msg. */
int p11psk_handlekey_load(p11psk_handlekey *hk, p11psk_token *tok, int create, p11psk_err *err);
/* Destroys every handle key in the token, generates a new one and derives mk from it: every
 * handle issued before is refused from then on. */
int p11psk_handlekey_reissue(p11psk_handlekey *hk, p11psk_token *tok, p11psk_err *err);
/* 1 if hk holds a mk. */
int p11psk_handlekey_ready(p11psk_handlekey *hk);

/* The binary PSK handle of CKA_ID id: 0, or -1 (no mk, the id does not fit a handle or is the
 * handle key's own). */
int p11psk_handlekey_make(p11psk_handlekey *hk, const uint8_t *id, size_t idlen,
                          uint8_t out[P11PSK_HANDLE_LEN]);
/* 0 if h is a PSK handle whose tag was made with hk's mk; -1 otherwise (also without a mk,
 * and for the handle key's own CKA_ID). Constant time in the tag. */
int p11psk_handlekey_verify(p11psk_handlekey *hk, const p11psk_handle *h);

/* 1 if the CKA_ID is the handle key's (never served as a PSK). */
int p11psk_handlekey_is_id(const uint8_t *id, size_t idlen);
/* 1 if k is the handle key (label and CKA_ID): never listed as a PSK. */
int p11psk_handlekey_is_key(const p11psk_key *k);

#endif
