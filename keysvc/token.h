/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The PKCS#11 token holding the PSKs: module loading through p11-kit, slot choice, login,
 * key lookup (cached by CKA_ID for the daemon, by CKA_LABEL for the CLI), token-side digests.
 * Functions report through p11psk_err: a P11PSK_ST_* status, the CKR when PKCS#11 failed,
 * and a message for the operator (never key bytes).
 */
#ifndef P11PSK_KEYSVC_TOKEN_H
#define P11PSK_KEYSVC_TOKEN_H

#include <p11-kit/pkcs11.h>
#include <stddef.h>
#include <stdint.h>

#include "p11psk/handle.h"
#include "p11psk/wire.h" /* P11PSK_ST_* statuses */

#define P11PSK_KEY_ID_MAX 64     /* longest CKA_ID we keep (handles take 1..16 bytes) */
#define P11PSK_KEY_LABEL_MAX 256 /* longest CKA_LABEL we keep, NUL included */
#define P11PSK_KEY_LEN_MIN 16
#define P11PSK_KEY_LEN_MAX 512
#define P11PSK_KEY_FP_LEN 32 /* SHA-256 fingerprint of a key's value, computed in the token */

typedef struct {
    int status; /* P11PSK_ST_* */
    CK_RV ckr;  /* set when status == P11PSK_ST_TOKEN */
    char msg[320];
} p11psk_err;

typedef struct {
    CK_OBJECT_HANDLE obj;
    CK_KEY_TYPE type; /* CKK_GENERIC_SECRET or CKK_AES */
    size_t len;       /* CKA_VALUE_LEN */
    int readable;     /* CKA_SENSITIVE false and CKA_EXTRACTABLE true */
    size_t idlen;     /* may exceed P11PSK_ID_MAX: such a key gets no handle */
    uint8_t id[P11PSK_KEY_ID_MAX];
    char label[P11PSK_KEY_LABEL_MAX];
    /* CKA_END_DATE: "YYYY-MM-DD", or "" when the key never expires (no or empty date) */
    char not_after[11];
    long long expires_at; /* first second (UTC) after not_after; 0: never */
    int fp_ok;            /* fp holds the value's fingerprint (daemon lookups only) */
    uint8_t fp[P11PSK_KEY_FP_LEN];
} p11psk_key;

typedef struct {
    const char *module;         /* path (contains '/' or ends in ".so") or p11-kit module name */
    const char *token_uri;      /* "pkcs11:token=..." or NULL: the only initialised token */
    const char *pin_source;     /* "file:PATH" / "/PATH", or NULL */
    const char *pin;            /* direct PIN (tests only; the daemon and CLI use pin_source) */
    const char *server_address; /* P11_KIT_SERVER_ADDRESS for p11-kit-client.so, or NULL */
    int rw;                     /* open read/write sessions */
    size_t sessions;            /* session pool size (0: 4); one per worker thread is enough */
} p11psk_token_params;

/* Health, for status reports. */
typedef struct {
    int available; /* 0 while the module awaits reinitialisation after a fault */
    int logged_in;
    size_t sessions;
    unsigned long recoveries;
    char label[33];
    char model[17];
    char down_why[160];
} p11psk_token_info;

typedef struct p11psk_token p11psk_token;

struct p11psk_config;
/* module, token, pin-source and p11-kit server of a config, the rest zero. */
void p11psk_token_params_from_config(p11psk_token_params *prm, const struct p11psk_config *cfg);

/*
 * Thread-safe: operations borrow a session from a bounded pool (never shared by two threads
 * at once). A lost session or login is redone and the operation retried once; after a
 * device fault (CKR_DEVICE_REMOVED, CKR_TOKEN_NOT_PRESENT, ...) the module is finalized and
 * reinitialised, with backoff, and operations fail fast with P11PSK_ST_UNAVAILABLE meanwhile.
 */

/* Returns P11PSK_ST_OK and *out, or an error status with err->msg naming the fix. */
int p11psk_token_open(const p11psk_token_params *prm, p11psk_token **out, p11psk_err *err);
/* Logs out, closes the session and finalizes the module. NULL is fine. */
void p11psk_token_close(p11psk_token *tok);

const char *p11psk_token_label(const p11psk_token *tok);
void p11psk_token_state(p11psk_token *tok, p11psk_token_info *info);
const char *p11psk_token_module(const p11psk_token *tok);
CK_FUNCTION_LIST *p11psk_token_functions(const p11psk_token *tok);
/* The first session opened (single-threaded callers and tests only). */
CK_SESSION_HANDLE p11psk_token_session(const p11psk_token *tok);

/* Daemon lookup by CKA_ID through a hash table; a miss searches the token. An entry last
 * validated more than revalidate-ms ago is first checked against the token (object still
 * there with this CKA_ID; every revalidate-value-ms also its value fingerprint unchanged:
 * PKCS#11 does not let a secret key's CKA_VALUE change in place, only a handle reused by a
 * new object could hide a new value); what it finds gone or changed goes
 * through p11psk_keys_changed. key->fp is the fingerprint the answer may be cached under.
 * Returns P11PSK_ST_OK, P11PSK_ST_NOT_FOUND, P11PSK_ST_UNSUPPORTED (key type) or
 * P11PSK_ST_TOKEN. */
int p11psk_token_find_id(p11psk_token *tok, const uint8_t *id, size_t idlen, p11psk_key *key,
                         p11psk_err *err);
/* Fills the lookup cache with every key in the token (one scan); *count gets the number.
 * A lookup miss does the same at most every 10 s, so keys added later are found in bulk. */
int p11psk_token_prefetch(p11psk_token *tok, size_t *count, p11psk_err *err);
/* Drops a cached entry (call when the token said the object handle is invalid); id NULL:
 * every entry. */
void p11psk_token_forget(p11psk_token *tok, const uint8_t *id, size_t idlen);

/* 1 when key k is past its CKA_END_DATE at now (seconds since the epoch). */
int p11psk_key_expired(const p11psk_key *k, long long now);
/* Parses "YYYY-MM-DD" (a real calendar date) into a CK_DATE and the first second after
 * that day (UTC). Returns 0, or -1 for anything else. */
int p11psk_date_parse(const char *s, CK_DATE *d, long long *end);
/* Keys past their end date and keys expiring within days, among the keys the daemon's
 * lookup table holds (every key after a prefetch). */
void p11psk_token_expiry_counts(p11psk_token *tok, long long now, long long within_s,
                                size_t *expired, size_t *soon);

/* Keeps key's end date (NULL: none) in a mirror object for tokens that cannot return
 * CKA_END_DATE of a private key (SoftHSM 2.6: softhsm/SoftHSMv2#655): a private CKO_DATA
 * object labelled "p11psk-not-after/<CKA_ID hex>" holding "YYYYMMDD". Replaces any earlier
 * mirror for the CKA_ID; with d == NULL only removes it. */
int p11psk_token_mirror_end_date(p11psk_token *tok, const p11psk_key *key, const CK_DATE *d,
                                 p11psk_err *err);
/* How old a validation may be before a lookup repeats it (0: every lookup, value included;
 * default 1000), and how old the last check of the value (0: every validation; default
 * 60000). */
void p11psk_token_set_revalidate(p11psk_token *tok, unsigned ms, unsigned value_ms);

typedef struct {
    unsigned long revalidate_ms;
    unsigned long age_ms;        /* since the oldest fingerprinted entry was validated */
    unsigned long revalidations; /* checks against the token after the first fingerprint */
    unsigned long changes;       /* of those, keys found gone or with another value */
} p11psk_token_revalidate_stats;
void p11psk_token_revalidate_get(p11psk_token *tok, p11psk_token_revalidate_stats *st);

/* Every secret key (label == NULL) or those labelled label. *keys is malloc'd (free()).
 * Keys of unsupported types are skipped. Returns P11PSK_ST_OK or P11PSK_ST_TOKEN. */
int p11psk_token_list(p11psk_token *tok, const char *label, p11psk_key **keys, size_t *n,
                      p11psk_err *err);

typedef struct {
    const char *label;
    const uint8_t *id;
    size_t idlen;
    const uint8_t *value; /* NULL: generate value_len random bytes in the token */
    size_t value_len;
    int readable;             /* CKA_SENSITIVE false, CKA_EXTRACTABLE true */
    int session_only;         /* CKA_TOKEN false (tests) */
    const CK_DATE *not_after; /* CKA_END_DATE, or NULL: never expires */
} p11psk_new_key;

/* Creates a CKK_GENERIC_SECRET key (C_CreateObject or C_GenerateKey). */
int p11psk_token_create_key(p11psk_token *tok, const p11psk_new_key *nk, p11psk_key *key,
                            p11psk_err *err);
int p11psk_token_destroy_key(p11psk_token *tok, const p11psk_key *key, p11psk_err *err);
int p11psk_token_random(p11psk_token *tok, uint8_t *out, size_t len, p11psk_err *err);

/* out = H(prefix ‖ key value) computed by the token (C_DigestUpdate + C_DigestKey). */
int p11psk_token_digest_key(p11psk_token *tok, int md, const uint8_t *prefix, size_t prefixlen,
                            const p11psk_key *key, uint8_t *out, p11psk_err *err);
/* Reads the value of a readable key into OPENSSL_secure_malloc'd memory; free with
 * OPENSSL_secure_clear_free(*val, *len). P11PSK_ST_NEED_READABLE for sensitive keys. */
int p11psk_token_key_value(p11psk_token *tok, const p11psk_key *key, uint8_t **val, size_t *len,
                           p11psk_err *err);

/* True if rv says the PIN itself is bad (incorrect, locked, expired, invalid, wrong length):
 * trying it again would only count towards locking the token. */
int p11psk_ckr_pin_refused(CK_RV rv);
/* SIGHUP: after the token refused the PIN, allows one login attempt again (and an immediate
 * recovery try), whether or not the PIN file changed. */
void p11psk_token_pin_retry(p11psk_token *tok);

/* True if rv means "this object handle is stale": drop the cache entry and look again. */
int p11psk_ckr_stale_handle(CK_RV rv);
/* "CKR_KEY_INDIGESTIBLE", or "CKR_0x..." for unknown values (static buffer for those). */
const char *p11psk_ckr_name(CK_RV rv);

int p11psk_err_set(p11psk_err *err, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* status TOKEN, ckr rv, msg "CKR_X in C_Y". Returns P11PSK_ST_TOKEN. */
int p11psk_err_ckr(p11psk_err *err, CK_RV rv, const char *fn);

#endif
