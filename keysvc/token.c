#include "token.h"

#include <openssl/crypto.h>
#include <p11-kit/p11-kit.h>
#include <p11-kit/uri.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "log.h"
#include "p11psk/wire.h"

#define CACHE_BUCKETS 16384 /* power of two; chains stay short up to ~10^4 keys */
#define SESS_MAX 64
#define BACKOFF_MIN_MS 500
#define BACKOFF_MAX_MS 30000
#define RESCAN_MIN_MS 10000 /* a lookup miss rescans the whole token at most this often */

struct cache_ent {
    struct cache_ent *next;
    p11psk_key key;
    unsigned long scan; /* the full scan that wrote it (0: a single lookup) */
    int clash;          /* that scan saw this CKA_ID twice: never answered from here */
};

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

    pthread_rwlock_t modlock;
    pthread_mutex_t lock; /* pool and fault state */
    pthread_cond_t cv;
    CK_SESSION_HANDLE idle[SESS_MAX];
    size_t nidle, nsess, max_sess;
    CK_SESSION_HANDLE first; /* for p11psk_token_session() */
    int down;                /* the module must be reinitialised before use */
    char down_why[160];
    long long retry_at_ms;
    long backoff_ms;
    unsigned long recoveries;

    pthread_rwlock_t cachelock;
    struct cache_ent *cache[CACHE_BUCKETS];
    long long scanned_ms; /* last full scan (under lock) */
    unsigned long scans;
};

static long long mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void id_hex(const uint8_t *id, size_t idlen, char *out)
{
    p11psk_hex_encode(id, idlen < P11PSK_KEY_ID_MAX ? idlen : P11PSK_KEY_ID_MAX, out);
}

/* ---- module, slot, session ---- */

static int module_is_path(const char *m)
{
    size_t n = strlen(m);

    return strchr(m, '/') != NULL || (n > 3 && strcmp(m + n - 3, ".so") == 0);
}

static int module_load(p11psk_token *tok, const char *m, p11psk_err *err)
{
    CK_RV rv;
    size_t i, off = 0;
    char names[160] = "";

    snprintf(tok->module, sizeof(tok->module), "%s", m);
    if (module_is_path(m)) {
        tok->fl = p11_kit_module_load(m, 0);
        if (tok->fl == NULL)
            return p11psk_err_set(err, P11PSK_ST_UNAVAILABLE,
                                  "cannot load PKCS#11 module %s: %s; fix `module =` in the "
                                  "config",
                                  m, p11_kit_message() ? p11_kit_message() : "unknown error");
    } else {
        tok->registry = p11_kit_modules_load(NULL, 0);
        if (tok->registry == NULL)
            return p11psk_err_set(err, P11PSK_ST_UNAVAILABLE,
                                  "cannot load the p11-kit module registry: %s",
                                  p11_kit_message() ? p11_kit_message() : "unknown error");
        tok->fl = p11_kit_module_for_name(tok->registry, m);
        if (tok->fl == NULL) {
            for (i = 0; tok->registry[i] != NULL && off < sizeof(names) - 1; i++) {
                char *nm = p11_kit_module_get_name(tok->registry[i]);
                int w = snprintf(names + off, sizeof(names) - off, "%s%s", i ? ", " : "",
                                 nm ? nm : "?");

                free(nm);
                off += w > 0 ? (size_t)w : 0;
            }
            return p11psk_err_set(err, P11PSK_ST_UNAVAILABLE,
                                  "no p11-kit module named '%s' (registered: %s); set `module "
                                  "=` to a module path or one of those names",
                                  m, names[0] ? names : "none");
        }
    }
    rv = p11_kit_module_initialize(tok->fl);
    if (rv != CKR_OK) {
        p11psk_err_ckr(err, rv, "C_Initialize");
        snprintf(err->msg + strlen(err->msg), sizeof(err->msg) - strlen(err->msg), " (module %s)",
                 m);
        return P11PSK_ST_TOKEN;
    }
    tok->initialized = 1;
    return P11PSK_ST_OK;
}

static void token_label(const CK_TOKEN_INFO *ti, char out[33])
{
    size_t n = sizeof(ti->label);

    memcpy(out, ti->label, n);
    while (n > 0 && out[n - 1] == ' ')
        n--;
    out[n] = '\0';
}

static void trimmed(const CK_UTF8CHAR *p, size_t n, char *out)
{
    memcpy(out, p, n);
    while (n > 0 && out[n - 1] == ' ')
        n--;
    out[n] = '\0';
}

static int slot_choose(p11psk_token *tok, const char *uri_text, CK_TOKEN_INFO *chosen,
                       p11psk_err *err)
{
    P11KitUri *uri = NULL;
    CK_SLOT_ID *slots = NULL;
    CK_ULONG n = 0, i;
    CK_TOKEN_INFO ti;
    char labels[200] = "", lab[33];
    size_t off = 0, matches = 0, present = 0;
    CK_RV rv;
    int st = P11PSK_ST_OK;

    if (uri_text != NULL) {
        uri = p11_kit_uri_new();
        if (uri == NULL || p11_kit_uri_parse(uri_text, P11_KIT_URI_FOR_TOKEN, uri) != 0) {
            p11_kit_uri_free(uri);
            return p11psk_err_set(err, P11PSK_ST_INTERNAL, "bad token URI %s", uri_text);
        }
    }
    rv = tok->fl->C_GetSlotList(CK_TRUE, NULL, &n);
    if (rv == CKR_OK && n > 0) {
        slots = calloc(n, sizeof(*slots));
        rv = slots ? tok->fl->C_GetSlotList(CK_TRUE, slots, &n) : CKR_HOST_MEMORY;
    }
    if (rv != CKR_OK) {
        st = p11psk_err_ckr(err, rv, "C_GetSlotList");
        goto out;
    }
    for (i = 0; i < n; i++) {
        if (tok->fl->C_GetTokenInfo(slots[i], &ti) != CKR_OK || !(ti.flags & CKF_TOKEN_INITIALIZED))
            continue; /* SoftHSM always shows one empty slot */
        present++;
        token_label(&ti, lab);
        if (off < sizeof(labels) - 1) {
            int w = snprintf(labels + off, sizeof(labels) - off, "%s'%s'", off ? ", " : "", lab);

            off += w > 0 ? (size_t)w : 0;
        }
        if (uri != NULL && !p11_kit_uri_match_token_info(uri, &ti))
            continue;
        if (matches++ == 0) {
            tok->slot = slots[i];
            *chosen = ti;
            snprintf(tok->label, sizeof(tok->label), "%s", lab);
            trimmed(ti.model, sizeof(ti.model), tok->model);
        }
    }
    if (matches == 1)
        goto out;
    if (present == 0 && strstr(tok->module, "p11-kit-client") != NULL)
        st = p11psk_err_set(err, P11PSK_ST_UNAVAILABLE,
                            "module %s sees no token: the p11-kit server at %s is unreachable "
                            "or exports none; check p11-kit-server-address and the server",
                            tok->module,
                            getenv("P11_KIT_SERVER_ADDRESS") ? getenv("P11_KIT_SERVER_ADDRESS")
                                                             : "(P11_KIT_SERVER_ADDRESS unset)");
    else if (present == 0)
        st = p11psk_err_set(err, P11PSK_ST_UNAVAILABLE,
                            "no initialised token in module %s; create one, e.g. "
                            "softhsm2-util --init-token --free --label p11psk",
                            tok->module);
    else if (uri == NULL)
        st = p11psk_err_set(err, P11PSK_ST_UNAVAILABLE,
                            "%zu tokens present (%s); choose one with `token = "
                            "pkcs11:token=LABEL` in the config",
                            present, labels);
    else if (matches == 0)
        st = p11psk_err_set(err, P11PSK_ST_UNAVAILABLE,
                            "no token matches %s (present: %s); fix `token =` in the config",
                            uri_text, labels);
    else
        st = p11psk_err_set(err, P11PSK_ST_UNAVAILABLE,
                            "%zu tokens match %s (present: %s); make the URI more specific, "
                            "e.g. add ;serial=...",
                            matches, uri_text, labels);
out:
    free(slots);
    p11_kit_uri_free(uri);
    return st;
}

/* The PIN is read from its source for each login and cleansed right after. */
static int token_login(p11psk_token *tok, CK_SESSION_HANDLE sess, const CK_TOKEN_INFO *ti,
                       p11psk_err *err)
{
    char *pin = NULL, msg[256];
    size_t pinlen = 0;
    CK_RV rv;

    if (tok->pin != NULL) {
        rv = tok->fl->C_Login(sess, CKU_USER, (CK_UTF8CHAR_PTR)tok->pin, strlen(tok->pin));
    } else if (tok->pin_source != NULL) {
        if (!p11psk_pin_read(tok->pin_source, &pin, &pinlen, msg, sizeof(msg)))
            return p11psk_err_set(err, P11PSK_ST_UNAVAILABLE, "%s", msg);
        rv = tok->fl->C_Login(sess, CKU_USER, (CK_UTF8CHAR_PTR)pin, pinlen);
        p11psk_pin_free(pin, pinlen);
    } else if (ti == NULL || (ti->flags & CKF_LOGIN_REQUIRED)) {
        return p11psk_err_set(err, P11PSK_ST_UNAVAILABLE,
                              "token '%s' needs the user PIN; set `pin-source = "
                              "file:/etc/p11psk/pin` in the config",
                              tok->label);
    } else {
        return P11PSK_ST_OK;
    }
    if (rv == CKR_OK)
        tok->logged_in = 1;
    else if (rv != CKR_USER_ALREADY_LOGGED_IN) {
        p11psk_err_ckr(err, rv, "C_Login");
        if (rv == CKR_PIN_INCORRECT || rv == CKR_PIN_LEN_RANGE)
            snprintf(err->msg + strlen(err->msg), sizeof(err->msg) - strlen(err->msg),
                     "; check the PIN in the pin-source file for token '%s'", tok->label);
        return P11PSK_ST_TOKEN;
    }
    return P11PSK_ST_OK;
}

static void cache_clear(p11psk_token *tok);

/* Module up, slot chosen, one session open and logged in. Runs with modlock held
 * exclusively, or before any other thread can see tok. */
static int token_attach(p11psk_token *tok, p11psk_err *err)
{
    CK_TOKEN_INFO ti = {0};
    CK_FLAGS fl = CKF_SERIAL_SESSION | (tok->rw ? CKF_RW_SESSION : 0);
    CK_SESSION_HANDLE sess;
    CK_RV rv;
    int st;

    if (!tok->initialized) {
        rv = p11_kit_module_initialize(tok->fl);
        if (rv != CKR_OK)
            return p11psk_err_ckr(err, rv, "C_Initialize");
        tok->initialized = 1;
    }
    if ((st = slot_choose(tok, tok->uri, &ti, err)) != P11PSK_ST_OK)
        return st;
    rv = tok->fl->C_OpenSession(tok->slot, fl, NULL, NULL, &sess);
    if (rv != CKR_OK)
        return p11psk_err_ckr(err, rv, "C_OpenSession");
    if ((st = token_login(tok, sess, &ti, err)) != P11PSK_ST_OK) {
        tok->fl->C_CloseSession(sess);
        return st;
    }
    tok->first = sess;
    tok->idle[0] = sess;
    tok->nidle = 1;
    tok->nsess = 1;
    return P11PSK_ST_OK;
}

/* Closes every idle session and finalizes the module; the object cache goes too, since
 * handles may change. Borrowed sessions must all be back (modlock exclusive). */
static void token_detach(p11psk_token *tok)
{
    size_t i;

    if (tok->logged_in && tok->nidle > 0)
        tok->fl->C_Logout(tok->idle[0]);
    tok->logged_in = 0;
    for (i = 0; i < tok->nidle; i++)
        tok->fl->C_CloseSession(tok->idle[i]);
    tok->nidle = tok->nsess = 0;
    if (tok->initialized)
        p11_kit_module_finalize(tok->fl);
    tok->initialized = 0;
    cache_clear(tok);
}

void p11psk_token_params_from_config(p11psk_token_params *prm, const p11psk_config *cfg)
{
    memset(prm, 0, sizeof(*prm));
    prm->module = cfg->module;
    prm->token_uri = cfg->token_uri;
    prm->pin_source = cfg->pin_source;
    prm->server_address = cfg->p11kit_server;
}

int p11psk_token_open(const p11psk_token_params *prm, p11psk_token **out, p11psk_err *err)
{
    p11psk_token *tok;
    int st;

    *out = NULL;
    if ((tok = calloc(1, sizeof(*tok))) == NULL)
        return p11psk_err_set(err, P11PSK_ST_INTERNAL, "out of memory");
    pthread_rwlock_init(&tok->modlock, NULL);
    pthread_rwlock_init(&tok->cachelock, NULL);
    pthread_mutex_init(&tok->lock, NULL);
    pthread_cond_init(&tok->cv, NULL);
    tok->max_sess = prm->sessions == 0 ? 4 : prm->sessions < SESS_MAX ? prm->sessions : SESS_MAX;
    tok->backoff_ms = BACKOFF_MIN_MS;
    tok->rw = prm->rw;
    if ((prm->token_uri != NULL && (tok->uri = strdup(prm->token_uri)) == NULL) ||
        (prm->pin_source != NULL && (tok->pin_source = strdup(prm->pin_source)) == NULL) ||
        (prm->pin != NULL && (tok->pin = OPENSSL_secure_malloc(strlen(prm->pin) + 1)) == NULL)) {
        p11psk_token_close(tok);
        return p11psk_err_set(err, P11PSK_ST_INTERNAL, "out of memory");
    }
    if (tok->pin != NULL)
        memcpy(tok->pin, prm->pin, strlen(prm->pin) + 1);
    /* p11-kit-client.so reads its server from the environment at C_Initialize. */
    if (prm->server_address != NULL &&
        setenv("P11_KIT_SERVER_ADDRESS", prm->server_address, 1) != 0) {
        p11psk_token_close(tok);
        return p11psk_err_set(err, P11PSK_ST_INTERNAL, "setenv: out of memory");
    }
    st = module_load(tok, prm->module != NULL ? prm->module : P11PSK_DEFAULT_MODULE, err);
    if (st == P11PSK_ST_OK)
        st = token_attach(tok, err);
    if (st != P11PSK_ST_OK) {
        if (st == P11PSK_ST_TOKEN && err->ckr != CKR_OK)
            snprintf(err->msg + strlen(err->msg), sizeof(err->msg) - strlen(err->msg),
                     " (module %s)", tok->module);
        p11psk_token_close(tok);
        return st;
    }
    *out = tok;
    return P11PSK_ST_OK;
}

/* ---- sessions and faults ---- */

/* The module or token is gone: every session is dead and the module needs C_Finalize. */
static int ckr_device_gone(CK_RV rv)
{
    return rv == CKR_DEVICE_REMOVED || rv == CKR_TOKEN_NOT_PRESENT || rv == CKR_DEVICE_ERROR ||
           rv == CKR_CRYPTOKI_NOT_INITIALIZED || rv == CKR_SLOT_ID_INVALID ||
           rv == CKR_TOKEN_NOT_RECOGNIZED || rv == CKR_GENERAL_ERROR;
}

static int ckr_session_lost(CK_RV rv)
{
    return rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED;
}

static int ckr_retryable(CK_RV rv)
{
    return ckr_device_gone(rv) || ckr_session_lost(rv) || rv == CKR_USER_NOT_LOGGED_IN;
}

/* Reinitialises the module after a fault, at most once per backoff period. */
static int token_recover(p11psk_token *tok, p11psk_err *err)
{
    long long now = mono_ms();
    int st;

    pthread_rwlock_wrlock(&tok->modlock);
    pthread_mutex_lock(&tok->lock);
    if (!tok->down) { /* another thread got there first */
        st = P11PSK_ST_OK;
    } else if (now < tok->retry_at_ms) {
        st = p11psk_err_set(err, P11PSK_ST_UNAVAILABLE,
                            "token '%s' unavailable (%s); next retry in %lld ms", tok->label,
                            tok->down_why, tok->retry_at_ms - now);
    } else {
        token_detach(tok);
        st = token_attach(tok, err);
        if (st == P11PSK_ST_OK) {
            tok->down = 0;
            tok->backoff_ms = BACKOFF_MIN_MS;
            tok->recoveries++;
            p11psk_log(P11PSK_LOG_WARN, "token '%s' is back (module %s reinitialised after %s)",
                       tok->label, tok->module, tok->down_why);
        } else {
            tok->retry_at_ms = now + tok->backoff_ms;
            p11psk_log(P11PSK_LOG_ERROR, "token '%s' still unavailable: %s; retrying in %ld ms",
                       tok->label, err->msg, tok->backoff_ms);
            tok->backoff_ms =
                tok->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : tok->backoff_ms * 2;
            st = p11psk_err_set(err, P11PSK_ST_UNAVAILABLE, "token '%s' unavailable (%s)",
                                tok->label, tok->down_why);
        }
        pthread_cond_broadcast(&tok->cv);
    }
    pthread_mutex_unlock(&tok->lock);
    pthread_rwlock_unlock(&tok->modlock);
    return st;
}

/* Borrows a session; modlock stays held shared until sess_put. */
static int sess_get(p11psk_token *tok, CK_SESSION_HANDLE *sess, p11psk_err *err)
{
    CK_FLAGS fl = CKF_SERIAL_SESSION | (tok->rw ? CKF_RW_SESSION : 0);
    CK_RV rv;
    int st;

    for (;;) {
        pthread_rwlock_rdlock(&tok->modlock);
        pthread_mutex_lock(&tok->lock);
        if (!tok->down)
            break;
        pthread_mutex_unlock(&tok->lock);
        pthread_rwlock_unlock(&tok->modlock);
        if ((st = token_recover(tok, err)) != P11PSK_ST_OK)
            return st;
    }
    while (tok->nidle == 0 && tok->nsess >= tok->max_sess)
        pthread_cond_wait(&tok->cv, &tok->lock);
    if (tok->nidle > 0) {
        *sess = tok->idle[--tok->nidle];
        pthread_mutex_unlock(&tok->lock);
        return P11PSK_ST_OK;
    }
    tok->nsess++; /* reserve the slot; open outside the lock */
    pthread_mutex_unlock(&tok->lock);
    rv = tok->fl->C_OpenSession(tok->slot, fl, NULL, NULL, sess);
    if (rv == CKR_OK)
        return P11PSK_ST_OK;
    pthread_mutex_lock(&tok->lock);
    tok->nsess--;
    if (ckr_device_gone(rv) && !tok->down) {
        tok->down = 1;
        tok->retry_at_ms = 0;
        snprintf(tok->down_why, sizeof(tok->down_why), "%s in C_OpenSession", p11psk_ckr_name(rv));
    }
    pthread_cond_signal(&tok->cv);
    pthread_mutex_unlock(&tok->lock);
    pthread_rwlock_unlock(&tok->modlock);
    return p11psk_err_ckr(err, rv, "C_OpenSession");
}

/* Gives a session back; rv, the last PKCS#11 result, says whether the session (or the
 * whole module) is still good. */
static void sess_put(p11psk_token *tok, CK_SESSION_HANDLE sess, CK_RV rv, const char *fn)
{
    pthread_mutex_lock(&tok->lock);
    if (ckr_device_gone(rv)) {
        if (!tok->down) {
            tok->down = 1;
            tok->retry_at_ms = 0; /* the first reopen is immediate */
            snprintf(tok->down_why, sizeof(tok->down_why), "%s in %s", p11psk_ckr_name(rv), fn);
            p11psk_log(P11PSK_LOG_ERROR, "token '%s': %s; reinitialising module %s", tok->label,
                       tok->down_why, tok->module);
        }
        tok->idle[tok->nidle++] = sess; /* closed by token_detach */
    } else if (ckr_session_lost(rv)) {
        tok->nsess--;
    } else {
        tok->idle[tok->nidle++] = sess;
    }
    pthread_cond_signal(&tok->cv);
    pthread_mutex_unlock(&tok->lock);
    pthread_rwlock_unlock(&tok->modlock);
}

/* After CKR_USER_NOT_LOGGED_IN (the token forgot the login): log in again. */
static void relogin(p11psk_token *tok, const p11psk_err *why)
{
    CK_SESSION_HANDLE sess;
    p11psk_err e2;
    int st;

    memset(&e2, 0, sizeof(e2));
    if (sess_get(tok, &sess, &e2) != P11PSK_ST_OK)
        return;
    tok->logged_in = 0;
    st = token_login(tok, sess, NULL, &e2);
    sess_put(tok, sess, e2.ckr, "C_Login");
    if (st == P11PSK_ST_OK)
        p11psk_log(P11PSK_LOG_WARN, "token '%s': logged in again after %s", tok->label, why->msg);
    else
        p11psk_log(P11PSK_LOG_ERROR, "token '%s': login again failed: %s", tok->label, e2.msg);
}

/* Runs op on a borrowed session. A lost session, a forgotten login or a device fault is
 * retried once, on a fresh session after recovery. */
typedef int (*sess_op)(p11psk_token *tok, CK_SESSION_HANDLE sess, void *arg, CK_RV *rv,
                       const char **fn, p11psk_err *err);

static int with_session(p11psk_token *tok, sess_op op, void *arg, p11psk_err *err)
{
    CK_SESSION_HANDLE sess;
    const char *fn;
    CK_RV rv;
    int attempt, st;

    for (attempt = 0;; attempt++) {
        if ((st = sess_get(tok, &sess, err)) != P11PSK_ST_OK)
            return st;
        rv = CKR_OK;
        fn = "?";
        st = op(tok, sess, arg, &rv, &fn, err);
        sess_put(tok, sess, rv, fn);
        if (attempt > 0 || !ckr_retryable(rv))
            return st;
        if (rv == CKR_USER_NOT_LOGGED_IN)
            relogin(tok, err);
    }
}

static void cache_clear(p11psk_token *tok)
{
    struct cache_ent *e, *next;
    size_t i;

    pthread_rwlock_wrlock(&tok->cachelock);
    for (i = 0; i < CACHE_BUCKETS; i++) {
        for (e = tok->cache[i]; e != NULL; e = next) {
            next = e->next;
            free(e);
        }
        tok->cache[i] = NULL;
    }
    pthread_rwlock_unlock(&tok->cachelock);
}

void p11psk_token_close(p11psk_token *tok)
{
    if (tok == NULL)
        return;
    token_detach(tok);
    if (tok->registry != NULL)
        p11_kit_modules_release(tok->registry);
    else if (tok->fl != NULL)
        p11_kit_module_release(tok->fl);
    free(tok->uri);
    free(tok->pin_source);
    if (tok->pin != NULL)
        OPENSSL_secure_clear_free(tok->pin, strlen(tok->pin) + 1);
    pthread_rwlock_destroy(&tok->modlock);
    pthread_rwlock_destroy(&tok->cachelock);
    pthread_mutex_destroy(&tok->lock);
    pthread_cond_destroy(&tok->cv);
    free(tok);
}

void p11psk_token_state(p11psk_token *tok, p11psk_token_info *info)
{
    pthread_mutex_lock(&tok->lock);
    memset(info, 0, sizeof(*info));
    info->available = !tok->down;
    info->logged_in = tok->logged_in;
    info->sessions = tok->nsess;
    info->recoveries = tok->recoveries;
    snprintf(info->label, sizeof(info->label), "%s", tok->label);
    snprintf(info->model, sizeof(info->model), "%s", tok->model);
    snprintf(info->down_why, sizeof(info->down_why), "%s", tok->down ? tok->down_why : "");
    pthread_mutex_unlock(&tok->lock);
}

const char *p11psk_token_label(const p11psk_token *tok)
{
    return tok->label;
}

const char *p11psk_token_module(const p11psk_token *tok)
{
    return tok->module;
}

CK_FUNCTION_LIST *p11psk_token_functions(const p11psk_token *tok)
{
    return tok->fl;
}

CK_SESSION_HANDLE p11psk_token_session(const p11psk_token *tok)
{
    return tok->first;
}

/* ---- keys ---- */

static int key_type_ok(CK_KEY_TYPE t)
{
    return t == CKK_GENERIC_SECRET || t == CKK_AES;
}

/* Reads the attributes p11psk needs. Over-long ids keep their length but no bytes. */
static CK_RV key_read(p11psk_token *tok, CK_SESSION_HANDLE sess, CK_OBJECT_HANDLE obj,
                      p11psk_key *k)
{
    CK_BBOOL sens = CK_TRUE, extr = CK_FALSE;
    CK_ULONG vlen = 0;
    CK_ATTRIBUTE len_t[] = {{CKA_ID, NULL, 0}, {CKA_LABEL, NULL, 0}};
    CK_ATTRIBUTE t[] = {
        {CKA_KEY_TYPE, &k->type, sizeof(k->type)},
        {CKA_VALUE_LEN, &vlen, sizeof(vlen)},
        {CKA_SENSITIVE, &sens, sizeof(sens)},
        {CKA_EXTRACTABLE, &extr, sizeof(extr)},
        {CKA_ID, k->id, 0},
        {CKA_LABEL, NULL, 0},
    };
    char *label = NULL;
    CK_ULONG n = 4;
    CK_RV rv;

    memset(k, 0, sizeof(*k));
    k->obj = obj;
    k->type = (CK_KEY_TYPE)-1;
    rv = tok->fl->C_GetAttributeValue(sess, obj, len_t, 2);
    if (rv != CKR_OK && rv != CKR_ATTRIBUTE_TYPE_INVALID && rv != CKR_ATTRIBUTE_SENSITIVE)
        return rv;
    if (len_t[0].ulValueLen != CK_UNAVAILABLE_INFORMATION) {
        k->idlen = len_t[0].ulValueLen;
        if (k->idlen <= P11PSK_KEY_ID_MAX)
            t[n++].ulValueLen = len_t[0].ulValueLen;
    }
    if (len_t[1].ulValueLen != CK_UNAVAILABLE_INFORMATION && len_t[1].ulValueLen > 0) {
        if ((label = calloc(1, len_t[1].ulValueLen + 1)) == NULL)
            return CKR_HOST_MEMORY;
        if (n == 4) /* keep the template dense */
            t[4] = t[5];
        t[n].type = CKA_LABEL;
        t[n].pValue = label;
        t[n++].ulValueLen = len_t[1].ulValueLen;
    }
    rv = tok->fl->C_GetAttributeValue(sess, obj, t, n);
    if (rv != CKR_OK && rv != CKR_ATTRIBUTE_TYPE_INVALID && rv != CKR_ATTRIBUTE_SENSITIVE) {
        free(label);
        return rv;
    }
    if (t[0].ulValueLen == CK_UNAVAILABLE_INFORMATION)
        k->type = (CK_KEY_TYPE)-1;
    k->len = t[1].ulValueLen != CK_UNAVAILABLE_INFORMATION ? vlen : 0;
    k->readable = t[2].ulValueLen != CK_UNAVAILABLE_INFORMATION &&
                  t[3].ulValueLen != CK_UNAVAILABLE_INFORMATION && !sens && extr;
    if (label != NULL) {
        snprintf(k->label, sizeof(k->label), "%s", label);
        free(label);
    }
    return CKR_OK;
}

/* The objects matching tmpl, and for each its attributes (keys of every type). */
struct find_arg {
    CK_ATTRIBUTE *tmpl;
    CK_ULONG tn;
    p11psk_key *keys; /* out, malloc'd */
    size_t n;
};

static int op_find(p11psk_token *tok, CK_SESSION_HANDLE sess, void *varg, CK_RV *rv,
                   const char **fn, p11psk_err *err)
{
    struct find_arg *a = varg;
    CK_OBJECT_HANDLE *v = NULL, *nv;
    size_t n = 0, cap = 0, i;
    CK_ULONG got;

    a->keys = NULL;
    a->n = 0;
    *fn = "C_FindObjectsInit";
    if ((*rv = tok->fl->C_FindObjectsInit(sess, a->tmpl, a->tn)) != CKR_OK)
        return p11psk_err_ckr(err, *rv, *fn);
    *fn = "C_FindObjects";
    for (;;) {
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            if ((nv = realloc(v, cap * sizeof(*v))) == NULL) {
                *rv = CKR_HOST_MEMORY;
                break;
            }
            v = nv;
        }
        *rv = tok->fl->C_FindObjects(sess, v + n, cap - n, &got);
        if (*rv != CKR_OK || got == 0)
            break;
        n += got;
    }
    tok->fl->C_FindObjectsFinal(sess);
    if (*rv == CKR_OK && n > 0 && (a->keys = calloc(n, sizeof(*a->keys))) == NULL)
        *rv = CKR_HOST_MEMORY;
    *fn = "C_GetAttributeValue";
    for (i = 0; *rv == CKR_OK && i < n; i++)
        *rv = key_read(tok, sess, v[i], &a->keys[i]);
    free(v);
    if (*rv != CKR_OK) {
        free(a->keys);
        a->keys = NULL;
        return p11psk_err_ckr(err, *rv, *fn);
    }
    a->n = n;
    return P11PSK_ST_OK;
}

static int op_state(p11psk_token *tok, CK_SESSION_HANDLE sess, void *varg, CK_RV *rv,
                    const char **fn, p11psk_err *err)
{
    CK_SESSION_INFO si;

    *fn = "C_GetSessionInfo";
    if ((*rv = tok->fl->C_GetSessionInfo(sess, &si)) != CKR_OK)
        return p11psk_err_ckr(err, *rv, *fn);
    *(CK_STATE *)varg = si.state;
    return P11PSK_ST_OK;
}

/* True when we hold a PIN but the token says our sessions are public (logged out). */
static int login_lost(p11psk_token *tok)
{
    CK_STATE state = CKS_RO_USER_FUNCTIONS;
    p11psk_err err;

    if (tok->pin == NULL && tok->pin_source == NULL)
        return 0;
    if (with_session(tok, op_state, &state, &err) != P11PSK_ST_OK)
        return 0;
    return state == CKS_RO_PUBLIC_SESSION || state == CKS_RW_PUBLIC_SESSION;
}

static unsigned cache_hash(const uint8_t *id, size_t idlen)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    size_t i;

    for (i = 0; i < idlen; i++)
        h = (h ^ id[i]) * 16777619u;
    return h & (CACHE_BUCKETS - 1);
}

static struct cache_ent **cache_slot(p11psk_token *tok, const uint8_t *id, size_t idlen)
{
    struct cache_ent **pp = &tok->cache[cache_hash(id, idlen)];

    for (; *pp != NULL; pp = &(*pp)->next)
        if ((*pp)->key.idlen == idlen && memcmp((*pp)->key.id, id, idlen) == 0)
            break;
    return pp;
}

void p11psk_token_forget(p11psk_token *tok, const uint8_t *id, size_t idlen)
{
    struct cache_ent **pp, *e;

    pthread_rwlock_wrlock(&tok->cachelock);
    pp = cache_slot(tok, id, idlen);
    if ((e = *pp) != NULL) {
        *pp = e->next;
        free(e);
    }
    pthread_rwlock_unlock(&tok->cachelock);
}

/* Adds every key the token holds to the lookup cache: one scan instead of one search per
 * key (searches grow with the object count). A CKA_ID that two keys share is left out, so
 * its lookup reports the clash. */
static int rescan_due(p11psk_token *tok)
{
    long long now = mono_ms();
    int due;

    pthread_mutex_lock(&tok->lock);
    due = now - tok->scanned_ms >= RESCAN_MIN_MS;
    if (due) /* one thread rescans; the others search as before */
        tok->scanned_ms = now;
    pthread_mutex_unlock(&tok->lock);
    return due;
}

int p11psk_token_prefetch(p11psk_token *tok, size_t *count, p11psk_err *err)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}};
    struct find_arg a = {t, 1, NULL, 0};
    struct cache_ent **pp, *e;
    unsigned long scan;
    size_t i, j, n = 0;
    int st;

    pthread_mutex_lock(&tok->lock);
    tok->scanned_ms = mono_ms();
    pthread_mutex_unlock(&tok->lock);
    if ((st = with_session(tok, op_find, &a, err)) != P11PSK_ST_OK)
        return st;
    pthread_rwlock_wrlock(&tok->cachelock);
    scan = ++tok->scans;
    for (i = 0; i < a.n; i++) {
        p11psk_key *k = &a.keys[i];

        if (!key_type_ok(k->type) || k->idlen == 0 || k->idlen > P11PSK_ID_MAX || k->len == 0 ||
            k->len > P11PSK_KEY_LEN_MAX)
            continue;
        pp = cache_slot(tok, k->id, k->idlen);
        if ((e = *pp) == NULL) {
            if ((e = calloc(1, sizeof(*e))) == NULL)
                break;
            *pp = e;
        } else if (e->scan == scan) { /* a second key with this CKA_ID */
            e->clash = 1;
            continue;
        }
        e->key = *k;
        e->scan = scan;
        e->clash = 0;
        n++;
    }
    /* Clashing ids are searched one by one, which reports the clash. */
    for (j = 0; j < CACHE_BUCKETS; j++)
        for (pp = &tok->cache[j]; (e = *pp) != NULL;)
            if (e->clash) {
                *pp = e->next;
                free(e);
                n--;
            } else {
                pp = &e->next;
            }
    pthread_rwlock_unlock(&tok->cachelock);
    free(a.keys);
    if (count != NULL)
        *count = n;
    return P11PSK_ST_OK;
}

int p11psk_token_find_id(p11psk_token *tok, const uint8_t *id, size_t idlen, p11psk_key *key,
                         p11psk_err *err)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_ID, (void *)id, idlen}};
    struct find_arg a = {t, 2, NULL, 0};
    struct cache_ent **pp, *e;
    char hex[2 * P11PSK_KEY_ID_MAX + 1];
    int st, hit = 0;

    if (idlen == 0 || idlen > P11PSK_ID_MAX)
        return p11psk_err_set(err, P11PSK_ST_BAD_HANDLE, "bad key id length %zu", idlen);
    pthread_rwlock_rdlock(&tok->cachelock);
    pp = cache_slot(tok, id, idlen);
    if (*pp != NULL) {
        *key = (*pp)->key;
        hit = 1;
    }
    pthread_rwlock_unlock(&tok->cachelock);
    if (hit)
        return P11PSK_ST_OK;
    if (rescan_due(tok) && p11psk_token_prefetch(tok, NULL, err) == P11PSK_ST_OK) {
        pthread_rwlock_rdlock(&tok->cachelock);
        pp = cache_slot(tok, id, idlen);
        if (*pp != NULL) {
            *key = (*pp)->key;
            hit = 1;
        }
        pthread_rwlock_unlock(&tok->cachelock);
        if (hit)
            return P11PSK_ST_OK;
    }
    id_hex(id, idlen, hex);
    if ((st = with_session(tok, op_find, &a, err)) != P11PSK_ST_OK)
        return st;
    /* Nothing found may mean the token forgot our login (private objects vanish then);
     * two objects, a rotation between its create and destroy. Look once more. */
    if (a.n == 0 && login_lost(tok)) {
        p11psk_err why;

        p11psk_err_set(&why, P11PSK_ST_NOT_FOUND, "CKA_ID %s not found while logged out", hex);
        relogin(tok, &why);
        if ((st = with_session(tok, op_find, &a, err)) != P11PSK_ST_OK)
            return st;
    } else if (a.n > 1) {
        struct timespec pause = {0, 20 * 1000 * 1000};

        free(a.keys);
        nanosleep(&pause, NULL);
        if ((st = with_session(tok, op_find, &a, err)) != P11PSK_ST_OK)
            return st;
    }
    if (a.n > 0)
        *key = a.keys[0];
    free(a.keys);
    if (a.n == 0)
        return p11psk_err_set(err, P11PSK_ST_NOT_FOUND, "no key with CKA_ID %s in token %s", hex,
                              tok->label);
    if (a.n > 1)
        return p11psk_err_set(err, P11PSK_ST_UNSUPPORTED,
                              "%zu keys share CKA_ID %s in token %s; remove the extra ones", a.n,
                              hex, tok->label);
    if (!key_type_ok(key->type))
        return p11psk_err_set(err, P11PSK_ST_UNSUPPORTED,
                              "key '%s' (CKA_ID %s) is not a generic secret or AES key", key->label,
                              hex);
    if (key->len == 0 || key->len > P11PSK_KEY_LEN_MAX)
        return p11psk_err_set(err, P11PSK_ST_UNSUPPORTED,
                              "key '%s' (CKA_ID %s) has an unsupported length %zu", key->label, hex,
                              key->len);
    pthread_rwlock_wrlock(&tok->cachelock);
    pp = cache_slot(tok, id, idlen); /* another thread may have added it meanwhile */
    if (*pp == NULL && (e = calloc(1, sizeof(*e))) != NULL) { /* no entry is only slower */
        e->key = *key;
        e->next = NULL;
        *pp = e;
    }
    pthread_rwlock_unlock(&tok->cachelock);
    return P11PSK_ST_OK;
}

int p11psk_token_list(p11psk_token *tok, const char *label, p11psk_key **keys, size_t *n,
                      p11psk_err *err)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                        {CKA_LABEL, (void *)label, label ? strlen(label) : 0}};
    struct find_arg a = {t, label ? 2 : 1, NULL, 0};
    size_t i, kept = 0;
    int st;

    *keys = NULL;
    *n = 0;
    if ((st = with_session(tok, op_find, &a, err)) != P11PSK_ST_OK)
        return st;
    for (i = 0; i < a.n; i++) /* keys of unsupported types are skipped */
        if (key_type_ok(a.keys[i].type))
            a.keys[kept++] = a.keys[i];
    if (kept == 0) {
        free(a.keys);
        a.keys = NULL;
    }
    *keys = a.keys;
    *n = kept;
    return P11PSK_ST_OK;
}

struct create_arg {
    const p11psk_new_key *nk;
    p11psk_key *key;
};

static int op_create(p11psk_token *tok, CK_SESSION_HANDLE sess, void *varg, CK_RV *rv,
                     const char **fn, p11psk_err *err)
{
    struct create_arg *a = varg;
    const p11psk_new_key *nk = a->nk;
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_BBOOL on_token = nk->session_only ? CK_FALSE : CK_TRUE;
    CK_ULONG vlen = nk->value_len;
    CK_MECHANISM gen = {CKM_GENERIC_SECRET_KEY_GEN, NULL, 0};
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_TOKEN, &on_token, sizeof(on_token)},
        {CKA_PRIVATE, &yes, sizeof(yes)},
        {CKA_SENSITIVE, nk->readable ? &no : &yes, sizeof(CK_BBOOL)},
        {CKA_EXTRACTABLE, nk->readable ? &yes : &no, sizeof(CK_BBOOL)},
        {CKA_LABEL, (void *)nk->label, strlen(nk->label)},
        {CKA_ID, (void *)nk->id, nk->idlen},
        {CKA_VALUE_LEN, &vlen, sizeof(vlen)}, /* replaced by CKA_VALUE on import */
    };
    CK_OBJECT_HANDLE obj;

    if (nk->value != NULL) {
        t[8].type = CKA_VALUE;
        t[8].pValue = (void *)nk->value;
        t[8].ulValueLen = nk->value_len;
        *fn = "C_CreateObject";
        *rv = tok->fl->C_CreateObject(sess, t, 9, &obj);
    } else {
        /* C_GenerateKey takes class and type from the mechanism; pass them anyway. */
        *fn = "C_GenerateKey";
        *rv = tok->fl->C_GenerateKey(sess, &gen, t, 9, &obj);
    }
    if (*rv != CKR_OK)
        return p11psk_err_ckr(err, *rv, *fn);
    *fn = "C_GetAttributeValue";
    if ((*rv = key_read(tok, sess, obj, a->key)) != CKR_OK)
        return p11psk_err_ckr(err, *rv, *fn);
    return P11PSK_ST_OK;
}

int p11psk_token_create_key(p11psk_token *tok, const p11psk_new_key *nk, p11psk_key *key,
                            p11psk_err *err)
{
    struct create_arg a = {nk, key};
    CK_SESSION_HANDLE sess;
    const char *fn = "?";
    CK_RV rv = CKR_OK;
    int st;

    if (nk->value_len < P11PSK_KEY_LEN_MIN || nk->value_len > P11PSK_KEY_LEN_MAX)
        return p11psk_err_set(err, P11PSK_ST_BAD_REQUEST, "key length %zu is outside %d..%d",
                              nk->value_len, P11PSK_KEY_LEN_MIN, P11PSK_KEY_LEN_MAX);
    /* Not retried: a create that failed late may have left an object behind. */
    if ((st = sess_get(tok, &sess, err)) != P11PSK_ST_OK)
        return st;
    st = op_create(tok, sess, &a, &rv, &fn, err);
    sess_put(tok, sess, rv, fn);
    return st;
}

static int op_destroy(p11psk_token *tok, CK_SESSION_HANDLE sess, void *varg, CK_RV *rv,
                      const char **fn, p11psk_err *err)
{
    const p11psk_key *key = varg;

    *fn = "C_DestroyObject";
    *rv = tok->fl->C_DestroyObject(sess, key->obj);
    return *rv == CKR_OK ? P11PSK_ST_OK : p11psk_err_ckr(err, *rv, *fn);
}

int p11psk_token_destroy_key(p11psk_token *tok, const p11psk_key *key, p11psk_err *err)
{
    int st = with_session(tok, op_destroy, (void *)key, err);

    if (key->idlen <= P11PSK_KEY_ID_MAX)
        p11psk_token_forget(tok, key->id, key->idlen);
    return st;
}

struct buf_arg {
    uint8_t *p;
    size_t len;
};

static int op_random(p11psk_token *tok, CK_SESSION_HANDLE sess, void *varg, CK_RV *rv,
                     const char **fn, p11psk_err *err)
{
    struct buf_arg *a = varg;

    *fn = "C_GenerateRandom";
    *rv = tok->fl->C_GenerateRandom(sess, a->p, a->len);
    return *rv == CKR_OK ? P11PSK_ST_OK : p11psk_err_ckr(err, *rv, *fn);
}

int p11psk_token_random(p11psk_token *tok, uint8_t *out, size_t len, p11psk_err *err)
{
    struct buf_arg a = {out, len};

    return with_session(tok, op_random, &a, err);
}

/* ---- token-side math ---- */

struct digest_arg {
    int md;
    const uint8_t *prefix;
    size_t prefixlen;
    const p11psk_key *key;
    uint8_t *out;
};

static int op_digest(p11psk_token *tok, CK_SESSION_HANDLE sess, void *varg, CK_RV *rv,
                     const char **fn, p11psk_err *err)
{
    struct digest_arg *a = varg;
    CK_MECHANISM mech = {a->md == P11PSK_MD_SHA384 ? CKM_SHA384 : CKM_SHA256, NULL, 0};
    CK_ULONG outlen = p11psk_md_size(a->md);
    uint8_t junk[64];
    CK_ULONG junklen = sizeof(junk);

    *fn = "C_DigestInit";
    *rv = tok->fl->C_DigestInit(sess, &mech);
    if (*rv != CKR_OK)
        return p11psk_err_ckr(err, *rv, *fn);
    if (a->prefixlen > 0) {
        *fn = "C_DigestUpdate";
        *rv = tok->fl->C_DigestUpdate(sess, (CK_BYTE_PTR)a->prefix, a->prefixlen);
    }
    if (*rv == CKR_OK) {
        *fn = "C_DigestKey";
        *rv = tok->fl->C_DigestKey(sess, a->key->obj);
    }
    if (*rv == CKR_OK) {
        *fn = "C_DigestFinal";
        *rv = tok->fl->C_DigestFinal(sess, a->out, &outlen);
        if (*rv == CKR_OK && outlen != p11psk_md_size(a->md)) {
            OPENSSL_cleanse(a->out, outlen);
            return p11psk_err_set(err, P11PSK_ST_TOKEN, "C_DigestFinal returned %lu bytes",
                                  (unsigned long)outlen);
        }
        if (*rv == CKR_OK)
            return P11PSK_ST_OK;
    }
    /* No digest operation may stay active on a session that goes back to the pool. */
    tok->fl->C_DigestFinal(sess, junk, &junklen);
    OPENSSL_cleanse(junk, sizeof(junk));
    return p11psk_err_ckr(err, *rv, *fn);
}

int p11psk_token_digest_key(p11psk_token *tok, int md, const uint8_t *prefix, size_t prefixlen,
                            const p11psk_key *key, uint8_t *out, p11psk_err *err)
{
    struct digest_arg a = {md, prefix, prefixlen, key, out};

    if (p11psk_md_size(md) == 0)
        return p11psk_err_set(err, P11PSK_ST_UNSUPPORTED, "unsupported digest %d", md);
    return with_session(tok, op_digest, &a, err);
}

struct value_arg {
    const p11psk_key *key;
    uint8_t *buf;
    CK_ULONG len;
};

static int op_value(p11psk_token *tok, CK_SESSION_HANDLE sess, void *varg, CK_RV *rv,
                    const char **fn, p11psk_err *err)
{
    struct value_arg *a = varg;
    CK_ATTRIBUTE t = {CKA_VALUE, a->buf, a->key->len};

    *fn = "C_GetAttributeValue(CKA_VALUE)";
    *rv = tok->fl->C_GetAttributeValue(sess, a->key->obj, &t, 1);
    if (*rv == CKR_OK && (t.ulValueLen == CK_UNAVAILABLE_INFORMATION || t.ulValueLen > a->key->len))
        return p11psk_err_ckr(err, CKR_GENERAL_ERROR, *fn);
    if (*rv != CKR_OK)
        return p11psk_err_ckr(err, *rv, *fn);
    a->len = t.ulValueLen;
    return P11PSK_ST_OK;
}

int p11psk_token_key_value(p11psk_token *tok, const p11psk_key *key, uint8_t **val, size_t *len,
                           p11psk_err *err)
{
    struct value_arg a = {key, NULL, 0};
    int st;

    *val = NULL;
    *len = 0;
    if (!key->readable)
        return p11psk_err_set(err, P11PSK_ST_NEED_READABLE, "key '%s' is not readable", key->label);
    if (key->len == 0 || (a.buf = OPENSSL_secure_malloc(key->len)) == NULL)
        return p11psk_err_set(err, P11PSK_ST_INTERNAL, "out of memory");
    if ((st = with_session(tok, op_value, &a, err)) != P11PSK_ST_OK) {
        OPENSSL_secure_clear_free(a.buf, key->len);
        return st;
    }
    *val = a.buf;
    *len = a.len;
    return P11PSK_ST_OK;
}
