/* SPDX-License-Identifier: Apache-2.0 */
/* Module loading, slot choice, login, and the session pool with its fault recovery. */
#include <openssl/crypto.h>
#include <p11-kit/p11-kit.h>
#include <p11-kit/uri.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "config.h"
#include "log.h"
#include "p11psk/clock.h"
#include "p11psk/wire.h"
#include "token_int.h"

#define BACKOFF_MIN_MS 500
#define BACKOFF_MAX_MS 30000

/* ---- module and slot ---- */

static int module_is_path(const char *m)
{
    size_t n = strlen(m);

    return strchr(m, '/') != NULL || (n > 3 && strcmp(m + n - 3, ".so") == 0);
}

/* C_Initialize through p11-kit, which tracks nested initialisation per module. */
static CK_RV module_init(p11psk_token *tok, p11psk_err *err)
{
    p11psk_call c = P11PSK_CALL_INIT;

    return p11psk_call_end(&c, "C_Initialize", p11_kit_module_initialize(tok->fl), err);
}

static int module_load(p11psk_token *tok, const char *m, p11psk_err *err)
{
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
    /* p11psk_token_open adds " (module ...)" to the message. */
    if (module_init(tok, err) != CKR_OK)
        return P11PSK_ST_TOKEN;
    tok->initialized = 1;
    return P11PSK_ST_OK;
}

/* A blank-padded PKCS#11 string without its padding. */
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
    p11psk_call c = P11PSK_CALL_INIT;
    int st = P11PSK_ST_OK;

    if (uri_text != NULL) {
        uri = p11_kit_uri_new();
        if (uri == NULL || p11_kit_uri_parse(uri_text, P11_KIT_URI_FOR_TOKEN, uri) != 0) {
            p11_kit_uri_free(uri);
            return p11psk_err_set(err, P11PSK_ST_INTERNAL, "bad token URI %s", uri_text);
        }
    }
    if (P11CALL(&c, err, tok->fl, C_GetSlotList, CK_TRUE, NULL, &n) == CKR_OK && n > 0) {
        if ((slots = calloc(n, sizeof(*slots))) == NULL)
            p11psk_call_end(&c, "C_GetSlotList", CKR_HOST_MEMORY, err);
        else
            P11CALL(&c, err, tok->fl, C_GetSlotList, CK_TRUE, slots, &n);
    }
    if (c.rv != CKR_OK) {
        st = P11PSK_ST_TOKEN;
        goto out;
    }
    for (i = 0; i < n; i++) {
        if (P11CALL(&c, NULL, tok->fl, C_GetTokenInfo, slots[i], &ti) != CKR_OK ||
            !(ti.flags & CKF_TOKEN_INITIALIZED))
            continue; /* SoftHSM always shows one empty slot */
        present++;
        trimmed(ti.label, sizeof(ti.label), lab);
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

/* ---- login ---- */

int p11psk_ckr_pin_refused(CK_RV rv)
{
    return rv == CKR_PIN_INCORRECT || rv == CKR_PIN_LOCKED || rv == CKR_PIN_EXPIRED ||
           rv == CKR_PIN_LEN_RANGE || rv == CKR_PIN_INVALID;
}

static const char *pin_path(const p11psk_token *tok)
{
    if (tok->pin_source == NULL)
        return NULL;
    return strncmp(tok->pin_source, "file:", 5) == 0 ? tok->pin_source + 5 : tok->pin_source;
}

/* The error every login attempt gets while the PIN stays refused (loginlock held). */
static int pin_refusal(const p11psk_token *tok, p11psk_err *err)
{
    const char *path = pin_path(tok);

    p11psk_err_ckr(err, tok->pin_refused, "C_Login");
    snprintf(err->msg, sizeof(err->msg),
             "token login refused: %s; fix the PIN in %s, then reload p11pskd (SIGHUP); until "
             "then no login is tried, so that the token does not lock",
             p11psk_ckr_name(tok->pin_refused), path != NULL ? path : "the configuration");
    return P11PSK_ST_TOKEN;
}

/* Has the PIN file changed since the token refused it? (loginlock held) */
static int pin_file_changed(const p11psk_token *tok)
{
    const char *path = pin_path(tok);
    struct stat st;

    if (path == NULL || stat(path, &st) != 0)
        return 0;
    return st.st_ino != tok->pin_st.st_ino || st.st_dev != tok->pin_st.st_dev ||
           st.st_size != tok->pin_st.st_size || st.st_mtim.tv_sec != tok->pin_st.st_mtim.tv_sec ||
           st.st_mtim.tv_nsec != tok->pin_st.st_mtim.tv_nsec;
}

/* The PIN is read from its source for each login and cleansed right after. ti NULL: the
 * token is known to want a login. The C_Login result is left in c. loginlock held. */
static int login_locked(p11psk_token *tok, CK_SESSION_HANDLE sess, const CK_TOKEN_INFO *ti,
                        p11psk_call *c, p11psk_err *err)
{
    char *pin = NULL, msg[256];
    size_t pinlen = 0;
    struct stat st;

    memset(&st, 0, sizeof(st));
    if (tok->pin_refused != CKR_OK) {
        if (!pin_file_changed(tok))
            return pin_refusal(tok, err);
        p11psk_log(P11PSK_LOG_WARN, "PIN file %s changed: logging in to token '%s' once more",
                   pin_path(tok), tok->label);
        tok->pin_refused = CKR_OK;
    }
    if (tok->pin != NULL) {
        P11CALL(c, NULL, tok->fl, C_Login, sess, CKU_USER, (CK_UTF8CHAR_PTR)tok->pin,
                strlen(tok->pin));
    } else if (tok->pin_source != NULL) {
        /* stat before the read: a change made after it is seen as a change */
        if (stat(pin_path(tok), &st) != 0)
            memset(&st, 0, sizeof(st));
        if (!p11psk_pin_read(tok->pin_source, &pin, &pinlen, msg, sizeof(msg)))
            return p11psk_err_set(err, P11PSK_ST_UNAVAILABLE, "%s", msg);
        P11CALL(c, NULL, tok->fl, C_Login, sess, CKU_USER, (CK_UTF8CHAR_PTR)pin, pinlen);
        p11psk_pin_free(pin, pinlen);
    } else if (ti == NULL || (ti->flags & CKF_LOGIN_REQUIRED)) {
        return p11psk_err_set(err, P11PSK_ST_UNAVAILABLE,
                              "token '%s' needs the user PIN; set `pin-source = "
                              "file:/etc/p11psk/pin` in the config",
                              tok->label);
    } else {
        return P11PSK_ST_OK;
    }
    if (c->rv == CKR_OK) {
        tok->logged_in = 1;
    } else if (p11psk_ckr_pin_refused(c->rv)) {
        tok->pin_refused = c->rv;
        tok->pin_st = st;
        pin_refusal(tok, err);
        p11psk_log(P11PSK_LOG_ERROR, "token '%s': %s", tok->label, err->msg);
        return P11PSK_ST_TOKEN;
    } else if (c->rv != CKR_USER_ALREADY_LOGGED_IN) {
        p11psk_err_ckr(err, c->rv, c->fn);
        return P11PSK_ST_TOKEN;
    }
    return P11PSK_ST_OK;
}

/* One login at a time: two threads that both lost the login must not both try a PIN. */
static int token_login(p11psk_token *tok, CK_SESSION_HANDLE sess, const CK_TOKEN_INFO *ti,
                       p11psk_call *c, p11psk_err *err)
{
    int st;

    pthread_mutex_lock(&tok->loginlock);
    st = login_locked(tok, sess, ti, c, err);
    pthread_mutex_unlock(&tok->loginlock);
    return st;
}

/* Sets err to the refusal and returns 1 while the PIN stays refused. */
static int pin_still_refused(p11psk_token *tok, p11psk_err *err)
{
    int refused;

    pthread_mutex_lock(&tok->loginlock);
    refused = tok->pin_refused != CKR_OK && !pin_file_changed(tok);
    if (refused)
        pin_refusal(tok, err);
    pthread_mutex_unlock(&tok->loginlock);
    return refused;
}

void p11psk_token_pin_retry(p11psk_token *tok)
{
    pthread_mutex_lock(&tok->loginlock);
    if (tok->pin_refused != CKR_OK)
        p11psk_log(P11PSK_LOG_INFO, "reload: the next request logs in to token '%s' once more",
                   tok->label);
    tok->pin_refused = CKR_OK;
    pthread_mutex_unlock(&tok->loginlock);
    pthread_mutex_lock(&tok->lock);
    tok->retry_at_ms = 0;
    tok->backoff_ms = BACKOFF_MIN_MS;
    pthread_mutex_unlock(&tok->lock);
}

/* Module up, slot chosen, one session open and logged in. Runs with modlock held
 * exclusively, or before any other thread can see tok. */
static int token_attach(p11psk_token *tok, p11psk_err *err)
{
    CK_TOKEN_INFO ti = {0};
    CK_FLAGS fl = CKF_SERIAL_SESSION | (tok->rw ? CKF_RW_SESSION : 0);
    CK_SESSION_HANDLE sess;
    p11psk_call c = P11PSK_CALL_INIT;
    int st;

    if (!tok->initialized) {
        if (module_init(tok, err) != CKR_OK)
            return P11PSK_ST_TOKEN;
        tok->initialized = 1;
    }
    if ((st = slot_choose(tok, tok->uri, &ti, err)) != P11PSK_ST_OK)
        return st;
    if (P11CALL(&c, err, tok->fl, C_OpenSession, tok->slot, fl, NULL, NULL, &sess) != CKR_OK)
        return P11PSK_ST_TOKEN;
    if ((st = token_login(tok, sess, &ti, &c, err)) != P11PSK_ST_OK) {
        P11CALL_QUIET(tok->fl, C_CloseSession, sess);
        return st;
    }
    tok->first = sess;
    tok->idle[0] = sess;
    tok->nidle = 1;
    tok->nsess = 1;
    return P11PSK_ST_OK;
}

/* Closes every idle session and finalizes the module; the object table goes too, since
 * handles may change. Borrowed sessions must all be back (modlock exclusive). */
static void token_detach(p11psk_token *tok)
{
    size_t i;

    if (tok->logged_in && tok->nidle > 0)
        P11CALL_QUIET(tok->fl, C_Logout, tok->idle[0]);
    tok->logged_in = 0;
    for (i = 0; i < tok->nidle; i++)
        P11CALL_QUIET(tok->fl, C_CloseSession, tok->idle[i]);
    tok->nidle = tok->nsess = 0;
    if (tok->initialized)
        p11psk_call_quiet("C_Finalize", p11_kit_module_finalize(tok->fl));
    tok->initialized = 0;
    token_ids_clear(tok);
}

/* ---- open and close ---- */

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
    pthread_mutex_init(&tok->loginlock, NULL);
    pthread_cond_init(&tok->cv, NULL);
    tok->max_sess = prm->sessions == 0               ? 4
                    : prm->sessions < TOKEN_SESS_MAX ? prm->sessions
                                                     : TOKEN_SESS_MAX;
    tok->backoff_ms = BACKOFF_MIN_MS;
    tok->rw = prm->rw;
    if (token_ids_init(tok) != 0 ||
        (prm->token_uri != NULL && (tok->uri = strdup(prm->token_uri)) == NULL) ||
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
        /* The one place that names the module of a PKCS#11 failure at open. */
        if (st == P11PSK_ST_TOKEN && err->ckr != CKR_OK)
            snprintf(err->msg + strlen(err->msg), sizeof(err->msg) - strlen(err->msg),
                     " (module %s)", tok->module);
        p11psk_token_close(tok);
        return st;
    }
    *out = tok;
    return P11PSK_ST_OK;
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
    token_ids_fini(tok);
    free(tok->uri);
    free(tok->pin_source);
    if (tok->pin != NULL)
        OPENSSL_secure_clear_free(tok->pin, strlen(tok->pin) + 1);
    pthread_rwlock_destroy(&tok->modlock);
    pthread_rwlock_destroy(&tok->cachelock);
    pthread_mutex_destroy(&tok->lock);
    pthread_mutex_destroy(&tok->loginlock);
    pthread_cond_destroy(&tok->cv);
    free(tok);
}

/* ---- sessions and faults ---- */

/* Reinitialises the module after a fault, at most once per backoff period. */
static int token_recover(p11psk_token *tok, p11psk_err *err)
{
    long long now = p11psk_mono_ms();
    int st;

    pthread_rwlock_wrlock(&tok->modlock);
    pthread_mutex_lock(&tok->lock);
    if (!tok->down) { /* another thread got there first */
        st = P11PSK_ST_OK;
    } else if (now < tok->retry_at_ms && pin_still_refused(tok, err)) {
        st = P11PSK_ST_TOKEN;
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
            if (!pin_still_refused(tok, err)) /* else err says how to fix the PIN */
                st = p11psk_err_set(err, P11PSK_ST_UNAVAILABLE, "token '%s' unavailable (%s)",
                                    tok->label, tok->down_why);
        }
        pthread_cond_broadcast(&tok->cv);
    }
    pthread_mutex_unlock(&tok->lock);
    pthread_rwlock_unlock(&tok->modlock);
    return st;
}

/* Marks the module down after a device fault (lock held); the first reopen is immediate. */
static void mark_down(p11psk_token *tok, const p11psk_call *c)
{
    if (tok->down)
        return;
    tok->down = 1;
    tok->retry_at_ms = 0;
    snprintf(tok->down_why, sizeof(tok->down_why), "%s in %s", p11psk_ckr_name(c->rv), c->fn);
}

int token_sess_get(p11psk_token *tok, CK_SESSION_HANDLE *sess, p11psk_err *err)
{
    CK_FLAGS fl = CKF_SERIAL_SESSION | (tok->rw ? CKF_RW_SESSION : 0);
    p11psk_call c = P11PSK_CALL_INIT;
    int st;

    /* Bounded: each pass either finds the module up or fails in token_recover, which
     * returns an error while the backoff lasts. */
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
    if (P11CALL(&c, err, tok->fl, C_OpenSession, tok->slot, fl, NULL, NULL, sess) == CKR_OK)
        return P11PSK_ST_OK;
    pthread_mutex_lock(&tok->lock);
    tok->nsess--;
    if (p11psk_ckr_device_gone(c.rv))
        mark_down(tok, &c);
    pthread_cond_signal(&tok->cv);
    pthread_mutex_unlock(&tok->lock);
    pthread_rwlock_unlock(&tok->modlock);
    return P11PSK_ST_TOKEN;
}

void token_sess_put(p11psk_token *tok, CK_SESSION_HANDLE sess, const p11psk_call *c)
{
    pthread_mutex_lock(&tok->lock);
    if (p11psk_ckr_device_gone(c->rv)) {
        if (!tok->down) {
            mark_down(tok, c);
            p11psk_log(P11PSK_LOG_ERROR, "token '%s': %s; reinitialising module %s", tok->label,
                       tok->down_why, tok->module);
        }
        tok->idle[tok->nidle++] = sess; /* closed by token_detach */
    } else if (p11psk_ckr_session_lost(c->rv)) {
        tok->nsess--;
    } else {
        tok->idle[tok->nidle++] = sess;
    }
    pthread_cond_signal(&tok->cv);
    pthread_mutex_unlock(&tok->lock);
    pthread_rwlock_unlock(&tok->modlock);
}

/* Logs in again on a borrowed session; failures go to err and the log. */
static int relogin(p11psk_token *tok, const p11psk_err *why, p11psk_err *err)
{
    CK_SESSION_HANDLE sess;
    p11psk_call c = P11PSK_CALL_INIT;
    char whymsg[sizeof(why->msg)];
    int st;

    snprintf(whymsg, sizeof(whymsg), "%s", why->msg); /* why and err may be the same */
    memset(err, 0, sizeof(*err));
    if ((st = token_sess_get(tok, &sess, err)) != P11PSK_ST_OK)
        return st;
    tok->logged_in = 0;
    st = token_login(tok, sess, NULL, &c, err);
    token_sess_put(tok, sess, &c);
    if (st == P11PSK_ST_OK)
        p11psk_log(P11PSK_LOG_WARN, "token '%s': logged in again after %s", tok->label, whymsg);
    else if (!p11psk_ckr_pin_refused(err->ckr)) /* a refusal has logged already */
        p11psk_log(P11PSK_LOG_ERROR, "token '%s': login again failed: %s", tok->label, err->msg);
    return st;
}

int token_relogin(p11psk_token *tok, const p11psk_err *why)
{
    p11psk_err e2;

    return relogin(tok, why, &e2);
}

int token_with_session(p11psk_token *tok, p11psk_sess_op op, void *arg, p11psk_err *err)
{
    CK_SESSION_HANDLE sess;
    p11psk_call c;
    int attempt, st;

    for (attempt = 0;; attempt++) {
        if ((st = token_sess_get(tok, &sess, err)) != P11PSK_ST_OK)
            return st;
        c = (p11psk_call)P11PSK_CALL_INIT;
        st = op(tok, sess, arg, &c, err);
        token_sess_put(tok, sess, &c);
        if (attempt > 0 || !p11psk_ckr_retryable(c.rv))
            return st;
        /* A refused PIN ends the request here, with how to fix it. */
        if (c.rv == CKR_USER_NOT_LOGGED_IN && (st = relogin(tok, err, err)) != P11PSK_ST_OK)
            return st;
    }
}

static int op_state(p11psk_token *tok, CK_SESSION_HANDLE sess, void *varg, p11psk_call *c,
                    p11psk_err *err)
{
    CK_SESSION_INFO si;

    if (P11CALL(c, err, tok->fl, C_GetSessionInfo, sess, &si) != CKR_OK)
        return P11PSK_ST_TOKEN;
    *(CK_STATE *)varg = si.state;
    return P11PSK_ST_OK;
}

int token_login_lost(p11psk_token *tok)
{
    CK_STATE state = CKS_RO_USER_FUNCTIONS;
    p11psk_err err;

    if (tok->pin == NULL && tok->pin_source == NULL)
        return 0;
    if (token_with_session(tok, op_state, &state, &err) != P11PSK_ST_OK)
        return 0;
    return state == CKS_RO_PUBLIC_SESSION || state == CKS_RW_PUBLIC_SESSION;
}

/* ---- state ---- */

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
