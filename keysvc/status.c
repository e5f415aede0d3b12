/* SPDX-License-Identifier: Apache-2.0 */
/*
 * p11psk status / metrics: p11pskd's STATUS answer as a report, as JSON, or in the
 * Prometheus text exposition format. The answer is "name value" lines; names follow
 * Prometheus style (requests{op="..",result=".."} 12), so names this file does not know
 * yet still reach every output.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "p11psk/client.h"

#define STATUS_LINES_MAX 512

typedef struct {
    const char *socket;
    char buf[P11PSK_WIRE_MAX + 1];
    char *name[STATUS_LINES_MAX];
    char *value[STATUS_LINES_MAX];
    size_t n;
} status_info;

const char p11psk_usage_status[] =
    "Usage: p11psk status [--json] [--socket PATH]\n"
    "\n"
    "Asks p11pskd for its health and counters: version, uptime, token (label, model,\n"
    "module, available, logged in, sessions, recoveries), threads, connections, cache,\n"
    "re-validation (revalidate_ms, revalidate_age_ms, revalidations, changes found),\n"
    "requests by operation and result, latency by operation, expired keys and keys\n"
    "expiring within 7 days, and requests and last use of the most used keys. Allowed for\n"
    "root, p11pskd's own user and the users that allow-status or allow-admin lines in\n"
    "p11pskd.conf name. Exits 1 when p11pskd cannot be reached or refuses.\n"
    "\n"
    "  --json         print one JSON object instead of the report\n"
    "  --socket PATH  p11pskd's socket; default: `socket` in the configuration file\n"
    "                 (with --socket the file is not read)\n";

const char p11psk_usage_metrics[] =
    "Usage: p11psk metrics [--socket PATH]\n"
    "\n"
    "Prints p11pskd's status in the Prometheus text format (metrics named p11psk_*), e.g.\n"
    "for node_exporter's textfile collector:\n"
    "  p11psk metrics > DIR/p11psk.prom.$$; mv DIR/p11psk.prom.$$ DIR/p11psk.prom\n"
    "Besides the counters: p11psk_request_duration_seconds (histogram by op),\n"
    "p11psk_key_requests_total and p11psk_key_last_use_timestamp_seconds (by key, the\n"
    "metrics-top-keys most used), p11psk_keys_expired, p11psk_keys_expiring_7d.\n"
    "When p11pskd cannot be reached it still prints p11psk_up 0 on stdout, says why on\n"
    "stderr and exits 1; a refused request (access denied) prints nothing and exits 1.\n"
    "\n"
    "  --socket PATH  p11pskd's socket; default: `socket` in the configuration file\n"
    "                 (with --socket the file is not read)\n";

/* Parses the options of status (json != NULL) or metrics; exits on --help or a bad one. */
static const char *daemon_opts(const p11psk_config *cfg, int argc, char **argv, const char *usage,
                               int *json)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, 'j'},
        {"socket", required_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *sock = cfg->socket != NULL ? cfg->socket : P11PSK_DEFAULT_SOCKET;
    int opt;

    optind = 0; /* GNU getopt: full reset after the "+" global parse */
    while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (opt == 'j' && json != NULL) {
            *json = 1;
        } else if (opt == 's') {
            sock = optarg;
        } else if (opt == 'h') {
            fputs(usage, stdout);
            exit(0);
        } else {
            fprintf(stderr, "p11psk: unknown option or missing value: '%s'\n%s", argv[optind - 1],
                    usage);
            exit(2);
        }
    }
    if (optind != argc) {
        fprintf(stderr, "p11psk: %s takes no arguments, got '%s'\n%s", argv[0], argv[optind],
                usage);
        exit(2);
    }
    return sock;
}

/* The end of the name at the start of line p: the first blank outside the {...} labels,
 * whose quoted values may hold blanks and \" escapes. NULL for a broken line. */
static char *name_end(char *p)
{
    int in_braces = 0, in_quotes = 0;

    for (; *p != '\0'; p++) {
        if (in_quotes) {
            if (*p == '\\' && p[1] != '\0')
                p++;
            else if (*p == '"')
                in_quotes = 0;
        } else if (*p == '"' && in_braces) {
            in_quotes = 1;
        } else if (*p == '{') {
            in_braces = 1;
        } else if (*p == '}') {
            in_braces = 0;
        } else if (*p == ' ' && !in_braces) {
            return p;
        }
    }
    return NULL;
}

/* The value of label key in a status name (name{a="x",b="y"}), unescaped into out.
 * Returns 1 if present. */
static int label_get(const char *name, const char *key, char *out, size_t cap)
{
    const char *p = strchr(name, '{');
    size_t klen = strlen(key), o = 0;

    while (p != NULL && *p != '\0' && *p != '}') {
        p++; /* past '{' or ',' */
        if (strncmp(p, key, klen) == 0 && p[klen] == '=' && p[klen + 1] == '"') {
            for (p += klen + 2; *p != '\0' && *p != '"'; p++) {
                char c = *p;

                if (c == '\\' && p[1] != '\0') {
                    p++;
                    c = *p == 'n' ? '\n' : *p;
                }
                if (o + 1 < cap)
                    out[o++] = c;
            }
            out[o] = '\0';
            return 1;
        }
        /* skip this label's value */
        if ((p = strchr(p, '"')) == NULL)
            return 0;
        for (p++; *p != '\0' && *p != '"'; p++)
            if (*p == '\\' && p[1] != '\0')
                p++;
        if (*p == '"')
            p++;
    }
    return 0;
}

/* Sends STATUS and splits the answer. 0: ok; -1: p11pskd unreachable (why set); 1: refused
 * or failed (reported). */
static int fetch(status_info *si, char *why, size_t whylen)
{
    uint8_t resp[P11PSK_WIRE_MAX];
    p11psk_frame req;
    p11psk_msg m;
    char msg[400], *p, *nl, *sp;
    int st;

    p11psk_frame_start(&req, P11PSK_OP_STATUS);
    st = p11psk_cli_daemon_call(si->socket, &req, resp, &m, why, whylen);
    if (st < 0)
        return -1;
    if (st != P11PSK_ST_OK) {
        /* The daemon's message names the fix (allow-status ... in its config file). */
        p11psk_msg_str(&m, P11PSK_T_MSG, msg, sizeof(msg));
        fprintf(stderr, "p11psk: p11pskd at %s refused the status request: %s: %s\n", si->socket,
                p11psk_status_str(st), msg);
        return 1;
    }
    /* The raw field: p11psk_msg_str would turn the newlines into '?'. */
    if (m.f[P11PSK_T_INFO].present)
        memcpy(si->buf, m.f[P11PSK_T_INFO].p, m.f[P11PSK_T_INFO].len);
    si->buf[m.f[P11PSK_T_INFO].present ? m.f[P11PSK_T_INFO].len : 0] = '\0';
    si->n = 0;
    for (p = si->buf; p != NULL && *p != '\0'; p = nl) {
        if ((nl = strchr(p, '\n')) != NULL)
            *nl++ = '\0';
        /* Names hold no blanks outside quoted label values; values may (token_model). */
        if ((sp = name_end(p)) == NULL || *sp != ' ' || sp == p || si->n == STATUS_LINES_MAX)
            continue;
        *sp = '\0';
        si->name[si->n] = p;
        si->value[si->n++] = sp + 1;
    }
    return 0;
}

static const char *sv(const status_info *si, const char *name)
{
    size_t i;

    for (i = 0; i < si->n; i++)
        if (strcmp(si->name[i], name) == 0)
            return si->value[i];
    return NULL;
}

static const char *svd(const status_info *si, const char *name)
{
    const char *v = sv(si, name);

    return v != NULL ? v : "?";
}

static const char *yesno(const status_info *si, const char *name)
{
    const char *v = sv(si, name);

    return v == NULL ? "?" : strcmp(v, "0") == 0 ? "no" : "yes";
}

static int is_number(const char *s)
{
    char *end;

    if (*s == '\0')
        return 0;
    errno = 0;
    (void)strtod(s, &end);
    return errno == 0 && *end == '\0';
}

/* requests{op="OP",result="RES"} -> op, res. Returns 1 if name is a request counter. */
static int request_labels(const char *name, char *op, size_t opcap, char *res, size_t rescap)
{
    const char *o, *r, *e;

    if (strncmp(name, "requests{", 9) != 0)
        return 0;
    if ((o = strstr(name, "op=\"")) == NULL || (r = strstr(name, "result=\"")) == NULL)
        return 0;
    o += 4;
    r += 8;
    if ((e = strchr(o, '"')) == NULL || (size_t)(e - o) >= opcap)
        return 0;
    memcpy(op, o, (size_t)(e - o));
    op[e - o] = '\0';
    if ((e = strchr(r, '"')) == NULL || (size_t)(e - r) >= rescap)
        return 0;
    memcpy(res, r, (size_t)(e - r));
    res[e - r] = '\0';
    return 1;
}

/* Lines the report and JSON show as tables: latency histogram and per-key usage. */
static int is_structured(const char *name)
{
    return strncmp(name, "request_duration_seconds", 24) == 0 ||
           strncmp(name, "key_requests{", 13) == 0 ||
           strncmp(name, "key_last_use_seconds{", 21) == 0;
}

/* The value of the first line named prefix{lname="lval"...} (and le="le" if given). */
static const char *sv_label(const status_info *si, const char *prefix, const char *lname,
                            const char *lval, const char *le)
{
    char v[2 * P11PSK_KEY_LABEL_MAX];
    size_t i, n = strlen(prefix);

    for (i = 0; i < si->n; i++) {
        if (strncmp(si->name[i], prefix, n) != 0 || si->name[i][n] != '{')
            continue;
        if (!label_get(si->name[i], lname, v, sizeof(v)) || strcmp(v, lval) != 0)
            continue;
        if (le != NULL && (!label_get(si->name[i], "le", v, sizeof(v)) || strcmp(v, le) != 0))
            continue;
        return si->value[i];
    }
    return NULL;
}

/* Last use as "YYYY-MM-DD HH:MM:SS" UTC. */
static void utc_str(const char *epoch, char *out, size_t cap)
{
    time_t t = (time_t)strtoll(epoch, NULL, 10);
    struct tm tm;

    if (gmtime_r(&t, &tm) == NULL || strftime(out, cap, "%Y-%m-%d %H:%M:%S", &tm) == 0)
        snprintf(out, cap, "%s", epoch);
}

static void print_tables(const status_info *si)
{
    char op[64], key[2 * P11PSK_KEY_LABEL_MAX], when[32];
    const char *sum, *le1, *last;
    size_t i, n = 0;
    double cnt;

    for (i = 0; i < si->n; i++) {
        if (strncmp(si->name[i], "request_duration_seconds_count{", 31) != 0 ||
            !label_get(si->name[i], "op", op, sizeof(op)))
            continue;
        if (n++ == 0)
            printf("latency      %-16s %10s %12s %10s\n", "OP", "COUNT", "MEAN", "<= 1 ms");
        cnt = strtod(si->value[i], NULL);
        sum = sv_label(si, "request_duration_seconds_sum", "op", op, NULL);
        le1 = sv_label(si, "request_duration_seconds_bucket", "op", op, "0.001");
        printf("             %-16s %10s %9.0f us %9.1f%%\n", op, si->value[i],
               cnt > 0 && sum != NULL ? strtod(sum, NULL) * 1e6 / cnt : 0.0,
               cnt > 0 && le1 != NULL ? strtod(le1, NULL) * 100.0 / cnt : 0.0);
    }
    printf("keys         %s expired, %s expiring within 7 days\n", svd(si, "keys_expired"),
           svd(si, "keys_expiring_7d"));
    for (i = 0, n = 0; i < si->n; i++) {
        if (strncmp(si->name[i], "key_requests{", 13) != 0 ||
            !label_get(si->name[i], "key", key, sizeof(key)))
            continue;
        if (n++ == 0)
            printf("key usage    %-32s %10s  %s\n", "KEY", "REQUESTS", "LAST USE (UTC)");
        last = sv_label(si, "key_last_use_seconds", "key", key, NULL);
        if (last != NULL)
            utc_str(last, when, sizeof(when));
        printf("             %-32s %10s  %s\n", key, si->value[i], last != NULL ? when : "-");
    }
    if (sv(si, "key_requests_untracked") != NULL)
        printf("             %-32s %10s\n", "(untracked keys)", sv(si, "key_requests_untracked"));
    if (sv(si, "status_truncated") != NULL)
        printf("note         the status answer was too long; some lines are missing\n");
}

/* The names the readable report shows in its own lines. */
static int known_name(const char *name)
{
    static const char *const names[] = {
        "version",
        "uptime_seconds",
        "token_label",
        "token_model",
        "token_module",
        "token_available",
        "token_logged_in",
        "token_sessions",
        "token_recoveries",
        "token_fault",
        "threads",
        "connections_open",
        "connections_total",
        "cache_enabled",
        "cache_entries",
        "cache_hits",
        "cache_misses",
        "cache_ttl_seconds",
        "cache_size",
        "max_connections",
        "max_connections_per_peer",
        "keys_expired",
        "keys_expiring_7d",
        "key_requests_untracked",
        "status_truncated",
        "revalidate_ms",
        "revalidate_age_ms",
        "revalidations",
        "revalidate_changes",
        "key_changes",
    };
    size_t i;

    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcmp(name, names[i]) == 0)
            return 1;
    return strncmp(name, "requests{", 9) == 0 || is_structured(name);
}

static void print_report(const status_info *si)
{
    char op[64], res[96];
    const char *up = sv(si, "uptime_seconds");
    unsigned long total = 0, s = up != NULL ? strtoul(up, NULL, 10) : 0;
    size_t i, nreq = 0;

    printf("p11pskd %s at %s, up ", svd(si, "version"), si->socket);
    if (s >= 86400)
        printf("%lud ", s / 86400);
    printf("%02luh%02lum%02lus\n", s / 3600 % 24, s / 60 % 60, s % 60);
    printf("token        '%s' (%s), module %s\n", svd(si, "token_label"), svd(si, "token_model"),
           svd(si, "token_module"));
    printf("             available: %s, logged in: %s, sessions: %s, recoveries: %s\n",
           yesno(si, "token_available"), yesno(si, "token_logged_in"), svd(si, "token_sessions"),
           svd(si, "token_recoveries"));
    if (sv(si, "token_fault") != NULL)
        printf("             fault: %s\n", sv(si, "token_fault"));
    printf("threads      %s\n", svd(si, "threads"));
    printf("connections  %s open, %s total\n", svd(si, "connections_open"),
           svd(si, "connections_total"));
    printf("connections  limits: %s in all, %s per peer uid\n", svd(si, "max_connections"),
           svd(si, "max_connections_per_peer"));
    printf("cache        %s: %s entries of %s, ttl %s s, %s hits, %s misses\n",
           strcmp(yesno(si, "cache_enabled"), "yes") == 0 ? "on" : "off", svd(si, "cache_entries"),
           svd(si, "cache_size"), svd(si, "cache_ttl_seconds"), svd(si, "cache_hits"),
           svd(si, "cache_misses"));
    printf("revalidate   every %s ms, oldest validation %s ms ago, %s revalidations, %s changes "
           "found, %s keys changed (incl. flushes)\n",
           svd(si, "revalidate_ms"), svd(si, "revalidate_age_ms"), svd(si, "revalidations"),
           svd(si, "revalidate_changes"), svd(si, "key_changes"));
    for (i = 0; i < si->n; i++) {
        if (!request_labels(si->name[i], op, sizeof(op), res, sizeof(res)))
            continue;
        if (nreq++ == 0)
            printf("requests     %-16s %-24s %10s\n", "OP", "RESULT", "COUNT");
        printf("             %-16s %-24s %10s\n", op, res, si->value[i]);
        total += strtoul(si->value[i], NULL, 10);
    }
    if (nreq == 0)
        printf("requests     none yet\n");
    else
        printf("             %-16s %-24s %10lu\n", "total", "", total);
    print_tables(si);
    for (i = 0; i < si->n; i++)
        if (!known_name(si->name[i]))
            printf("%-12s %s\n", si->name[i], si->value[i]);
}

/* "latency": per op count, sum and cumulative buckets; "keys": per-key usage. */
static void json_tables(const status_info *si)
{
    char op[64], le[32], key[2 * P11PSK_KEY_LABEL_MAX];
    const char *v;
    size_t i, j, n = 0, nb;

    printf(",\n  \"latency\": [");
    for (i = 0; i < si->n; i++) {
        if (strncmp(si->name[i], "request_duration_seconds_count{", 31) != 0 ||
            !label_get(si->name[i], "op", op, sizeof(op)) || !is_number(si->value[i]))
            continue;
        printf("%s\n    {\"op\": ", n++ ? "," : "");
        p11psk_cli_json_str(stdout, op);
        v = sv_label(si, "request_duration_seconds_sum", "op", op, NULL);
        printf(", \"count\": %s, \"sum_seconds\": %s, \"buckets\": [", si->value[i],
               v != NULL && is_number(v) ? v : "0");
        for (j = 0, nb = 0; j < si->n; j++) {
            if (strncmp(si->name[j], "request_duration_seconds_bucket{", 32) != 0 ||
                !label_get(si->name[j], "op", key, sizeof(key)) || strcmp(key, op) != 0 ||
                !label_get(si->name[j], "le", le, sizeof(le)) || !is_number(si->value[j]))
                continue;
            printf("%s{\"le\": ", nb++ ? ", " : "");
            p11psk_cli_json_str(stdout, le);
            printf(", \"count\": %s}", si->value[j]);
        }
        printf("]}");
    }
    printf("%s],\n  \"keys\": [", n ? "\n  " : "");
    for (i = 0, n = 0; i < si->n; i++) {
        if (strncmp(si->name[i], "key_requests{", 13) != 0 ||
            !label_get(si->name[i], "key", key, sizeof(key)) || !is_number(si->value[i]))
            continue;
        printf("%s\n    {\"key\": ", n++ ? "," : "");
        p11psk_cli_json_str(stdout, key);
        v = sv_label(si, "key_last_use_seconds", "key", key, NULL);
        printf(", \"requests\": %s, \"last_use\": %s}", si->value[i],
               v != NULL && is_number(v) ? v : "null");
    }
    printf("%s]", n ? "\n  " : "");
}

static void print_json(const status_info *si)
{
    static const char *const bools[] = {"token_available", "token_logged_in", "cache_enabled"};
    char op[64], res[96];
    unsigned long total = 0;
    size_t i, j, nreq = 0;
    int isbool;

    printf("{\n  \"socket\": ");
    p11psk_cli_json_str(stdout, si->socket);
    for (i = 0; i < si->n; i++) {
        if (strncmp(si->name[i], "requests{", 9) == 0 || is_structured(si->name[i]))
            continue;
        printf(",\n  ");
        p11psk_cli_json_str(stdout, si->name[i]);
        printf(": ");
        for (isbool = 0, j = 0; j < sizeof(bools) / sizeof(bools[0]); j++)
            isbool |= strcmp(si->name[i], bools[j]) == 0;
        if (isbool)
            printf("%s", strcmp(si->value[i], "0") == 0 ? "false" : "true");
        else if (is_number(si->value[i]) && strcmp(si->name[i], "version") != 0)
            printf("%s", si->value[i]);
        else
            p11psk_cli_json_str(stdout, si->value[i]);
    }
    printf(",\n  \"requests\": [");
    for (i = 0; i < si->n; i++) {
        if (!request_labels(si->name[i], op, sizeof(op), res, sizeof(res)) ||
            !is_number(si->value[i]))
            continue;
        printf("%s\n    {\"op\": ", nreq++ ? "," : "");
        p11psk_cli_json_str(stdout, op);
        printf(", \"result\": ");
        p11psk_cli_json_str(stdout, res);
        printf(", \"count\": %s}", si->value[i]);
        total += strtoul(si->value[i], NULL, 10);
    }
    printf("%s],\n  \"requests_total\": %lu", nreq ? "\n  " : "", total);
    json_tables(si);
    printf("\n}\n");
}

/* Why p11pskd could not be reached (why: the socket path and errno) and what to check. */
static void unreachable(const char *why)
{
    fprintf(stderr,
            "p11psk: cannot reach p11pskd: %s; is p11pskd running (systemctl status "
            "p11pskd)? With \"Permission denied\" this user is not in the socket's group "
            "(socket-group in p11pskd.conf; e.g. usermod -aG p11psk USER, then log in "
            "again). Give another socket with --socket PATH\n",
            why);
}

int p11psk_cli_status(const p11psk_config *cfg, int argc, char **argv)
{
    static status_info si; /* 8 KiB: off the stack */
    char why[400];
    int json = 0, rc;

    si.socket = daemon_opts(cfg, argc, argv, p11psk_usage_status, &json);
    if ((rc = fetch(&si, why, sizeof(why))) < 0) {
        unreachable(why);
        return 1;
    }
    if (rc > 0)
        return 1;
    if (json)
        print_json(&si);
    else
        print_report(&si);
    return 0;
}

/* ---- Prometheus text format ---- */

/* How a status name is exposed; names not listed become untyped p11psk_NAME. */
static const struct {
    const char *name, *metric, *type, *help;
} metric_map[] = {
    {"uptime_seconds", "p11psk_uptime_seconds", "gauge", "Seconds since p11pskd started."},
    {"token_available", "p11psk_token_available", "gauge",
     "Whether the token can be used (0 while the module is reinitialised after a fault)."},
    {"token_logged_in", "p11psk_token_logged_in", "gauge", "Whether p11pskd is logged in."},
    {"token_sessions", "p11psk_token_sessions", "gauge", "PKCS#11 sessions in the pool."},
    {"token_recoveries", "p11psk_token_recoveries_total", "counter",
     "Module reinitialisations after device faults."},
    {"threads", "p11psk_threads", "gauge", "Worker threads."},
    {"connections_open", "p11psk_connections_open", "gauge", "Client connections open now."},
    {"connections_total", "p11psk_connections_total", "counter", "Client connections accepted."},
    {"cache_enabled", "p11psk_cache_enabled", "gauge",
     "Whether p11pskd caches PSK-only values (cache = on)."},
    {"cache_entries", "p11psk_cache_entries", "gauge", "Values in the cache."},
    {"cache_hits", "p11psk_cache_hits_total", "counter", "Cache lookups answered from the cache."},
    {"cache_misses", "p11psk_cache_misses_total", "counter", "Cache lookups that missed."},
    {"cache_ttl_seconds", "p11psk_cache_ttl_seconds", "gauge", "Lifetime of a cached value."},
    {"cache_size", "p11psk_cache_size", "gauge", "Most values the cache holds (cache-size)."},
    {"revalidate_ms", "p11psk_revalidate_ms", "gauge",
     "revalidate-ms: cached keys are re-checked in the token at least this often."},
    {"revalidate_age_ms", "p11psk_revalidate_age_ms", "gauge",
     "Milliseconds since the least recently validated cached key was checked (0: none)."},
    {"revalidations", "p11psk_revalidations_total", "counter",
     "Re-validations of cached keys against the token."},
    {"revalidate_changes", "p11psk_revalidate_changes_total", "counter",
     "Re-validations that found a key removed or with another value."},
    {"key_changes", "p11psk_key_changes_total", "counter",
     "Keys whose cached values were dropped (flushes and changes found)."},
    {"max_connections", "p11psk_max_connections", "gauge", "max-connections."},
    {"max_connections_per_peer", "p11psk_max_connections_per_peer", "gauge",
     "max-connections-per-peer."},
    {"requests", "p11psk_requests_total", "counter", "Requests answered, by operation and result."},
    {"keys_expired", "p11psk_keys_expired", "gauge", "Keys past their CKA_END_DATE."},
    {"keys_expiring_7d", "p11psk_keys_expiring_7d", "gauge",
     "Keys whose CKA_END_DATE ends within 7 days."},
    {"request_duration_seconds", "p11psk_request_duration_seconds", "histogram",
     "Time p11pskd took to answer a request, by operation."},
    {"key_requests", "p11psk_key_requests_total", "counter",
     "Key requests by key label, for the metrics-top-keys most used keys."},
    {"key_last_use_seconds", "p11psk_key_last_use_timestamp_seconds", "gauge",
     "Last request for the key, seconds since the epoch (same keys as key_requests)."},
    {"key_requests_untracked", "p11psk_key_requests_untracked_total", "counter",
     "Key requests for keys beyond the tracked ones (4096 labels)."},
    {"status_truncated", "p11psk_status_truncated", "gauge",
     "1 when the status answer was too long and lines are missing."},
};

/* Histogram samples (NAME_bucket, _sum, _count) belong to the family NAME: *suffix gets
 * the part after it, else "". */
static void family_of(char *base, const char **suffix)
{
    static const char *const sfx[] = {"_bucket", "_sum", "_count"};
    size_t i, n = strlen(base), k;

    *suffix = "";
    if (strncmp(base, "request_duration_seconds", 24) != 0)
        return;
    for (i = 0; i < sizeof(sfx) / sizeof(sfx[0]); i++) {
        k = strlen(sfx[i]);
        if (n > k && strcmp(base + n - k, sfx[i]) == 0) {
            *suffix = sfx[i];
            base[n - k] = '\0';
            return;
        }
    }
}

/* Text p11pskd reports that is no sample: shown as labels of p11psk_info. */
static int is_info_name(const char *name)
{
    return strcmp(name, "version") == 0 || strcmp(name, "token_label") == 0 ||
           strcmp(name, "token_model") == 0 || strcmp(name, "token_module") == 0 ||
           strcmp(name, "token_fault") == 0;
}

/* A label value: backslash, double quote and newline escaped. */
static void prom_label(const char *key, const char *v, int first)
{
    printf("%s%s=\"", first ? "" : ",", key);
    for (; v != NULL && *v != '\0'; v++) {
        if (*v == '\\' || *v == '"')
            printf("\\%c", *v);
        else if (*v == '\n')
            printf("\\n");
        else
            putchar(*v);
    }
    putchar('"');
}

/* The metric name for status name (up to '{'), and its labels ("" or "{...}"). */
static void split_metric(const char *name, char *base, size_t cap, const char **labels)
{
    size_t n = strcspn(name, "{"), i;

    if (n >= cap)
        n = cap - 1;
    for (i = 0; i < n; i++)
        base[i] = (char)((name[i] >= 'a' && name[i] <= 'z') || (name[i] >= 'A' && name[i] <= 'Z') ||
                                 (name[i] >= '0' && name[i] <= '9') || name[i] == '_'
                             ? name[i]
                             : '_');
    base[n] = '\0';
    *labels = name + strcspn(name, "{");
}

static void print_metrics(const status_info *si)
{
    char base[96], other[96];
    const char *labels, *olabels, *metric, *type, *help, *sfx, *osfx;
    size_t i, j, k;

    printf("# HELP p11psk_info p11pskd version and token; the value is always 1.\n"
           "# TYPE p11psk_info gauge\np11psk_info{");
    prom_label("version", svd(si, "version"), 1);
    prom_label("token", svd(si, "token_label"), 0);
    prom_label("model", svd(si, "token_model"), 0);
    prom_label("module", svd(si, "token_module"), 0);
    printf("} 1\n");
    for (i = 0; i < si->n; i++) {
        if (is_info_name(si->name[i]) || !is_number(si->value[i]))
            continue;
        split_metric(si->name[i], base, sizeof(base), &labels);
        family_of(base, &sfx);
        /* Families are printed whole at their first sample, so skip later ones. */
        for (j = 0; j < i; j++) {
            split_metric(si->name[j], other, sizeof(other), &olabels);
            family_of(other, &osfx);
            if (strcmp(base, other) == 0 && !is_info_name(si->name[j]) && is_number(si->value[j]))
                break;
        }
        if (j < i)
            continue;
        metric = NULL;
        type = "untyped";
        help = "p11pskd status value.";
        for (k = 0; k < sizeof(metric_map) / sizeof(metric_map[0]); k++)
            if (strcmp(base, metric_map[k].name) == 0) {
                metric = metric_map[k].metric;
                type = metric_map[k].type;
                help = metric_map[k].help;
            }
        if (metric == NULL) {
            printf("# HELP p11psk_%s %s\n# TYPE p11psk_%s %s\n", base, help, base, type);
        } else {
            printf("# HELP %s %s\n# TYPE %s %s\n", metric, help, metric, type);
        }
        for (j = i; j < si->n; j++) {
            if (is_info_name(si->name[j]) || !is_number(si->value[j]))
                continue;
            split_metric(si->name[j], other, sizeof(other), &olabels);
            family_of(other, &osfx);
            if (strcmp(base, other) != 0)
                continue;
            /* Label values arrive escaped the Prometheus way (stats.c): passed on as is. */
            if (metric != NULL)
                printf("%s%s%s %s\n", metric, osfx, olabels, si->value[j]);
            else
                printf("p11psk_%s%s%s %s\n", base, osfx, olabels, si->value[j]);
        }
    }
}

int p11psk_cli_metrics(const p11psk_config *cfg, int argc, char **argv)
{
    static status_info si;
    char why[400];
    int rc;

    si.socket = daemon_opts(cfg, argc, argv, p11psk_usage_metrics, NULL);
    rc = fetch(&si, why, sizeof(why));
    if (rc > 0)
        return 1;
    printf("# HELP p11psk_up Whether p11pskd answered the status request.\n"
           "# TYPE p11psk_up gauge\n"
           "p11psk_up %d\n",
           rc == 0);
    if (rc < 0) {
        /* p11psk_up 0 on stdout for the textfile collector, and a failing exit status
         * for whatever runs this (systemd timer, cron) to notice. */
        fflush(stdout);
        unreachable(why);
        return 1;
    }
    print_metrics(&si);
    return 0;
}
