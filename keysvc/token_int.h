/* SPDX-License-Identifier: Apache-2.0 */
/*
 * What the token_*.c files share: the token struct, the session pool they borrow from and
 * the object table. Private to the token layer; everyone else uses token.h.
 */
#ifndef P11PSK_KEYSVC_TOKEN_INT_H
#define P11PSK_KEYSVC_TOKEN_INT_H

#include <pthread.h>
#include <sys/stat.h>

#include "htable.h"
#include "p11call.h"
#include "token.h"

#define TOKEN_SESS_MAX 64

/*
 * Threads share one token. Every operation holds the module lock shared and borrows a
 * session from the pool, so no session is ever used by two threads at once; after a
 * device fault the module is reinitialised with the lock held exclusively.
 */
struct p11psk_token {
    CK_FUNCTION_LIST *fl;
    CK_FUNCTION_LIST **registry; /* set when the module came from the p11-kit registry */
    int initialized;
    CK_SLOT_ID slot;
    int logged_in;
    char label[33];
    char model[17];
    char module[256];
    /* what open was asked for, to reopen after a fault */
    char *uri;
    char *pin_source;
    char *pin; /* tests only, secure heap */
    int rw;
    /* After the token refused our PIN (wrong, locked, expired...), no login is tried again
     * until the PIN file changes or SIGHUP: a card or HSM locks after a few wrong tries. */
    pthread_mutex_t loginlock; /* one C_Login at a time, and the fields below */
    CK_RV pin_refused;         /* the refusal, or CKR_OK */
    struct stat pin_st;        /* the PIN file when it was refused */

    pthread_rwlock_t modlock;
    pthread_mutex_t lock; /* pool and fault state */
    pthread_cond_t cv;
    CK_SESSION_HANDLE idle[TOKEN_SESS_MAX];
    size_t nidle, nsess, max_sess;
    CK_SESSION_HANDLE first; /* for p11psk_token_session() */
    int down;                /* the module must be reinitialised before use */
    char down_why[160];
    long long retry_at_ms;
    long backoff_ms;
    unsigned long recoveries;

    pthread_rwlock_t cachelock;
    p11psk_htable ids;     /* CKA_ID -> key, see token_objects.c */
    unsigned long ids_gen; /* bumped whenever entries are dropped (under cachelock) */
    long long scanned_ms;  /* last full scan (under lock) */
    unsigned long scans;

    /* Re-validation of the table's entries (token_objects.c). vallock guards the entries'
     * validation state, taken inside cachelock (shared is enough). */
    pthread_mutex_t vallock;
    unsigned revalidate_ms, revalidate_value_ms;
    unsigned long revalidations, changes; /* under vallock */
};

/* ---- session pool (token_slot.c) ---- */

/* An operation on a borrowed session. It makes its PKCS#11 calls with P11CALL(call, ...),
 * so call holds the last one when it returns; that decides the session's fate. */
typedef int (*p11psk_sess_op)(p11psk_token *tok, CK_SESSION_HANDLE sess, void *arg,
                              p11psk_call *call, p11psk_err *err);

/* Borrows a session (modlock stays held shared until token_sess_put). */
int token_sess_get(p11psk_token *tok, CK_SESSION_HANDLE *sess, p11psk_err *err);
/* Gives it back; call, the last PKCS#11 result, says whether it (or the module) is good. */
void token_sess_put(p11psk_token *tok, CK_SESSION_HANDLE sess, const p11psk_call *call);
/* Runs op on a borrowed session. A lost session, a forgotten login or a device fault is
 * retried once, on a fresh session after recovery. */
int token_with_session(p11psk_token *tok, p11psk_sess_op op, void *arg, p11psk_err *err);
/* Logs in again after the token forgot our login; why goes to the log. Returns
 * P11PSK_ST_OK or the failure's status (a refused PIN fails fast, without C_Login). */
int token_relogin(p11psk_token *tok, const p11psk_err *why);
/* True when we hold a PIN but the token says our sessions are public (logged out). */
int token_login_lost(p11psk_token *tok);

/* ---- object table (token_objects.c) ---- */

int token_ids_init(p11psk_token *tok);
/* Drops every entry (handles may change when the module is reinitialised). */
void token_ids_clear(p11psk_token *tok);
void token_ids_fini(p11psk_token *tok);

/* Searches the token for the one key with this CKA_ID, bypassing the table. */
int token_search_id(p11psk_token *tok, const uint8_t *id, size_t idlen, p11psk_key *key,
                    p11psk_err *err);
/* Records a validated key (fp set) as its CKA_ID's entry, or with k NULL only releases the
 * claim of a validation that failed, so that the next request tries again. gen: the table
 * generation (ids_gen) the validation started in; when entries were dropped since (a FLUSH
 * from `p11psk rm` in between), what it saw may be gone already, so it is not recorded. */
void token_ids_validated(p11psk_token *tok, const uint8_t *id, size_t idlen, const p11psk_key *k,
                         unsigned long gen, int value_checked);

/* ---- re-validation (token_validate.c) ---- */

/* key->fp = the fingerprint of key's value, computed in the token (C_DigestKey), or in
 * software for a readable key the token will not digest. A destroyed object gives
 * P11PSK_ST_NOT_FOUND. A key with no fingerprint at all (not digestible, not readable) is
 * still served, never from the cache (fp_ok stays 0), and checked on every request. */
int token_fingerprint(p11psk_token *tok, p11psk_key *key, p11psk_err *err);
/* Confirms key (a copy of the table's entry, looked up in generation gen) against the
 * token: that its object still carries its CKA_ID, and with value also its fingerprint (an
 * object found gone is searched again, and the one found always fingerprinted). On success
 * key is what to serve. A key gone (or now ambiguous) or with another value goes to
 * p11psk_keys_changed. */
int token_revalidate(p11psk_token *tok, p11psk_key *key, unsigned long gen, int value,
                     p11psk_err *err);

int token_key_type_ok(CK_KEY_TYPE t);
/* Reads the attributes p11psk needs into k. Over-long ids keep their length but no bytes.
 * Returns the CKR (through call); err is filled on failure. */
CK_RV token_key_read(p11psk_token *tok, CK_SESSION_HANDLE sess, CK_OBJECT_HANDLE obj, p11psk_key *k,
                     p11psk_call *call, p11psk_err *err);

/* key_date.c: the key's validity from its CKA_END_DATE (len: the attribute's length). */
void token_key_set_end_date(p11psk_key *k, const CK_DATE *d, size_t len);
/* token_dates.c: reads k's CKA_END_DATE (or its mirror) into k->not_after/expires_at.
 * Failures are not the session's: they only make the date unreadable (deny by default). */
void token_key_read_end_date(p11psk_token *tok, CK_SESSION_HANDLE sess, p11psk_key *k);

#endif
