/* SPDX-License-Identifier: Apache-2.0 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <openssl/crypto.h>
#include <p11-kit/uri.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "p11psk/client.h"
#include "parse.h"

#define PIN_MAX 256

const char *p11psk_config_path(const char *arg)
{
    const char *env;

    if (arg != NULL)
        return arg;
    env = getenv(P11PSK_CONF_ENV);
    return env != NULL && *env != '\0' ? env : P11PSK_DEFAULT_CONF;
}

static int set_str(char **slot, const char *v, char *err, size_t errlen)
{
    char *s = strdup(v);

    if (s == NULL) {
        snprintf(err, errlen, "out of memory");
        return 0;
    }
    free(*slot);
    *slot = s;
    return 1;
}

static int pin_source_ok(const char *v)
{
    return strncmp(v, "file:", 5) == 0 ? v[5] == '/' : v[0] == '/';
}

static int set_token(p11psk_config *cfg, const char *v, char *err, size_t errlen)
{
    P11KitUri *uri = p11_kit_uri_new();
    const char *ps;
    int rc;

    if (uri == NULL) {
        snprintf(err, errlen, "out of memory");
        return 0;
    }
    rc = p11_kit_uri_parse(v, P11_KIT_URI_FOR_TOKEN, uri);
    if (rc != P11_KIT_URI_OK) {
        snprintf(err, errlen, "bad token URI (%s); write e.g. token = pkcs11:token=MyLabel",
                 p11_kit_uri_message(rc));
        p11_kit_uri_free(uri);
        return 0;
    }
    ps = p11_kit_uri_get_pin_source(uri);
    if (ps != NULL && !pin_source_ok(ps)) {
        snprintf(err, errlen, "pin-source in the token URI must be file:/ABSOLUTE/PATH");
        p11_kit_uri_free(uri);
        return 0;
    }
    /* An explicit pin-source line wins over the URI attribute, whatever the order. */
    rc = set_str(&cfg->token_uri, v, err, errlen) &&
         (ps == NULL || cfg->pin_source != NULL || set_str(&cfg->pin_source, ps, err, errlen));
    p11_kit_uri_free(uri);
    return rc;
}

static int set_mode(p11psk_config *cfg, const char *v, char *err, size_t errlen)
{
    unsigned long m;

    if (p11psk_parse_uint(v, 8, 0777, &m) != 0) {
        snprintf(err, errlen, "socket-mode must be octal permission bits, e.g. 0660");
        return 0;
    }
    cfg->socket_mode = (mode_t)m;
    return 1;
}

static int set_group(p11psk_config *cfg, const char *v, char *err, size_t errlen)
{
    struct group *gr;
    unsigned long g;
    int rc =
        isdigit((unsigned char)*v) ? p11psk_parse_uint(v, 10, (gid_t)-1 - 1, &g) : P11PSK_PARSE_BAD;

    /* gid_t is 32 bits: a larger number would wrap (4294967296 is root's group), and
     * (gid_t)-1 means "leave unchanged" to chown. Anything else not a number is a name. */
    if (rc == P11PSK_PARSE_RANGE) {
        snprintf(err, errlen, "socket-group %s is not a valid gid", v);
        return 0;
    }
    if (rc == 0) {
        cfg->socket_gid = (gid_t)g;
        cfg->has_socket_group = 1;
        return 1;
    }
    if ((gr = getgrnam(v)) == NULL) {
        snprintf(err, errlen, "unknown group '%s'; create it or give a numeric gid", v);
        return 0;
    }
    cfg->socket_gid = gr->gr_gid;
    cfg->has_socket_group = 1;
    return 1;
}

static int set_uint(unsigned *slot, const char *key, const char *v, unsigned lo, unsigned hi,
                    char *err, size_t errlen)
{
    unsigned long n;

    if (p11psk_parse_uint(v, 10, hi, &n) != 0 || n < lo) {
        snprintf(err, errlen, "%s must be a number from %u to %u", key, lo, hi);
        return 0;
    }
    *slot = (unsigned)n;
    return 1;
}

static int apply(p11psk_config *cfg, const char *key, const char *v, const char *where, char *err,
                 size_t errlen)
{
    int lvl, ok;

    if (strcmp(key, "allow") == 0)
        return p11psk_acl_add(&cfg->acl, v, where, err, errlen);
    if (strcmp(key, "allow-status") == 0)
        return p11psk_acl_add_perm(&cfg->acl, P11PSK_ACL_STATUS, v, where, err, errlen);
    if (strcmp(key, "allow-admin") == 0)
        return p11psk_acl_add_perm(&cfg->acl, P11PSK_ACL_ADMIN, v, where, err, errlen);
    if (*v == '\0') {
        snprintf(err, errlen, "'%s' needs a value: %s = VALUE", key, key);
        return 0;
    }
    if (p11psk_policy_set(&cfg->policy, key, v, &ok, err, errlen))
        return ok;
    if (strcmp(key, "module") == 0)
        return set_str(&cfg->module, v, err, errlen);
    if (strcmp(key, "token") == 0)
        return set_token(cfg, v, err, errlen);
    if (strcmp(key, "pin-source") == 0) {
        if (!pin_source_ok(v)) {
            snprintf(err, errlen, "pin-source must be file:/ABSOLUTE/PATH or /ABSOLUTE/PATH");
            return 0;
        }
        return set_str(&cfg->pin_source, v, err, errlen);
    }
    if (strcmp(key, "p11-kit-server-address") == 0) {
        if (strncmp(v, "unix:path=", 10) != 0 && strncmp(v, "vsock:", 6) != 0) {
            snprintf(err, errlen,
                     "p11-kit-server-address must look like "
                     "unix:path=/run/p11-kit/pkcs11 (as `p11-kit server` prints)");
            return 0;
        }
        return set_str(&cfg->p11kit_server, v, err, errlen);
    }
    if (strcmp(key, "socket") == 0) {
        if (v[0] != '/' || strlen(v) >= 108) {
            snprintf(err, errlen, "socket must be an absolute path shorter than 108 bytes");
            return 0;
        }
        return set_str(&cfg->socket, v, err, errlen);
    }
    if (strcmp(key, "socket-mode") == 0)
        return set_mode(cfg, v, err, errlen);
    if (strcmp(key, "socket-group") == 0)
        return set_group(cfg, v, err, errlen);
    if (strcmp(key, "cache") == 0) {
        if (strcmp(v, "on") != 0 && strcmp(v, "off") != 0) {
            snprintf(err, errlen, "cache must be on or off");
            return 0;
        }
        cfg->cache = strcmp(v, "on") == 0;
        return 1;
    }
    if (strcmp(key, "cache-ttl") == 0)
        return set_uint(&cfg->cache_ttl_s, key, v, 1, 86400, err, errlen);
    if (strcmp(key, "metrics-top-keys") == 0)
        return set_uint(&cfg->metrics_top_keys, key, v, 0, 200, err, errlen);
    if (strcmp(key, "cache-size") == 0)
        return set_uint(&cfg->cache_size, key, v, 1, 1000000, err, errlen);
    if (strcmp(key, "revalidate-ms") == 0)
        return set_uint(&cfg->revalidate_ms, key, v, 0, 3600000, err, errlen);
    if (strcmp(key, "revalidate-value-ms") == 0)
        return set_uint(&cfg->revalidate_value_ms, key, v, 0, 86400000, err, errlen);
    if (strcmp(key, "threads") == 0)
        return set_uint(&cfg->threads, key, v, 0, 64, err, errlen);
    if (strcmp(key, "max-connections") == 0)
        return set_uint(&cfg->max_connections, key, v, 1, 65536, err, errlen);
    if (strcmp(key, "max-connections-per-peer") == 0)
        return set_uint(&cfg->max_connections_peer, key, v, 1, 65536, err, errlen);
    if (strcmp(key, "busy-poll-us") == 0)
        return set_uint(&cfg->busy_poll_us, key, v, 0, 10000, err, errlen);
    if (strcmp(key, "busy-poll-idle") == 0) {
        if (strcmp(v, "on") != 0 && strcmp(v, "off") != 0) {
            snprintf(err, errlen, "busy-poll-idle must be on or off");
            return 0;
        }
        cfg->busy_poll_idle = strcmp(v, "on") == 0;
        return 1;
    }
    if (strcmp(key, "accept-rate-per-uid") == 0)
        return set_uint(&cfg->accept_rate_per_uid, key, v, 0, 1000000, err, errlen);
    if (strcmp(key, "request-timeout-ms") == 0)
        return set_uint(&cfg->request_timeout_ms, key, v, 100, 600000, err, errlen);
    if (strcmp(key, "log-level") == 0) {
        if ((lvl = p11psk_log_level_from_name(v)) < 0) {
            snprintf(err, errlen, "log-level must be error, warn, info or debug");
            return 0;
        }
        cfg->log_level = lvl;
        return 1;
    }
    snprintf(err, errlen,
             "unknown key '%s'; known keys: module, p11-kit-server-address, token, pin-source, "
             "socket, socket-mode, "
             "socket-group, log-level, threads, max-connections, max-connections-per-peer, "
             "request-timeout-ms, accept-rate-per-uid, busy-poll-us, busy-poll-idle, cache, "
             "cache-ttl, cache-size, revalidate-ms, revalidate-value-ms, metrics-top-keys, allow, "
             "allow-status, "
             "allow-admin, allow-psk-ke, readable-keys, digests, rate-limit",
             key);
    return 0;
}

static char *trim(char *s)
{
    char *e;

    while (isspace((unsigned char)*s))
        s++;
    e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

static int is_rule_key(const char *k)
{
    return strcmp(k, "allow") == 0 || strcmp(k, "allow-status") == 0 ||
           strcmp(k, "allow-admin") == 0;
}

/* Splits "key = value" (or "allow GLOB ..."). '#' starts a comment at a line or word start. */
static int split_line(char *line, char **key, char **val)
{
    char *p, *k;

    for (p = line; *p != '\0'; p++)
        if (*p == '#' && (p == line || isspace((unsigned char)p[-1]))) {
            *p = '\0';
            break;
        }
    k = trim(line);
    if (*k == '\0') {
        *key = NULL;
        return 1;
    }
    p = k;
    while (*p != '\0' && *p != '=' && !isspace((unsigned char)*p))
        p++;
    *key = k;
    if (*p == '\0')
        return is_rule_key(k) ? (*val = p, 1) : 0;
    if (*p != '=')
        *p++ = '\0';
    p = trim(p);
    if (*p == '=') {
        *p++ = '\0';
        *val = trim(p);
        return 1;
    }
    if (is_rule_key(k)) { /* "allow GLOB ..." needs no '=' */
        *val = p;
        return 1;
    }
    return 0;
}

int p11psk_config_load(const char *path, p11psk_config *cfg, char *err, size_t errlen)
{
    char line[4096], where[64], msg[512], *key, *val;
    unsigned lineno = 0;
    FILE *f;
    int ok = 1;

    memset(cfg, 0, sizeof(*cfg));
    cfg->socket_mode = 0660;
    cfg->log_level = P11PSK_LOG_INFO;
    p11psk_policy_defaults(&cfg->policy);
    cfg->max_connections = 1024;
    cfg->max_connections_peer = 256;
    cfg->request_timeout_ms = 10000;
    cfg->accept_rate_per_uid = 400;
    cfg->cache = 1;
    cfg->busy_poll_us = 1000;
    cfg->busy_poll_idle = 1;
    cfg->cache_ttl_s = 300;
    cfg->cache_size = 16384;
    cfg->metrics_top_keys = 20;
    cfg->revalidate_ms = 1000;
    cfg->revalidate_value_ms = 60000;
    if (!set_str(&cfg->path, path, err, errlen) ||
        !set_str(&cfg->module, P11PSK_DEFAULT_MODULE, err, errlen) ||
        !set_str(&cfg->socket, P11PSK_DEFAULT_SOCKET, err, errlen)) {
        p11psk_config_free(cfg);
        return 0;
    }
    if ((f = fopen(path, "re")) == NULL) {
        snprintf(err, errlen, "%s: %s; give another file with --config FILE or $%s", path,
                 strerror(errno), P11PSK_CONF_ENV);
        p11psk_config_free(cfg); /* the defaults above are on the heap */
        return 0;
    }
    while (ok && fgets(line, sizeof(line), f) != NULL) {
        lineno++;
        snprintf(where, sizeof(where), "%s:%u", path, lineno);
        if (strchr(line, '\n') == NULL && !feof(f)) {
            snprintf(err, errlen, "%s: line too long (max %zu bytes)", where, sizeof(line) - 2);
            ok = 0;
            break;
        }
        if (!split_line(line, &key, &val)) {
            snprintf(err, errlen, "%s: malformed line; write 'key = value' or 'allow GLOB ...'",
                     where);
            ok = 0;
        } else if (key != NULL && !apply(cfg, key, val, where, msg, sizeof(msg))) {
            snprintf(err, errlen, "%s: %s", where, msg);
            ok = 0;
        }
    }
    fclose(f);
    if (!ok)
        p11psk_config_free(cfg);
    return ok;
}

void p11psk_config_free(p11psk_config *cfg)
{
    free(cfg->path);
    free(cfg->module);
    free(cfg->token_uri);
    free(cfg->pin_source);
    free(cfg->p11kit_server);
    free(cfg->socket);
    p11psk_acl_free(&cfg->acl);
    memset(cfg, 0, sizeof(*cfg));
}

/* "root:p11psk": the owner and group a file of ours should have, for messages. */
static void our_owner(char *out, size_t cap)
{
    struct group *gr = getgrgid(getegid());
    struct passwd *pw = getpwuid(geteuid());

    if (geteuid() == 0 || pw == NULL)
        snprintf(out, cap, "root:");
    else
        snprintf(out, cap, "%s:", pw->pw_name);
    if (gr != NULL)
        snprintf(out + strlen(out), cap - strlen(out), "%s", gr->gr_name);
    else
        snprintf(out + strlen(out), cap - strlen(out), "%lu", (unsigned long)getegid());
}

static int owner_ok(uid_t uid)
{
    return uid == 0 || uid == geteuid();
}

static int check_conf_file(const char *path, char *err, size_t errlen)
{
    char who[96];
    struct stat st;

    if (stat(path, &st) != 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    our_owner(who, sizeof(who));
    if (!owner_ok(st.st_uid) || (st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
        snprintf(err, errlen,
                 "config file %s has mode %04o and owner uid %lu gid %lu: %s; fix it with "
                 "`chmod 0640 %s; chown %s %s`",
                 path, (unsigned)(st.st_mode & 07777), (unsigned long)st.st_uid,
                 (unsigned long)st.st_gid,
                 !owner_ok(st.st_uid) ? "it must be owned by root or p11pskd's user"
                                      : "others than its owner may change it",
                 path, who, path);
        return -1;
    }
    return 0;
}

static int check_pin_file(const char *source, char *err, size_t errlen)
{
    const char *path = strncmp(source, "file:", 5) == 0 ? source + 5 : source, *why = NULL;
    char who[96];
    struct stat st;

    if (stat(path, &st) != 0) {
        snprintf(err, errlen, "PIN file %s: %s; fix pin-source or create the file", path,
                 strerror(errno));
        return -1;
    }
    if (!owner_ok(st.st_uid))
        why = "it must be owned by root or p11pskd's user";
    else if ((st.st_mode & (S_IROTH | S_IWOTH)) != 0)
        why = "every user may read or change it";
    else if ((st.st_mode & S_IWGRP) != 0)
        why = "its group may change it";
    else if ((st.st_mode & S_IRGRP) != 0 && st.st_gid != getegid())
        why = "a group other than p11pskd's may read it";
    if (why == NULL)
        return 0;
    our_owner(who, sizeof(who));
    snprintf(err, errlen,
             "PIN file %s has mode %04o and owner uid %lu gid %lu: %s; fix it with "
             "`chmod 0640 %s; chown %s %s`",
             path, (unsigned)(st.st_mode & 07777), (unsigned long)st.st_uid,
             (unsigned long)st.st_gid, why, path, who, path);
    return -1;
}

int p11psk_config_check_files(const p11psk_config *cfg, char *err, size_t errlen)
{
    if (check_conf_file(cfg->path, err, errlen) != 0)
        return -1;
    if (cfg->pin_source != NULL && check_pin_file(cfg->pin_source, err, errlen) != 0)
        return -1;
    return 0;
}

int p11psk_pin_read(const char *source, char **pin, size_t *pinlen, char *err, size_t errlen)
{
    const char *path = strncmp(source, "file:", 5) == 0 ? source + 5 : source;
    char *buf;
    ssize_t r;
    size_t n = 0;
    int fd;

    *pin = NULL;
    *pinlen = 0;
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
        snprintf(err, errlen,
                 "cannot read PIN file %s: %s; fix pin-source or the file's "
                 "permissions",
                 path, strerror(errno));
        return 0;
    }
    if ((buf = OPENSSL_secure_zalloc(PIN_MAX + 1)) == NULL) {
        close(fd);
        snprintf(err, errlen, "out of memory");
        return 0;
    }
    while (n < PIN_MAX && (r = read(fd, buf + n, PIN_MAX - n)) != 0) {
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            snprintf(err, errlen, "cannot read PIN file %s: %s", path, strerror(errno));
            close(fd);
            OPENSSL_secure_clear_free(buf, PIN_MAX + 1);
            return 0;
        }
        n += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    n = strcspn(buf, "\r\n"); /* the first line is the PIN */
    OPENSSL_cleanse(buf + n, PIN_MAX + 1 - n);
    if (n == 0) {
        snprintf(err, errlen, "PIN file %s is empty; write the user PIN on its first line", path);
        OPENSSL_secure_clear_free(buf, PIN_MAX + 1);
        return 0;
    }
    *pin = buf;
    *pinlen = n;
    return 1;
}

void p11psk_pin_free(char *pin, size_t pinlen)
{
    if (pin != NULL)
        OPENSSL_secure_clear_free(pin, PIN_MAX + 1);
}
