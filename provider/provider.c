/* SPDX-License-Identifier: Apache-2.0 */
/*
 * p11psk OpenSSL 3 provider: TLS13-KDF and TLS1-PRF that accept p11psk handles in place of
 * raw PSKs and have p11pskd derive from the key in the PKCS#11 token. Calls without a handle
 * are passed to another provider through a child library context.
 */
#define _GNU_SOURCE
#include "prov.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/params.h>
#include <openssl/provider.h>

#include "p11psk/client.h"

#ifndef P11PSK_VERSION
#define P11PSK_VERSION "unknown"
#endif

#define P11PSK_TIMEOUT_MAX_MS 600000

static const OSSL_ITEM p11psk_reasons[] = {
    {P11PSK_R_SERVICE_UNREACHABLE, "service unreachable"},
    {P11PSK_R_SERVICE_TIMEOUT, "service timed out"},
    {P11PSK_R_CONNECTION_LOST, "service connection lost"},
    {P11PSK_R_KEY_NOT_FOUND, "key not found"},
    {P11PSK_R_ACCESS_DENIED, "access denied"},
    {P11PSK_R_TOKEN_ERROR, "token error"},
    {P11PSK_R_TOKEN_UNAVAILABLE, "token unavailable"},
    {P11PSK_R_BAD_HANDLE, "bad handle"},
    {P11PSK_R_KEY_NOT_READABLE, "key not readable"},
    {P11PSK_R_UNSUPPORTED, "unsupported"},
    {P11PSK_R_POLICY, "refused by policy"},
    {P11PSK_R_PROTOCOL_ERROR, "protocol error"},
    {P11PSK_R_INTERNAL, "internal error"},
    {P11PSK_R_HANDLE_MODE, "handle not supported in this mode"},
    {P11PSK_R_MISSING_PARAM, "missing parameter"},
    {P11PSK_R_BAD_PARAM, "invalid parameter"},
    {P11PSK_R_BAD_CONFIG, "invalid configuration"},
    {P11PSK_R_DELEGATE_FAILED, "no provider to delegate to"},
    {P11PSK_R_UNTRUSTED_DAEMON, "p11pskd run by a user not allowed"},
    {0, NULL}};

const char *p11psk_reason_str(int reason)
{
    size_t i;

    for (i = 0; p11psk_reasons[i].ptr != NULL; i++)
        if (p11psk_reasons[i].id == (unsigned int)reason)
            return p11psk_reasons[i].ptr;
    return "error";
}

static const OSSL_ALGORITHM p11psk_kdfs[] = {
    {P11PSK_KDF_TLS13_NAME, P11PSK_PROV_PROPS, p11psk_tls13_kdf_functions,
     "TLS 1.3 KDF accepting p11psk PSK handles"},
    {P11PSK_KDF_TLS1_PRF_NAME, P11PSK_PROV_PROPS, p11psk_tls1_prf_functions,
     "TLS 1.0-1.2 PRF accepting p11psk PSK handles"},
    {NULL, NULL, NULL, NULL}};

static OSSL_FUNC_core_get_libctx_fn *c_get_libctx;
static int selection_checked;
static _Thread_local int in_selection_check;

/*
 * Warns once per process when the application's library context would not pick our KDFs
 * (no `default_properties = ?p11psk.handles=yes`): libssl would then use handles as raw keys.
 * OpenSSL 3.0 cannot show a context's default properties, so this asks the context itself,
 * from the first KDF query: by then the application's alg_section has been applied. The
 * fetch queries us again on this thread, hence the guard; a fetch that fails tells nothing
 * and is retried at the next query.
 * Only stderr: OpenSSL has no warning level, and any error left on the queue makes
 * SSL_get_error() turn a non-blocking handshake's "want read" into SSL_ERROR_SSL, which
 * would break raw-key and certificate connections that work.
 */
static void check_selected(const P11PSK_PROV_CTX *pc)
{
    static const char warning[] =
        "default_properties of this library context do not select p11psk (add "
        "default_properties = ?p11psk.handles=yes); applications may use handles as raw keys";
    EVP_KDF *kdf;
    int ours;

    if (in_selection_check || c_get_libctx == NULL ||
        __atomic_load_n(&selection_checked, __ATOMIC_ACQUIRE))
        return;
    in_selection_check = 1;
    ERR_set_mark();
    kdf = EVP_KDF_fetch((OSSL_LIB_CTX *)c_get_libctx(pc->handle), "TLS13-KDF", NULL);
    ERR_pop_to_mark();
    in_selection_check = 0;
    if (kdf == NULL)
        return;
    ours = OSSL_PROVIDER_get0_provider_ctx(EVP_KDF_get0_provider(kdf)) == pc;
    EVP_KDF_free(kdf);
    if (__atomic_exchange_n(&selection_checked, 1, __ATOMIC_ACQ_REL) || ours)
        return;
    fprintf(stderr, "p11psk: %s\n", warning);
}

static const OSSL_ALGORITHM *p11psk_query(void *provctx, int operation_id, int *no_cache)
{
    *no_cache = 0;
    if (operation_id == OSSL_OP_KDF)
        check_selected(provctx);
    return operation_id == OSSL_OP_KDF ? p11psk_kdfs : NULL;
}

static const OSSL_ITEM *p11psk_get_reason_strings(void *provctx)
{
    return p11psk_reasons;
}

static const OSSL_PARAM *p11psk_gettable_params(void *provctx)
{
    static const OSSL_PARAM gettable[] = {OSSL_PARAM_utf8_ptr(OSSL_PROV_PARAM_NAME, NULL, 0),
                                          OSSL_PARAM_utf8_ptr(OSSL_PROV_PARAM_VERSION, NULL, 0),
                                          OSSL_PARAM_utf8_ptr(OSSL_PROV_PARAM_BUILDINFO, NULL, 0),
                                          OSSL_PARAM_int(OSSL_PROV_PARAM_STATUS, NULL),
                                          OSSL_PARAM_END};

    return gettable;
}

static int p11psk_get_params(void *provctx, OSSL_PARAM params[])
{
    OSSL_PARAM *p;

    p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_NAME);
    if (p != NULL && !OSSL_PARAM_set_utf8_ptr(p, P11PSK_PROV_NAME))
        return 0;
    p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_VERSION);
    if (p != NULL && !OSSL_PARAM_set_utf8_ptr(p, P11PSK_VERSION))
        return 0;
    p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_BUILDINFO);
    if (p != NULL && !OSSL_PARAM_set_utf8_ptr(p, "p11psk " P11PSK_VERSION))
        return 0;
    p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_STATUS);
    if (p != NULL && !OSSL_PARAM_set_int(p, 1))
        return 0;
    return 1;
}

static void p11psk_teardown(void *vctx)
{
    P11PSK_PROV_CTX *pc = vctx;
    int i;

    if (pc == NULL)
        return;
    p11psk_bcache_free(pc->bcache);
    p11psk_genpage_free(pc->genpage);
    p11psk_pool_free(pc->pool);
    for (i = 0; i < P11PSK_KDF_COUNT; i++)
        EVP_KDF_free(pc->delegate[i]);
    pthread_mutex_destroy(&pc->delegate_lock);
    p11psk_keymap_free(pc->keymap);
    OSSL_LIB_CTX_free(pc->libctx);
    OPENSSL_free(pc);
}

static const OSSL_DISPATCH p11psk_dispatch[] = {
    {OSSL_FUNC_PROVIDER_TEARDOWN, (void (*)(void))p11psk_teardown},
    {OSSL_FUNC_PROVIDER_GETTABLE_PARAMS, (void (*)(void))p11psk_gettable_params},
    {OSSL_FUNC_PROVIDER_GET_PARAMS, (void (*)(void))p11psk_get_params},
    {OSSL_FUNC_PROVIDER_QUERY_OPERATION, (void (*)(void))p11psk_query},
    {OSSL_FUNC_PROVIDER_GET_REASON_STRINGS, (void (*)(void))p11psk_get_reason_strings},
    {0, NULL}};

/* This instance's view of p11pskd. */
typedef struct {
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    int timeout_ms;
    int spin_us;
    p11psk_daemon_users users;
} prov_conf;

/* A whole number in lo..hi from openssl.cnf or the environment (named src). */
static int conf_number(const char *v, const char *src, long lo, long hi, const char *unit, int *out,
                       char *err, size_t errcap)
{
    char *end;
    long t;

    errno = 0;
    t = strtol(v, &end, 10);
    if (errno != 0 || end == v || *end != '\0' || t < lo || t > hi) {
        snprintf(err, errcap, "%s \"%.64s\": expected %s in %ld..%ld", src, v, unit, lo, hi);
        return -1;
    }
    *out = (int)t;
    return 0;
}

/* The environment variable name, when set and not empty, replaces *val; *src then names it. */
static void env_override(const char *name, const char **val, const char **src)
{
    const char *env = secure_getenv(name);

    if (env != NULL && env[0] != '\0') {
        *val = env;
        *src = name;
    }
}

/*
 * Socket path, timeout, spin limit and daemon users: openssl.cnf provider section, then the
 * environment (P11PSK_SOCKET, P11PSK_TIMEOUT_MS, P11PSK_SPIN_US, P11PSK_DAEMON_USER). secure_getenv
 * ignores the environment in setuid/setgid programs (getauxval(AT_SECURE) != 0): whoever runs one
 * must not point it at a daemon of their own. Returns -1 with the first problem in err when a value
 * is invalid; the path and timeout stay usable, an invalid user list allows nobody.
 */
static int read_config(const OSSL_CORE_HANDLE *handle, const OSSL_DISPATCH *in, prov_conf *cf,
                       char *err, size_t errcap)
{
    OSSL_FUNC_core_get_params_fn *c_get_params = NULL;
    const char *cfg_path = NULL, *cfg_timeout = NULL, *cfg_spin = NULL, *cfg_users = NULL;
    const char *path_src = P11PSK_CONF_SOCKET, *timeout_src = P11PSK_CONF_TIMEOUT;
    const char *spin_src = P11PSK_CONF_SPIN, *users_src = P11PSK_CONF_DAEMON_USER;
    char why[160];
    int ret = 0;

    for (; in->function_id != 0; in++)
        if (in->function_id == OSSL_FUNC_CORE_GET_PARAMS)
            c_get_params = OSSL_FUNC_core_get_params(in);
    if (c_get_params != NULL) {
        OSSL_PARAM params[] = {OSSL_PARAM_utf8_ptr(P11PSK_CONF_SOCKET, (char **)&cfg_path, 0),
                               OSSL_PARAM_utf8_ptr(P11PSK_CONF_TIMEOUT, (char **)&cfg_timeout, 0),
                               OSSL_PARAM_utf8_ptr(P11PSK_CONF_DAEMON_USER, (char **)&cfg_users, 0),
                               OSSL_PARAM_utf8_ptr(P11PSK_CONF_SPIN, (char **)&cfg_spin, 0),
                               OSSL_PARAM_END};

        if (!c_get_params(handle, params))
            cfg_path = cfg_timeout = cfg_users = cfg_spin = NULL;
    }
    env_override("P11PSK_SOCKET", &cfg_path, &path_src);
    env_override("P11PSK_TIMEOUT_MS", &cfg_timeout, &timeout_src);
    env_override("P11PSK_SPIN_US", &cfg_spin, &spin_src);
    env_override("P11PSK_DAEMON_USER", &cfg_users, &users_src);

    if (cfg_path == NULL || cfg_path[0] == '\0')
        cfg_path = P11PSK_DEFAULT_SOCKET;
    if (strlen(cfg_path) >= sizeof(cf->path)) {
        snprintf(err, errcap, "%s: socket path longer than %zu bytes", path_src,
                 sizeof(cf->path) - 1);
        cfg_path = P11PSK_DEFAULT_SOCKET;
        ret = -1;
    }
    snprintf(cf->path, sizeof(cf->path), "%s", cfg_path);

    cf->timeout_ms = P11PSK_DEFAULT_TIMEOUT_MS;
    if (cfg_timeout != NULL &&
        conf_number(cfg_timeout, timeout_src, 1, P11PSK_TIMEOUT_MAX_MS, "milliseconds",
                    &cf->timeout_ms, ret == 0 ? err : why, ret == 0 ? errcap : sizeof(why)) != 0)
        ret = -1;
    cf->spin_us = P11PSK_SPIN_DEFAULT_US;
    if (cfg_spin != NULL &&
        conf_number(cfg_spin, spin_src, 0, P11PSK_SPIN_MAX_US, "microseconds", &cf->spin_us,
                    ret == 0 ? err : why, ret == 0 ? errcap : sizeof(why)) != 0)
        ret = -1;

    /* Default: root, and the system user packages create for p11pskd when it exists. */
    if (cfg_users == NULL) {
        p11psk_daemon_users_default(&cf->users);
    } else if (p11psk_daemon_users_parse(&cf->users, cfg_users, why, sizeof(why)) != 0) {
        if (ret == 0)
            snprintf(err, errcap, "%s: %s", users_src, why);
        ret = -1;
    }
    return ret;
}

__attribute__((visibility("default"))) int OSSL_provider_init(const OSSL_CORE_HANDLE *handle,
                                                              const OSSL_DISPATCH *in,
                                                              const OSSL_DISPATCH **out,
                                                              void **provctx)
{
    const OSSL_DISPATCH *d;
    P11PSK_PROV_CTX *pc;
    prov_conf cf;
    char bcerr[sizeof(pc->config_error)];
    unsigned bcache_ttl;

    p11psk_err_init(in);
    for (d = in; d->function_id != 0; d++)
        if (d->function_id == OSSL_FUNC_CORE_GET_LIBCTX)
            c_get_libctx = OSSL_FUNC_core_get_libctx(d);
    pc = OPENSSL_zalloc(sizeof(*pc));
    if (pc == NULL)
        return 0;
    pc->handle = handle;
    pthread_mutex_init(&pc->delegate_lock, NULL);
    memset(&cf, 0, sizeof(cf));
    if (read_config(handle, in, &cf, pc->config_error, sizeof(pc->config_error)) != 0)
        p11psk_debug("invalid configuration: %s", pc->config_error);
    /* Delegation target: mirrors the application's providers (ourselves excluded by query). */
    pc->libctx = OSSL_LIB_CTX_new_child(handle, in);
    pc->keymap = p11psk_keymap_new();
    if (pc->libctx == NULL || pc->keymap == NULL ||
        (pc->pool = p11psk_pool_new(cf.path, cf.timeout_ms, cf.spin_us, &cf.users)) == NULL ||
        (pc->genpage = p11psk_genpage_new(cf.path, cf.timeout_ms, &cf.users)) == NULL) {
        P11PSK_RAISE(pc, P11PSK_R_INTERNAL,
                     "cannot create a child library context, keymap, pool or generation page");
        OSSL_LIB_CTX_free(pc->libctx);
        p11psk_keymap_free(pc->keymap);
        p11psk_pool_free(pc->pool);
        pthread_mutex_destroy(&pc->delegate_lock);
        OPENSSL_free(pc);
        return 0;
    }
    /* An invalid TTL fails handle operations like any invalid setting (the first one wins). */
    if (p11psk_bcache_conf(handle, in, &bcache_ttl, bcerr, sizeof(bcerr)) != 0) {
        if (pc->config_error[0] == '\0')
            memcpy(pc->config_error, bcerr, sizeof(bcerr));
        p11psk_debug("invalid configuration: %s", bcerr);
    } else {
        pc->bcache = p11psk_bcache_new(bcache_ttl, pc->genpage);
    }
    p11psk_debug("provider %s loaded: socket %s, timeout %d ms, spin up to %d us, daemon users %s",
                 P11PSK_VERSION, cf.path, cf.timeout_ms, cf.spin_us,
                 cf.users.n > 0 ? cf.users.names : "(none)");
    *out = p11psk_dispatch;
    *provctx = pc;
    return 1;
}
