/* SPDX-License-Identifier: Apache-2.0 */
/*
 * p11psk doctor: checks what an application would get from its OpenSSL configuration (is the
 * p11psk provider loaded and selected for TLS13-KDF and TLS1-PRF?), that p11pskd answers as a
 * trusted user, and optionally that the caller may use a key and that a running process has
 * loaded the provider. Without the provider in charge, libssl takes handles for raw keys
 * and nothing else says so.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/conf.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/kdf.h>
#include <openssl/provider.h>
#include <openssl/ssl.h>

#include "cli.h"
#include "p11psk/client.h"
#include "p11psk/handle.h"

#define PROV_NAME "p11psk"   /* OSSL_PROV_PARAM_NAME of our provider (provider/prov.h) */
#define DAEMON_USER "p11psk" /* the system user conf/p11psk.sysusers creates */
#define SELECT_PROPS "?p11psk.handles=yes"
#define STUNNEL_PROPQ "provider!=fips"
#define HANDLE_FILE_MAX (1 << 16)
#define HANDLE_LINES_MAX 10000
#define PROC_LINE_MAX 4096
#define PROC_LINES_MAX 1000000 /* a process with more maps lines than this is not plausible */
#define ENVIRON_MAX (1 << 20)
#define TIMEOUT_MAX_MS 600000

const char p11psk_usage_doctor[] =
    "Usage: p11psk doctor [--openssl-conf FILE] [--handle HEX | --handle-file FILE]\n"
    "                     [--pid PID] [--socket PATH]\n"
    "\n"
    "Checks that an OpenSSL 3 application really uses the p11psk provider. Without it,\n"
    "libssl silently uses the handle bytes as the raw PSK. Loads the OpenSSL configuration\n"
    "as an application would and checks, printing `ok   WHAT` or `FAIL WHAT: FIX` per line:\n"
    "  - which configuration file is used and that the p11psk provider is loaded from it;\n"
    "  - that TLS13-KDF and TLS1-PRF come from p11psk with the default properties and with\n"
    "    stunnel's query \"" STUNNEL_PROPQ "\";\n"
    "  - that p11pskd answers PING on the provider's socket and runs as root or the\n"
    "    " DAEMON_USER " user;\n"
    "  - with --handle: that the calling user may use that key (no key bytes are shown);\n"
    "  - with --pid: that the process has loaded p11psk.so, and its OPENSSL_CONF.\n"
    "Exits 0 when every check passes, 1 otherwise, 2 on a usage error.\n"
    "\n"
    "  --openssl-conf FILE  the OpenSSL configuration to check (default: $OPENSSL_CONF,\n"
    "                       else OpenSSL's default file)\n"
    "  --handle HEX         a handle as in stunnel or mosquitto PSK files (64 hex chars)\n"
    "  --handle-file FILE   every handle in a stunnel or mosquitto PSK file\n"
    "                       (IDENTITY:HANDLE lines; a file holding just the hex works too)\n"
    "  --pid PID            check a running application (run as root or as its user)\n"
    "  --socket PATH        p11pskd's socket when the configuration names none (default\n"
    "                       " P11PSK_DEFAULT_SOCKET "); P11PSK_SOCKET overrides both, as\n"
    "                       in the provider\n";

typedef struct {
    OSSL_LIB_CTX *lc;
    const char *file; /* the OpenSSL configuration checked */
    const char *file_src;
    char *file_alloc;
    CONF *conf;            /* file, parsed, for the fix texts and the provider's settings */
    const char *init_sect; /* section named by openssl_conf */
    const char *alg_sect;  /* section named by alg_section */
    const char *prov_sect; /* the section that loads p11psk */
    const char *module;    /* its module = */
    char load_err[256];    /* first error OpenSSL raised while applying the file */
    OSSL_PROVIDER *prov;   /* p11psk, if loaded */
    int fails;
} doctor;

/* Printable ASCII kept, anything else as \xNN: paths and environment values are untrusted. */
static const char *esc(const char *s, char *out, size_t cap)
{
    size_t n = 0;

    for (; s != NULL && *s != '\0' && n + 5 < cap; s++) {
        unsigned char ch = (unsigned char)*s;

        if (ch >= 0x20 && ch < 0x7f && ch != '\\')
            out[n++] = (char)ch;
        else
            n += (size_t)snprintf(out + n, cap - n, "\\x%02x", ch);
    }
    out[n] = '\0';
    return out;
}

static void report(doctor *d, int good, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void report(doctor *d, int good, const char *fmt, ...)
{
    va_list ap;

    fputs(good ? "ok   " : "FAIL ", stdout);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    if (!good)
        d->fails++;
}

/* The oldest error on the queue as "reason (data)", then the queue is cleared. */
static void take_error(char *out, size_t cap)
{
    const char *data = NULL;
    char reason[160], safe[200];
    unsigned long e;
    int flags = 0;

    out[0] = '\0';
    e = ERR_get_error_all(NULL, NULL, NULL, &data, &flags);
    if (e != 0) {
        ERR_error_string_n(e, reason, sizeof(reason));
        snprintf(out, cap, "%s%s%s%s", reason, (flags & ERR_TXT_STRING) ? " (" : "",
                 (flags & ERR_TXT_STRING) ? esc(data, safe, sizeof(safe)) : "",
                 (flags & ERR_TXT_STRING) ? ")" : "");
    }
    ERR_clear_error();
}

static const char *conf_str(const doctor *d, const char *sect, const char *name)
{
    const char *v;

    if (d->conf == NULL || sect == NULL)
        return NULL;
    ERR_set_mark();
    v = NCONF_get_string(d->conf, sect, name);
    ERR_pop_to_mark();
    return v;
}

/* Finds the providers-section entry that loads p11psk: named p11psk, or its module is. */
static void find_provider_section(doctor *d)
{
    const char *provs = conf_str(d, d->init_sect, "providers"), *mod, *base;
    STACK_OF(CONF_VALUE) * sk;
    CONF_VALUE *v;
    int i;

    ERR_set_mark();
    sk = provs != NULL ? NCONF_get_section(d->conf, provs) : NULL;
    ERR_pop_to_mark();
    if (sk == NULL)
        return;
    for (i = 0; i < sk_CONF_VALUE_num(sk); i++) {
        v = sk_CONF_VALUE_value(sk, i);
        mod = conf_str(d, v->value, "module");
        base = mod != NULL && strrchr(mod, '/') != NULL ? strrchr(mod, '/') + 1 : mod;
        if (strcmp(v->name, PROV_NAME) == 0 ||
            (base != NULL && strncmp(base, PROV_NAME, strlen(PROV_NAME)) == 0)) {
            d->prov_sect = v->value;
            d->module = mod;
            return;
        }
    }
}

/*
 * Applies the configuration to a library context of our own, the way OPENSSL_init_ssl's
 * config step does for an application's default context (this process has already
 * initialised OpenSSL without a configuration, so that step would not run again).
 */
static void load_openssl_conf(doctor *d, const char *arg)
{
    const char *env = getenv("OPENSSL_CONF");
    char f[PATH_MAX * 4 + 1], err[300];
    struct stat st;
    long eline = 0;

    if (arg != NULL) {
        d->file = arg;
        d->file_src = "--openssl-conf";
    } else {
        d->file = d->file_alloc = CONF_get1_default_config_file();
        d->file_src = env != NULL && *env != '\0' ? "OPENSSL_CONF" : "OpenSSL's default";
    }
    esc(d->file, f, sizeof(f));
    if (d->file == NULL || stat(d->file, &st) != 0) {
        report(d, 0,
               "OpenSSL configuration: no OpenSSL configuration file found/loaded (%s %s: %s): "
               "point the application at one with OPENSSL_CONF=FILE, or install the p11psk "
               "stanza (conf/openssl-p11psk.cnf) there",
               d->file_src, f, strerror(errno));
        return;
    }
    d->conf = NCONF_new_ex(d->lc, NULL);
    if (d->conf == NULL || NCONF_load(d->conf, d->file, &eline) <= 0) {
        take_error(err, sizeof(err));
        report(d, 0,
               "OpenSSL configuration: no OpenSSL configuration file found/loaded (%s %s does "
               "not parse, line %ld: %s): fix the file",
               d->file_src, f, eline, err);
        NCONF_free(d->conf);
        d->conf = NULL;
        return;
    }
    d->init_sect = conf_str(d, "default", "openssl_conf");
    if (d->init_sect == NULL) {
        report(d, 0,
               "OpenSSL configuration: no OpenSSL configuration file found/loaded (%s %s has "
               "no `openssl_conf = SECTION` line, so OpenSSL applies nothing from it): use the "
               "p11psk stanza (conf/openssl-p11psk.cnf)",
               d->file_src, f);
    } else {
        report(d, 1, "OpenSSL configuration: %s (%s)", f, d->file_src);
    }
    d->alg_sect = conf_str(d, d->init_sect, "alg_section");
    find_provider_section(d);
    /* An application's default: a missing file or a failing module does not stop it. */
    ERR_clear_error();
    CONF_modules_load_file_ex(d->lc, d->file, NULL, CONF_MFLAGS_DEFAULT_SECTION);
    take_error(d->load_err, sizeof(d->load_err));
}

static int find_p11psk(OSSL_PROVIDER *prov, void *arg)
{
    doctor *d = arg;
    const char *name = NULL;
    OSSL_PARAM params[] = {OSSL_PARAM_utf8_ptr(OSSL_PROV_PARAM_NAME, (char **)&name, 0),
                           OSSL_PARAM_END};

    if (OSSL_PROVIDER_get_params(prov, params) && name != NULL && strcmp(name, PROV_NAME) == 0)
        d->prov = prov;
    return 1;
}

/*
 * Why the provider may not be loaded, for the fix text: no activate, or the module file is
 * missing or unreadable (OpenSSL 3.0 raises no error when openssl.cnf names a bad module).
 */
static void not_loaded_note(const doctor *d, char *out, size_t cap)
{
    static const char *const yes[] = {"1", "yes", "true", "on"};
    const char *act = conf_str(d, d->prov_sect, "activate");
    const char *dir = getenv("OPENSSL_MODULES");
    char path[PATH_MAX], safe[PATH_MAX * 4 + 1];
    size_t i;

    out[0] = '\0';
    for (i = 0; act != NULL && i < sizeof(yes) / sizeof(yes[0]); i++)
        if (strcasecmp(act, yes[i]) == 0)
            break;
    if (act == NULL || i == sizeof(yes) / sizeof(yes[0])) {
        snprintf(out, cap, " (its section has no `activate = 1`)");
        return;
    }
    if (d->module == NULL || d->module[0] == '\0') {
        snprintf(out, cap, " (its section has no `module =` line)");
        return;
    }
    if (dir == NULL || dir[0] == '\0')
        dir = OPENSSL_info(OPENSSL_INFO_MODULES_DIR);
    if (strchr(d->module, '/') != NULL)
        snprintf(path, sizeof(path), "%s", d->module);
    else
        snprintf(path, sizeof(path), "%s/%s", dir != NULL ? dir : ".", d->module);
    if (access(path, R_OK) != 0)
        snprintf(out, cap, " (%s: %s)", esc(path, safe, sizeof(safe)), strerror(errno));
    else if (d->load_err[0] != '\0')
        snprintf(out, cap, " (OpenSSL: %s)", d->load_err);
}

static void check_provider(doctor *d)
{
    char f[PATH_MAX * 4 + 1], m[PATH_MAX * 4 + 1], dir[PATH_MAX * 4 + 1], sect[256];
    char why[PATH_MAX * 4 + 400];

    OSSL_PROVIDER_do_all(d->lc, find_p11psk, d);
    esc(d->file, f, sizeof(f));
    if (d->prov != NULL) {
        report(d, 1, "p11psk provider loaded (section [%s]%s%s)",
               esc(d->prov_sect != NULL ? d->prov_sect : "?", sect, sizeof(sect)),
               d->module != NULL ? ", module = " : "",
               d->module != NULL ? esc(d->module, dir, sizeof(dir)) : "");
        return;
    }
    if (d->prov_sect == NULL) {
        report(d, 0,
               "p11psk provider loaded: %s does not load it: add `p11psk = p11psk_sect` to its "
               "providers section and a [p11psk_sect] with `module =` and `activate = 1` (see "
               "conf/openssl-p11psk.cnf)",
               f);
        return;
    }
    not_loaded_note(d, why, sizeof(why));
    report(d, 0,
           "p11psk provider loaded: it is not%s: check `module = %s` (a path, or a file in "
           "libcrypto's modules directory %s) and `activate = 1` in [%s] of %s",
           why, esc(d->module != NULL ? d->module : "", m, sizeof(m)),
           esc(OPENSSL_info(OPENSSL_INFO_MODULES_DIR), dir, sizeof(dir)),
           esc(d->prov_sect, sect, sizeof(sect)), f);
}

/* What libssl does for an SSL_CTX with property query propq: are both KDFs ours? */
static void check_kdfs(doctor *d, const char *propq, const char *whose)
{
    static const char *const algs[] = {"TLS13-KDF", "TLS1-PRF"};
    char f[PATH_MAX * 4 + 1], s[1200], what[160], err[300], name[256], sect[256];
    const char *from = NULL, *bad = NULL;
    EVP_KDF *kdf;
    SSL_CTX *ctx;
    size_t i;

    snprintf(what, sizeof(what), "TLS13-KDF and TLS1-PRF come from p11psk with %s", whose);
    ctx = SSL_CTX_new_ex(d->lc, propq, TLS_method());
    if (ctx == NULL) {
        take_error(err, sizeof(err));
        report(d, 0, "%s: OpenSSL cannot make a TLS context with this configuration: %s", what,
               err);
        return;
    }
    SSL_CTX_free(ctx);
    for (i = 0; i < sizeof(algs) / sizeof(algs[0]) && bad == NULL; i++) {
        kdf = EVP_KDF_fetch(d->lc, algs[i], propq);
        if (kdf == NULL || d->prov == NULL || EVP_KDF_get0_provider(kdf) != d->prov) {
            bad = algs[i];
            from = kdf != NULL ? OSSL_PROVIDER_get0_name(EVP_KDF_get0_provider(kdf)) : NULL;
        }
        EVP_KDF_free(kdf);
    }
    ERR_clear_error();
    if (bad == NULL) {
        report(d, 1, "%s", what);
        return;
    }
    snprintf(s, sizeof(s), "%s comes from %s%s%s", bad, from != NULL ? "provider '" : "",
             from != NULL ? esc(from, name, sizeof(name)) : "no provider", from != NULL ? "'" : "");
    esc(d->file, f, sizeof(f));
    if (d->prov == NULL)
        report(d, 0, "%s: %s, so handles are used as raw keys: load the p11psk provider (above)",
               what, s);
    else if (d->alg_sect != NULL)
        report(d, 0, "%s: %s: add `default_properties = " SELECT_PROPS "` to [%s] in %s", what, s,
               esc(d->alg_sect, sect, sizeof(sect)), f);
    else
        report(d, 0,
               "%s: %s: add `alg_section = evp_properties` to [%s] and a section "
               "[evp_properties] with `default_properties = " SELECT_PROPS "` to %s (see "
               "conf/openssl-p11psk.cnf)",
               what, s,
               esc(d->init_sect != NULL ? d->init_sect : "openssl_init", sect, sizeof(sect)), f);
}

/*
 * Whether the process serving the socket may be p11pskd: root or the p11psk system user.
 * The one place to extend when the provider gains a p11psk-daemon-user setting.
 */
static int daemon_uid_trusted(uid_t uid)
{
    const struct passwd *pw;

    if (uid == 0)
        return 1;
    pw = getpwnam(DAEMON_USER);
    return pw != NULL && pw->pw_uid == uid;
}

/* Connects and PINGs; 1 when p11pskd answered from a trusted uid and c stays connected. */
static int check_daemon(doctor *d, const char *sock_arg, p11psk_conn *c)
{
    const char *env = secure_getenv("P11PSK_SOCKET"),
               *cfg = conf_str(d, d->prov_sect, "p11psk-socket");
    const char *tmo = conf_str(d, d->prov_sect, "p11psk-timeout-ms"), *path, *src;
    char p[sizeof(c->path) * 4 + 1], info[128], f[PATH_MAX * 4 + 1], src_buf[PATH_MAX * 4 + 32];
    char who[64];
    uint8_t resp[P11PSK_WIRE_MAX];
    struct ucred cred;
    socklen_t len = sizeof(cred);
    const struct passwd *pw;
    p11psk_frame req;
    p11psk_msg m;
    long t = tmo != NULL ? strtol(tmo, NULL, 10) : 0;
    int rc, e = 0;

    if (env != NULL && env[0] != '\0') {
        path = env;
        src = "P11PSK_SOCKET";
    } else if (cfg != NULL && cfg[0] != '\0') {
        path = cfg;
        snprintf(src_buf, sizeof(src_buf), "p11psk-socket in %s", esc(d->file, f, sizeof(f)));
        src = src_buf;
    } else if (sock_arg != NULL) {
        path = sock_arg;
        src = "--socket";
    } else {
        path = P11PSK_DEFAULT_SOCKET;
        src = "default";
    }
    esc(path, p, sizeof(p));
    if (strlen(path) >= sizeof(c->path)) {
        report(d, 0, "p11pskd socket %s (%s): longer than %zu bytes: use a shorter path", p, src,
               sizeof(c->path) - 1);
        return 0;
    }
    p11psk_conn_init(c, path, t > 0 && t <= TIMEOUT_MAX_MS ? (int)t : P11PSK_DEFAULT_TIMEOUT_MS);
    p11psk_frame_start(&req, P11PSK_OP_PING);
    p11psk_frame_finish(&req);
    rc = p11psk_conn_call(c, &req, resp, &m, &e);
    if (rc != P11PSK_CALL_OK) {
        report(d, 0,
               "p11pskd answers PING at %s (%s): %s%s%s: start p11pskd (systemctl start "
               "p11pskd.socket), or point p11psk-socket in the provider's section at its socket",
               p, src, p11psk_call_strerror(rc), e ? ": " : "", e ? strerror(e) : "");
        return 0;
    }
    if (m.code != P11PSK_ST_OK) {
        p11psk_msg_str(&m, P11PSK_T_MSG, info, sizeof(info));
        report(d, 0, "p11pskd answers PING at %s (%s): refused: %s: %s", p, src,
               p11psk_status_str(m.code), info);
        p11psk_conn_close(c);
        return 0;
    }
    p11psk_msg_str(&m, P11PSK_T_INFO, info, sizeof(info));
    report(d, 1, "p11pskd answers PING at %s (%s): %s", p, src, info);
    if (getsockopt(c->fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
        report(d, 0, "p11pskd at %s runs as a trusted user: cannot read its credentials: %s", p,
               strerror(errno));
        p11psk_conn_close(c);
        return 0;
    }
    pw = getpwuid(cred.uid);
    snprintf(who, sizeof(who), "uid %lu (%s)", (unsigned long)cred.uid,
             pw != NULL ? pw->pw_name : "no user name");
    if (!daemon_uid_trusted(cred.uid)) {
        report(d, 0,
               "p11pskd at %s runs as a trusted user: its peer is %s, neither root nor the "
               "%s user: something other than p11pskd may listen there; stop it, and let only "
               "root create the socket's directory",
               p, who, DAEMON_USER);
        p11psk_conn_close(c);
        return 0;
    }
    report(d, 1, "p11pskd at %s runs as a trusted user: %s", p, who);
    return 1;
}

/* Reads a PSK file (or a file holding one handle) into *text; 0 with a message on failure. */
static int read_handle_file(const char *file, char **text)
{
    size_t n;
    FILE *f;

    if ((f = fopen(file, "re")) == NULL) {
        fprintf(stderr, "p11psk: cannot open %s: %s\n", file, strerror(errno));
        return 0;
    }
    if ((*text = calloc(1, HANDLE_FILE_MAX + 2)) == NULL) {
        fclose(f);
        fprintf(stderr, "p11psk: out of memory\n");
        return 0;
    }
    n = fread(*text, 1, HANDLE_FILE_MAX + 1, f);
    fclose(f);
    if (n > HANDLE_FILE_MAX) {
        fprintf(stderr, "p11psk: %s is larger than %d bytes; give --handle HEX\n", file,
                HANDLE_FILE_MAX);
        OPENSSL_cleanse(*text, HANDLE_FILE_MAX + 2); /* it may hold raw keys */
        free(*text);
        *text = NULL;
        return 0;
    }
    return 1;
}

static void check_handle(doctor *d, p11psk_conn *c, const uint8_t *buf, size_t len,
                         const char *where);

/*
 * Checks each "IDENTITY:HEX" or "HEX" line of a stunnel or mosquitto PSK file; blank lines
 * and # comments are skipped. Nothing of a line is printed but its number and identity.
 */
static void check_handle_lines(doctor *d, p11psk_conn *c, const char *file, char *text)
{
    char *line, *next, *colon, *hex, id[256], f[1024], where[sizeof(f) + sizeof(id) + 64];
    uint8_t bin[P11PSK_HANDLE_MAX];
    int lineno = 0, checked = 0;
    long len;

    esc(file, f, sizeof(f));
    for (line = text; line != NULL && lineno < HANDLE_LINES_MAX; line = next) {
        lineno++;
        if ((next = strchr(line, '\n')) != NULL)
            *next++ = '\0';
        line[strcspn(line, "\r")] = '\0';
        line += strspn(line, " \t");
        if (line[0] == '\0' || line[0] == '#')
            continue;
        colon = strrchr(line, ':');
        hex = colon != NULL ? colon + 1 : line;
        if (colon != NULL)
            *colon = '\0';
        hex += strspn(hex, " \t");
        hex[strcspn(hex, " \t")] = '\0';
        snprintf(where, sizeof(where), " (%s:%d%s%s%s)", f, lineno,
                 colon != NULL ? ", identity '" : "",
                 colon != NULL ? esc(line, id, sizeof(id)) : "", colon != NULL ? "'" : "");
        checked++;
        len = p11psk_hex_decode(hex, bin, sizeof(bin));
        if (len <= 0)
            report(d, 0,
                   "handle%s: not a hex handle (it may be a raw key): put the handle that "
                   "`p11psk handle ID` prints there",
                   where);
        else
            check_handle(d, c, bin, (size_t)len, where);
        OPENSSL_cleanse(bin, sizeof(bin));
    }
    if (checked == 0)
        report(d, 0, "handle: %s holds no IDENTITY:HANDLE line: give --handle HEX", f);
}

/* Asks p11pskd for a derivation with the key: only an allowed uid gets an answer. */
static void check_handle(doctor *d, p11psk_conn *c, const uint8_t *buf, size_t len,
                         const char *where)
{
    static const uint8_t seed[] = "p11psk doctor access check";
    uint8_t hb[P11PSK_HANDLE_LEN], zeros[P11PSK_HANDLE_LEN] = {0}, resp[P11PSK_WIRE_MAX];
    char id[2 * P11PSK_ID_MAX + 1], what[1500], msg[400];
    int md, rc, e = 0, st = -1;
    p11psk_handle h;
    p11psk_frame req;
    p11psk_msg m;

    rc = p11psk_handle_decode(buf, len, &h);
    if (rc == P11PSK_HANDLE_NOT) {
        report(d, 0,
               "handle%s: these %zu bytes are not a p11psk handle (they may be a raw key): "
               "give the handle that `p11psk handle ID` prints",
               where, len);
        return;
    }
    if (rc != P11PSK_HANDLE_OK || h.type != P11PSK_HT_PSK) {
        report(d, 0, "handle%s: not a valid PSK handle (%s): copy it again from `p11psk handle ID`",
               where, rc != P11PSK_HANDLE_OK ? p11psk_handle_strerror(rc) : "early-secret handle");
        return;
    }
    p11psk_hex_encode(h.id, h.idlen, id);
    snprintf(what, sizeof(what), "uid %lu may use the key with CKA_ID %s%s",
             (unsigned long)getuid(), id, where);
    if (c == NULL) {
        report(d, 0, "%s: not checked: p11pskd is not reachable or not trusted (above)", what);
        return;
    }
    p11psk_handle_encode(&h, hb, sizeof(hb));
    /* A digest policy may refuse SHA256 before the key is looked at: then try SHA384. */
    for (md = P11PSK_MD_SHA256; md <= P11PSK_MD_SHA384; md++) {
        /* TLS 1.2 plain PSK: an all-zero OTHER, resized by p11pskd to the key's length. */
        p11psk_frame_start(&req, P11PSK_OP_TLS12_PRF);
        p11psk_frame_add_u8(&req, P11PSK_T_DIGEST, (uint8_t)md);
        p11psk_frame_add(&req, P11PSK_T_HANDLE, hb, sizeof(hb));
        p11psk_frame_add(&req, P11PSK_T_OTHER, zeros, sizeof(zeros));
        p11psk_frame_add(&req, P11PSK_T_SEED, seed, sizeof(seed) - 1);
        p11psk_frame_add_u16(&req, P11PSK_T_OUTLEN, 12);
        p11psk_frame_finish(&req);
        rc = p11psk_conn_call(c, &req, resp, &m, &e);
        p11psk_frame_cleanse(&req);
        if (rc != P11PSK_CALL_OK)
            break;
        st = m.code;
        p11psk_msg_str(&m, P11PSK_T_MSG, msg, sizeof(msg));
        if (st != P11PSK_ST_POLICY)
            break;
    }
    /* The derived bytes are of no use here, and a PRF output is secret. */
    OPENSSL_cleanse(resp, sizeof(resp));
    OPENSSL_cleanse(&m, sizeof(m));
    if (rc != P11PSK_CALL_OK)
        report(d, 0, "%s: %s%s%s", what, p11psk_call_strerror(rc), e ? ": " : "",
               e ? strerror(e) : "");
    else if (st == P11PSK_ST_OK)
        report(d, 1, "%s", what);
    else if (st == P11PSK_ST_NEED_READABLE) /* reported after the allow rules passed */
        report(d, 1, "%s (but TLS 1.2 with it needs a readable key: %s)", what, msg);
    else
        report(d, 0, "%s: %s: %s", what, p11psk_status_str(st), msg);
}

/* A maps line's file name (maybe followed by " (deleted)"): p11psk.so or the configured one. */
static int mapped_is_provider(const doctor *d, const char *base)
{
    const char *mod = d->module != NULL && strrchr(d->module, '/') != NULL
                          ? strrchr(d->module, '/') + 1
                          : d->module;
    size_t n;

    if (strncmp(base, "p11psk.so", 9) == 0 && (base[9] == '\0' || base[9] == ' '))
        return 1;
    n = mod != NULL ? strlen(mod) : 0;
    return n > 0 && strncmp(base, mod, n) == 0 && (base[n] == '\0' || base[n] == ' ');
}

/* Is p11psk.so mapped into the process? */
static void check_pid_maps(doctor *d, long pid)
{
    char path[64], line[PROC_LINE_MAX], mapped[PROC_LINE_MAX * 4];
    const char *p, *base;
    long n = 0;
    FILE *fp;

    snprintf(path, sizeof(path), "/proc/%ld/maps", pid);
    if ((fp = fopen(path, "re")) == NULL) {
        report(d, 0, "process %ld has loaded p11psk.so: cannot read %s: %s%s", pid, path,
               strerror(errno),
               errno == EACCES ? ": run p11psk doctor as root or as the process's user" : "");
        return;
    }
    mapped[0] = '\0';
    while (mapped[0] == '\0' && n++ < PROC_LINES_MAX && fgets(line, sizeof(line), fp) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        if ((p = strchr(line, '/')) == NULL)
            continue;
        base = strrchr(p, '/') + 1;
        if (mapped_is_provider(d, base))
            esc(p, mapped, sizeof(mapped));
    }
    fclose(fp);
    if (mapped[0] != '\0') {
        report(d, 1, "process %ld has loaded p11psk.so (%s)", pid, mapped);
        return;
    }
    report(d, 0,
           "process %ld has not loaded p11psk.so: it uses handles as raw keys: start it with "
           "OPENSSL_CONF naming a configuration that loads the provider (check it with "
           "p11psk doctor --openssl-conf FILE; see conf/openssl-p11psk.cnf)",
           pid);
}

/* The process's OPENSSL_CONF and P11PSK_SOCKET, as it was started. */
static void check_pid_environ(doctor *d, long pid, int conf_given)
{
    char path[64], *env, conf[PATH_MAX * 4 + 1] = "", sock[PATH_MAX * 4 + 1] = "",
                                             f[PATH_MAX * 4 + 1];
    const char *p, *end;
    int has_conf = 0, has_sock = 0;
    size_t n;
    FILE *fp;

    snprintf(path, sizeof(path), "/proc/%ld/environ", pid);
    if ((fp = fopen(path, "re")) == NULL) {
        report(d, 0, "process %ld environment: cannot read %s: %s%s", pid, path, strerror(errno),
               errno == EACCES ? ": run p11psk doctor as root or as the process's user" : "");
        return;
    }
    if ((env = calloc(1, ENVIRON_MAX + 1)) == NULL) {
        fclose(fp);
        report(d, 0, "process %ld environment: out of memory", pid);
        return;
    }
    n = fread(env, 1, ENVIRON_MAX, fp);
    fclose(fp);
    for (p = env; p < env + n; p = end + 1) {
        end = memchr(p, '\0', (size_t)(env + n - p));
        if (end == NULL)
            end = env + n; /* env[n] is the terminating NUL */
        if (strncmp(p, "OPENSSL_CONF=", 13) == 0) {
            esc(p + 13, conf, sizeof(conf));
            has_conf = 1;
        } else if (strncmp(p, "P11PSK_SOCKET=", 14) == 0) {
            esc(p + 14, sock, sizeof(sock));
            has_sock = 1;
        }
    }
    free(env);
    esc(d->file, f, sizeof(f));
    report(d, 1, "process %ld started with OPENSSL_CONF=%s%s%s%s", pid,
           has_conf ? conf : "(default)", has_sock ? " P11PSK_SOCKET=" : "", sock,
           has_conf && !conf_given && strcmp(conf, f) != 0
               ? " (not the file checked above: add --openssl-conf with it)"
               : "");
}

static void parse_pid(const char *arg, long *pid)
{
    char *end;

    errno = 0;
    *pid = strtol(arg, &end, 10);
    if (errno != 0 || end == arg || *end != '\0' || *pid <= 0 || *pid > INT_MAX) {
        fprintf(stderr, "p11psk: --pid takes a process id, not '%s'\n%s", arg, p11psk_usage_doctor);
        exit(2);
    }
}

int p11psk_cli_doctor(const p11psk_config *cfg, int argc, char **argv)
{
    static const struct option opts[] = {
        {"openssl-conf", required_argument, NULL, 'o'},
        {"handle", required_argument, NULL, 'H'},
        {"handle-file", required_argument, NULL, 'F'},
        {"pid", required_argument, NULL, 'p'},
        {"socket", required_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *conf_arg = NULL, *hex = NULL, *hfile = NULL, *sock = NULL;
    uint8_t hbuf[P11PSK_HANDLE_MAX];
    char *htext = NULL;
    doctor d = {0};
    p11psk_conn c;
    long pid = 0, hlen = 0;
    int opt, up;

    optind = 0; /* GNU getopt: full reset after the "+" global parse */
    while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (opt) {
        case 'o':
            conf_arg = optarg;
            break;
        case 'H':
            hex = optarg;
            break;
        case 'F':
            hfile = optarg;
            break;
        case 'p':
            parse_pid(optarg, &pid);
            break;
        case 's':
            sock = optarg;
            break;
        case 'h':
            fputs(p11psk_usage_doctor, stdout);
            exit(0);
        default:
            fprintf(stderr, "p11psk: unknown option or missing value: '%s'\n%s", argv[optind - 1],
                    p11psk_usage_doctor);
            return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "p11psk: doctor takes no arguments, got '%s'\n%s", argv[optind],
                p11psk_usage_doctor);
        return 2;
    }
    if (hex != NULL && hfile != NULL) {
        fprintf(stderr, "p11psk: give --handle or --handle-file, not both\n%s",
                p11psk_usage_doctor);
        return 2;
    }
    if (hex != NULL && (hlen = p11psk_hex_decode(hex, hbuf, sizeof(hbuf))) <= 0) {
        OPENSSL_cleanse(hbuf, sizeof(hbuf));
        fprintf(stderr, "p11psk: --handle takes the handle in hex (64 characters, as `p11psk "
                        "handle ID` prints it)\n");
        return 2;
    }
    if (hfile != NULL && !read_handle_file(hfile, &htext))
        return 2;

    p11psk_conn_init(&c, NULL, 0);
    if ((d.lc = OSSL_LIB_CTX_new()) != NULL) {
        load_openssl_conf(&d, conf_arg);
        check_provider(&d);
        check_kdfs(&d, NULL, "the default properties (most applications)");
        check_kdfs(&d, STUNNEL_PROPQ, "query \"" STUNNEL_PROPQ "\" (stunnel)");
        up = check_daemon(&d, sock, &c);
        if (hlen > 0)
            check_handle(&d, up ? &c : NULL, hbuf, (size_t)hlen, "");
        if (htext != NULL)
            check_handle_lines(&d, up ? &c : NULL, hfile, htext);
        p11psk_conn_close(&c);
        if (pid > 0) {
            check_pid_maps(&d, pid);
            check_pid_environ(&d, pid, conf_arg != NULL);
        }
    } else {
        fprintf(stderr, "p11psk: out of memory\n");
        d.fails++;
    }
    OPENSSL_cleanse(hbuf, sizeof(hbuf));
    if (htext != NULL) {
        OPENSSL_cleanse(htext, HANDLE_FILE_MAX + 2); /* the file may hold raw keys too */
        free(htext);
    }
    NCONF_free(d.conf);
    OPENSSL_free(d.file_alloc);
    OSSL_LIB_CTX_free(d.lc);
    (void)cfg; /* p11pskd.conf is not read: doctor checks what applications see */
    return d.fails == 0 ? 0 : 1;
}
