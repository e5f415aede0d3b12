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
    "and requests by operation and result. Allowed for root, p11pskd's own user and the\n"
    "users that allow-status or allow-admin lines in p11pskd.conf name.\n"
    "\n"
    "  --json         print one JSON object instead of the report\n"
    "  --socket PATH  p11pskd's socket; default: `socket` in the configuration file\n"
    "                 (with --socket the file is not read)\n";

const char p11psk_usage_metrics[] =
    "Usage: p11psk metrics [--socket PATH]\n"
    "\n"
    "Prints p11pskd's status in the Prometheus text format (metrics named p11psk_*), e.g.\n"
    "for node_exporter's textfile collector:\n"
    "  p11psk metrics > DIR/p11psk.prom.$$ && mv DIR/p11psk.prom.$$ DIR/p11psk.prom\n"
    "When p11pskd cannot be reached it prints p11psk_up 0 and exits 0, so the outage is\n"
    "seen; a refused request (access denied) is an error.\n"
    "\n"
    "  --socket PATH  p11pskd's socket; default: `socket` in the configuration file\n"
    "                 (with --socket the file is not read)\n";

/* Parses the options of status (json != NULL) or metrics; exits on --help or a bad one. */
static const char *daemon_opts(const p11psk_config *cfg, int argc, char **argv,
                               const char *usage, int *json)
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
            fprintf(stderr, "p11psk: unknown option or missing value: '%s'\n%s",
                    argv[optind - 1], usage);
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
        fprintf(stderr, "p11psk: p11pskd at %s refused the status request: %s: %s\n",
                si->socket, p11psk_status_str(st), msg);
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
        /* Names hold no blanks; values may (token_model, token_fault). */
        if ((sp = strchr(p, ' ')) == NULL || sp == p || si->n == STATUS_LINES_MAX)
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

/* The names the readable report shows in its own lines. */
static int known_name(const char *name)
{
    static const char *const names[] = {
        "version",          "uptime_seconds",  "token_label",       "token_model",
        "token_module",     "token_available", "token_logged_in",   "token_sessions",
        "token_recoveries", "token_fault",     "threads",           "connections_open",
        "connections_total", "cache_enabled",  "cache_entries",     "cache_hits",
        "cache_misses",     "cache_ttl_seconds", "cache_size",     "max_connections",
        "max_connections_per_peer", "revalidate_ms", "revalidate_age_ms", "revalidations",
        "revalidate_changes", "key_changes",
    };
    size_t i;

    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcmp(name, names[i]) == 0)
            return 1;
    return strncmp(name, "requests{", 9) == 0;
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
           strcmp(yesno(si, "cache_enabled"), "yes") == 0 ? "on" : "off",
           svd(si, "cache_entries"), svd(si, "cache_size"), svd(si, "cache_ttl_seconds"),
           svd(si, "cache_hits"), svd(si, "cache_misses"));
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
    for (i = 0; i < si->n; i++)
        if (!known_name(si->name[i]))
            printf("%-12s %s\n", si->name[i], si->value[i]);
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
        if (strncmp(si->name[i], "requests{", 9) == 0)
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
    printf("%s],\n  \"requests_total\": %lu\n}\n", nreq ? "\n  " : "", total);
}

int p11psk_cli_status(const p11psk_config *cfg, int argc, char **argv)
{
    static status_info si; /* 8 KiB: off the stack */
    char why[400];
    int json = 0, rc;

    si.socket = daemon_opts(cfg, argc, argv, p11psk_usage_status, &json);
    if ((rc = fetch(&si, why, sizeof(why))) < 0) {
        fprintf(stderr, "p11psk: %s; is p11pskd running (systemctl status p11pskd)? Give "
                        "another socket with --socket PATH\n",
                why);
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
};

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
    const char *labels, *olabels, *metric, *type, *help;
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
        /* Families are printed whole at their first sample, so skip later ones. */
        for (j = 0; j < i; j++) {
            split_metric(si->name[j], other, sizeof(other), &olabels);
            if (strcmp(base, other) == 0 && !is_info_name(si->name[j]) &&
                is_number(si->value[j]))
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
            if (strcmp(base, other) != 0)
                continue;
            if (metric != NULL)
                printf("%s%s %s\n", metric, olabels, si->value[j]);
            else
                printf("p11psk_%s%s %s\n", base, olabels, si->value[j]);
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
        /* The outage is the metric: exit 0 so that the textfile gets p11psk_up 0. */
        fprintf(stderr, "p11psk: note: %s; printed p11psk_up 0\n", why);
        return 0;
    }
    print_metrics(&si);
    return 0;
}
