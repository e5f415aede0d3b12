/* SPDX-License-Identifier: Apache-2.0 */
/* p11pskd.conf: shared by the daemon and the CLI. "key = value" lines, '#' comments. */
#ifndef P11PSK_KEYSVC_CONFIG_H
#define P11PSK_KEYSVC_CONFIG_H

#include <stddef.h>
#include <sys/types.h>

#include "acl.h"
#include "policy.h"

#define P11PSK_DEFAULT_CONF "/etc/p11psk/p11pskd.conf"
#define P11PSK_DEFAULT_MODULE "/usr/lib/softhsm/libsofthsm2.so"
#define P11PSK_CONF_ENV "P11PSK_CONF"

typedef struct p11psk_config {
    char *path;          /* the file this came from */
    char *module;        /* path or p11-kit module name */
    char *token_uri;     /* RFC 7512 token URI, or NULL: the only initialised token */
    char *pin_source;    /* "file:PATH" or "/PATH" (from pin-source or the URI), or NULL */
    char *p11kit_server; /* P11_KIT_SERVER_ADDRESS for module = p11-kit-client.so, or NULL */
    char *socket;
    mode_t socket_mode;
    int has_socket_group;
    gid_t socket_gid;
    int log_level;                 /* P11PSK_LOG_* */
    unsigned threads;              /* worker threads = PKCS#11 sessions; 0: one per CPU */
    unsigned max_connections;      /* all peers together */
    unsigned max_connections_peer; /* per peer uid */
    unsigned request_timeout_ms;   /* a started request must arrive (or be read) in time */
    unsigned busy_poll_us;         /* workers poll without sleeping this long after work */
    int busy_poll_idle;            /* ... but only while a CPU is idle (runnable < CPUs) */
    unsigned accept_rate_per_uid;  /* new connections per second per uid, 0 = unlimited */
    int cache;                     /* cache PSK-only values (early secret, ...) */
    unsigned cache_ttl_s;
    unsigned cache_size;          /* entries */
    unsigned metrics_top_keys;    /* keys with usage counters in STATUS; 0: none */
    unsigned revalidate_ms;       /* cached keys are re-checked in the token this often */
    unsigned revalidate_value_ms; /* ... and their values (fingerprints) this often */
    p11psk_acl acl;
    p11psk_policy policy;
} p11psk_config;

/* The file to read: arg if given, else $P11PSK_CONF, else the default. */
const char *p11psk_config_path(const char *arg);

/* Fills cfg with defaults, then the file. Returns 1, or 0 with "FILE:LINE: problem; fix". */
int p11psk_config_load(const char *path, p11psk_config *cfg, char *err, size_t errlen);
void p11psk_config_free(p11psk_config *cfg);

/*
 * p11pskd only, at start and on reload: refuses a config file that anyone but its owner
 * may change or whose owner is neither root nor us, and a PIN file (pin-source) that others
 * may read or change: readable or writable by other, writable by its group, or readable by
 * a group other than ours. Returns 0, or -1 with the file, its mode and owner and the fix.
 */
int p11psk_config_check_files(const p11psk_config *cfg, char *err, size_t errlen);

/*
 * Reads a PIN from a pin source ("file:PATH" or an absolute path): the first line, trailing
 * newline stripped. *pin is OPENSSL_secure_malloc'd; free with p11psk_pin_free.
 */
int p11psk_pin_read(const char *source, char **pin, size_t *pinlen, char *err, size_t errlen);
void p11psk_pin_free(char *pin, size_t pinlen);

#endif
