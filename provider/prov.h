/* SPDX-License-Identifier: Apache-2.0 */
/* Shared by the provider's files: provider context, error reasons, raise macro, helpers. */
#ifndef P11PSK_PROV_H
#define P11PSK_PROV_H

/*
 * Return values. Functions the core calls (OSSL_provider_init and everything in a dispatch
 * table) follow OpenSSL: 1 = success, 0 = failure. Internal functions that can fail follow the
 * project: 0 = success, negative = failure. Those that reach the operator raise with
 * P11PSK_RAISE before failing; the parameter-storage helpers (p11psk_bytes_*, p11psk_str_*)
 * leave that to their caller, which names the parameter. Predicates (p11psk_bytes_has_magic,
 * p11psk_debug_enabled, p11psk_kdf_takes) return nonzero for true; lookups return the value or
 * a sentinel (p11psk_kdf_md: P11PSK_MD_NONE, p11psk_kdf_alg: NULL).
 */

#include <stddef.h>
#include <stdint.h>

#include <openssl/core.h>
#include <openssl/kdf.h>
#include <pthread.h>
#include <openssl/core_dispatch.h>
#include <openssl/crypto.h>

#include "p11psk/client.h"
#include "p11psk/handle.h"
#include "p11psk/wire.h"

#define P11PSK_PROV_NAME "p11psk"
#define P11PSK_PROV_PROPS "provider=p11psk,p11psk.handles=yes"
/* Delegation query: an empty query would find these same KDFs again. */
#define P11PSK_DELEGATE_PROPQ "provider!=p11psk"
#define P11PSK_CONF_SOCKET "p11psk-socket"
#define P11PSK_CONF_TIMEOUT "p11psk-timeout-ms"
/* How long a thread may poll for p11pskd's answer before sleeping; only while a CPU is idle. */
#define P11PSK_CONF_SPIN "p11psk-spin-us"
#define P11PSK_SPIN_DEFAULT_US 200
#define P11PSK_SPIN_MAX_US 10000
#define P11PSK_CONF_BCACHE_TTL "p11psk-binder-cache-ttl"
#define P11PSK_BCACHE_TTL_DEFAULT 60 /* seconds */

typedef struct p11psk_bcache P11PSK_BCACHE;
typedef struct p11psk_genpage P11PSK_GENPAGE;
#define P11PSK_CONF_DAEMON_USER "p11psk-daemon-user"

/* The KDFs this provider implements: indexes the algorithm table and the delegate cache. */
enum p11psk_kdf_id { P11PSK_KDF_TLS13, P11PSK_KDF_TLS1_PRF, P11PSK_KDF_COUNT };

#define P11PSK_KDF_TLS13_NAME "TLS13-KDF"
#define P11PSK_KDF_TLS1_PRF_NAME "TLS1-PRF"

/* keymap.c: early-secret placeholder reference -> PSK handle (binary), per provider. */
#define P11PSK_KEYMAP_MAX 1024
typedef struct p11psk_keymap p11psk_keymap;
p11psk_keymap *p11psk_keymap_new(void);
void p11psk_keymap_free(p11psk_keymap *km); /* cleanses; NULL is fine */
/* Remembers ref -> psk; the oldest entry goes when the map is full. */
void p11psk_keymap_put(p11psk_keymap *km, const uint8_t *ref, size_t reflen,
                       const uint8_t psk[P11PSK_HANDLE_LEN]);
/* 0 and psk, or -1 if ref is unknown (evicted, or made by another process). */
int p11psk_keymap_get(p11psk_keymap *km, const uint8_t *ref, size_t reflen,
                      uint8_t psk[P11PSK_HANDLE_LEN]);
/* conn.c: one library context's connections to its p11pskd. */
typedef struct p11psk_pool P11PSK_POOL;

typedef struct p11psk_prov_ctx {
    const OSSL_CORE_HANDLE *handle;
    /*
     * Socket, timeout, allowed daemon users and connections of this instance: one per
     * OSSL_LIB_CTX, so that two contexts configured for two daemons never share one.
     */
    P11PSK_POOL *pool;
    OSSL_LIB_CTX *libctx; /* child of the application's libctx, for delegation */
    /*
     * Set when openssl.cnf or the environment is invalid. The provider still loads and fails
     * every handle operation with this text: were it not loaded, the default provider would
     * take handles for raw keys.
     */
    char config_error[256];
    /* Delegates fetched once: libssl derives ~20 times per handshake, and a fetch with a
     * property query of its own is a slow path in OpenSSL 3.0. */
    pthread_mutex_t delegate_lock;
    EVP_KDF *delegate[P11PSK_KDF_COUNT]; /* by enum p11psk_kdf_id */
    p11psk_keymap *keymap;               /* early-secret placeholders made here */
    P11PSK_BCACHE *bcache;               /* binder keys (bcache.c); NULL: not caching */
    P11PSK_GENPAGE *genpage;             /* this context's p11pskd generation page */
} P11PSK_PROV_CTX;

/* Error reasons; the strings are registered with the core (provider.c). */
enum p11psk_reason {
    P11PSK_R_SERVICE_UNREACHABLE = 100,
    P11PSK_R_SERVICE_TIMEOUT,
    P11PSK_R_CONNECTION_LOST,
    P11PSK_R_KEY_NOT_FOUND,
    P11PSK_R_ACCESS_DENIED,
    P11PSK_R_TOKEN_ERROR,
    P11PSK_R_TOKEN_UNAVAILABLE,
    P11PSK_R_BAD_HANDLE,
    P11PSK_R_KEY_NOT_READABLE,
    P11PSK_R_UNSUPPORTED,
    P11PSK_R_POLICY,
    P11PSK_R_PROTOCOL_ERROR,
    P11PSK_R_INTERNAL,
    P11PSK_R_HANDLE_MODE,
    P11PSK_R_MISSING_PARAM,
    P11PSK_R_BAD_PARAM,
    P11PSK_R_BAD_CONFIG,
    P11PSK_R_DELEGATE_FAILED,
    P11PSK_R_UNTRUSTED_DAEMON,
};

/* err.c */
void p11psk_err_init(const OSSL_DISPATCH *in);
int p11psk_debug_enabled(void);
void p11psk_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void p11psk_raise(const OSSL_CORE_HANDLE *handle, const char *file, int line, const char *func,
                  int reason, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
const char *p11psk_reason_str(int reason); /* provider.c */

/*
 * The provider's one error path: logs (stderr, only with P11PSK_DEBUG set) and pushes an
 * OpenSSL error through the core, like ERR_raise_data. Never ERR_raise directly: only the
 * core's upcalls file the error under this provider and its reason strings. The data is for
 * the operator: never key bytes or derived secrets.
 */
#define P11PSK_RAISE(pc, reason, ...)                                                              \
    p11psk_raise((pc) != NULL ? (pc)->handle : NULL, OPENSSL_FILE, OPENSSL_LINE, OPENSSL_FUNC,     \
                 (reason), __VA_ARGS__)

/* conn.c. The pool copies what it is given; NULL when out of memory. */
P11PSK_POOL *p11psk_pool_new(const char *path, int timeout_ms, int spin_us,
                             const p11psk_daemon_users *users);
/* At provider teardown: closes every connection and cleanses the buffers. */
void p11psk_pool_free(P11PSK_POOL *pool);
/*
 * Finishes and sends req, expects status OK with field outtag of exactly outlen bytes, copied
 * to out, and returns 0. Raises the mapped error and returns -1 otherwise. req is cleansed in
 * every case.
 */
int p11psk_svc_call(const P11PSK_PROV_CTX *pc, p11psk_frame *req, int outtag, uint8_t *out,
                    size_t outlen);

/* kdf_common.c: parameter storage shared by the KDFs. p == NULL means "not set". */
typedef struct {
    unsigned char *p;
    size_t len;
} p11psk_bytes;

int p11psk_bytes_set(p11psk_bytes *b, const OSSL_PARAM *p);
int p11psk_bytes_append(p11psk_bytes *b, const OSSL_PARAM *p, size_t max);
int p11psk_bytes_dup(p11psk_bytes *dst, const p11psk_bytes *src);
void p11psk_bytes_clear(p11psk_bytes *b);
int p11psk_str_set(char **s, const OSSL_PARAM *p);
int p11psk_str_dup(char **dst, const char *src);
int p11psk_bytes_has_magic(const p11psk_bytes *b);

/* kdf_ctx.c: one algorithm table and one context for every KDF (as OpenSSL's hkdf.c). */
typedef struct {
    const char *name;           /* OpenSSL's name; the delegate is fetched by it */
    const OSSL_PARAM *settable; /* read by set_ctx_params and passed on to the delegate */
    const OSSL_PARAM *gettable; /* answered by get_ctx_params */
} P11PSK_KDF_ALG;

typedef struct {
    P11PSK_PROV_CTX *provctx;
    int id; /* enum p11psk_kdf_id */
    const P11PSK_KDF_ALG *alg;
    int mode; /* an EVP_KDF_HKDF_MODE_*; settable in TLS13-KDF only */
    char *digest;
    char *propq;
    /* TLS13-KDF */
    p11psk_bytes key;
    p11psk_bytes salt;
    p11psk_bytes prefix;
    p11psk_bytes label;
    p11psk_bytes data;
    /* TLS1-PRF */
    p11psk_bytes secret;
    p11psk_bytes seed; /* SEED params concatenate */
} P11PSK_KDF_CTX;

const P11PSK_KDF_ALG *p11psk_kdf_alg(int id);
int p11psk_kdf_takes(const P11PSK_KDF_CTX *ctx, const char *key);
/* The parameters set in ctx, for the delegate; params needs P11PSK_KDF_PARAMS_MAX entries. */
#define P11PSK_KDF_PARAMS_MAX 11
void p11psk_kdf_ctx_params(const P11PSK_KDF_CTX *ctx, OSSL_PARAM params[]);

/* Core-facing (1 = success); each KDF's newctx calls p11psk_kdf_new with its id. */
void *p11psk_kdf_new(void *provctx, int id);
OSSL_FUNC_kdf_freectx_fn p11psk_kdf_free;
OSSL_FUNC_kdf_reset_fn p11psk_kdf_reset;
OSSL_FUNC_kdf_dupctx_fn p11psk_kdf_dup;
OSSL_FUNC_kdf_set_ctx_params_fn p11psk_kdf_set_ctx_params;
OSSL_FUNC_kdf_get_ctx_params_fn p11psk_kdf_get_ctx_params;

/* kdf_common.c: handle checks and delegation. */
/* Resolves a DIGEST name for a handle operation; raises "unsupported" naming it. */
int p11psk_kdf_md(const P11PSK_PROV_CTX *pc, const char *alg, const char *digest);
/* Decodes a buffer known to carry the magic, wanting type (and digest md for ES handles). */
int p11psk_kdf_decode(const P11PSK_PROV_CTX *pc, const char *what, const uint8_t *buf, size_t len,
                      int type, int md, p11psk_handle *h);
/* Runs ctx's algorithm with ctx's parameters in another provider (no handle involved). */
int p11psk_kdf_delegate(const P11PSK_KDF_CTX *ctx, unsigned char *out, size_t outlen);

/*
 * genpage.c: p11pskd's key generation page, mapped once per provider context. read: the current
 * generation with one load, 0 when there is no usable page (then nothing may be cached).
 * want: after a successful round trip, fetches the page if there is none (GEN_PAGE, at most
 * every few seconds; never with P11PSK_NO_GEN_PAGE set), and replaces one p11pskd marked
 * dead as it stopped.
 */
P11PSK_GENPAGE *p11psk_genpage_new(const char *path, int timeout_ms,
                                   const p11psk_daemon_users *users);
void p11psk_genpage_free(P11PSK_GENPAGE *gp); /* NULL is fine */
uint64_t p11psk_genpage_read(P11PSK_GENPAGE *gp);
void p11psk_genpage_want(P11PSK_GENPAGE *gp);

/* bcache.c: binder keys of TLS 1.3 handles, per provider context. */
typedef struct {
    int takes;     /* a binder-key expand under a usable generation: fill after the call */
    int want_page; /* no generation page: fetch one after the call, cache nothing */
    int label;     /* which binder label */
    uint64_t gen;  /* generation seen before the call */
} p11psk_bcache_ticket;

/* p11psk-binder-cache-ttl from openssl.cnf: 0, or -1 with the reason in err. */
int p11psk_bcache_conf(const OSSL_CORE_HANDLE *handle, const OSSL_DISPATCH *in, unsigned *ttl_s,
                       char *err, size_t errlen);
/* NULL when ttl_s is 0 or the memory cannot be locked and kept out of dumps: no cache. */
P11PSK_BCACHE *p11psk_bcache_new(unsigned ttl_s, P11PSK_GENPAGE *gp);
void p11psk_bcache_free(P11PSK_BCACHE *bc);
/* 0: out holds the cached binder key. -1: ask p11pskd, then (on success only)
 * p11psk_bcache_put with t. */
int p11psk_bcache_get(P11PSK_BCACHE *bc, const P11PSK_KDF_CTX *ctx, int md, uint8_t *out,
                      size_t outlen, p11psk_bcache_ticket *t);
void p11psk_bcache_put(P11PSK_BCACHE *bc, const P11PSK_KDF_CTX *ctx, int md, const uint8_t *val,
                       size_t len, const p11psk_bcache_ticket *t);

/* Each KDF's file: its parameter lists (for the table) and its dispatch table. */
extern const OSSL_PARAM p11psk_tls13_kdf_settable[];
extern const OSSL_PARAM p11psk_tls13_kdf_gettable[];
extern const OSSL_DISPATCH p11psk_tls13_kdf_functions[];
extern const OSSL_PARAM p11psk_tls1_prf_settable[];
extern const OSSL_PARAM p11psk_tls1_prf_gettable[];
extern const OSSL_DISPATCH p11psk_tls1_prf_functions[];

#endif
