/* SPDX-License-Identifier: Apache-2.0 */
/* p11pskd's request counters and the STATUS answer built from them. */
#include "server_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* Upper bounds of the latency buckets in µs, and as Prometheus "le" values (seconds). */
static const long long lat_le_us[STATS_LAT_BUCKETS - 1] = {50,   100,  250,  500,
                                                           1000, 2500, 5000, 10000};
static const char *const lat_le_str[STATS_LAT_BUCKETS] = {
    "0.00005", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "+Inf"};

#define EXPIRING_SOON_S (7 * 86400LL)

int stats_init(server *s)
{
    s->stats.keys = key_usage_new();
    return s->stats.keys != NULL ? 0 : -1;
}

void stats_fini(server *s)
{
    key_usage_free(s->stats.keys);
    s->stats.keys = NULL;
}

void stats_count(server *s, const outcome *o, long long us)
{
    size_t slot = p11psk_op_index(o->op), b; /* unknown codes: the "other" slot */
    int status = o->err.status;

    if (status >= 0 && status < P11PSK_ST_MAX_)
        atomic_fetch_add(&s->stats.req[slot][status], 1);
    if (us < 0)
        us = 0;
    for (b = 0; b < STATS_LAT_BUCKETS - 1 && us > lat_le_us[b]; b++)
        ;
    atomic_fetch_add(&s->stats.lat[slot][b], 1);
    atomic_fetch_add(&s->stats.lat_sum_us[slot], (unsigned long long)us);
    if (o->keyed)
        key_usage_note(s->stats.keys, o->ident, (long long)time(NULL));
}

/* A label value for a status line: Prometheus escapes for \\, " and newline; other control
 * bytes become '?' so that the line stays one line of text. */
static void label_value(const char *v, char *out, size_t cap)
{
    size_t o = 0;

    for (; *v != '\0' && o + 3 < cap; v++) {
        unsigned char ch = (unsigned char)*v;

        if (ch == '\\' || ch == '"') {
            out[o++] = '\\';
            out[o++] = (char)ch;
        } else if (ch == '\n') {
            out[o++] = '\\';
            out[o++] = 'n';
        } else {
            out[o++] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
        }
    }
    out[o] = '\0';
}

void stats_result_word(int status, char *out, size_t cap)
{
    size_t i;

    snprintf(out, cap, "%s", p11psk_status_str(status));
    for (i = 0; out[i] != '\0'; i++)
        if (out[i] == ' ')
            out[i] = '-';
}

/* One "name value" line per metric; the CLI turns them into text, JSON or Prometheus. */
int stats_status(server *s, p11psk_frame *resp, outcome *o)
{
    /* The answer fits one frame; the last 32 bytes are kept for status_truncated. */
    const size_t full = P11PSK_WIRE_MAX - 64;
    char *txt = malloc(full), res[48], lab[2 * P11PSK_KEY_LABEL_MAX + 4];
    size_t cap = full - 32, off = 0, i, j, nexp = 0, nsoon = 0, nrows, top;
    key_usage_row *rows = NULL;
    unsigned long long sum;
    unsigned long n, cum, untracked = 0;
    int truncated = 0;
    p11psk_token_info ti;
    p11psk_cache_stats cs;
    p11psk_token_revalidate_stats rv;
    struct timespec now;
    long long wall = (long long)time(NULL);

    if (txt == NULL)
        return outcome_fail(o, P11PSK_ST_INTERNAL, "out of memory");
#define ADD(...)                                                                                   \
    do {                                                                                           \
        int w_ = snprintf(txt + off, cap - off, __VA_ARGS__);                                      \
        if (w_ > 0 && (size_t)w_ < cap - off)                                                      \
            off += (size_t)w_;                                                                     \
        else                                                                                       \
            truncated = 1;                                                                         \
    } while (0)
    clock_gettime(CLOCK_MONOTONIC, &now);
    p11psk_token_state(s->tok, &ti);
    p11psk_cache_get_stats(s->cache, &cs);
    p11psk_token_revalidate_get(s->tok, &rv);
    ADD("version %s\n", P11PSK_VERSION);
    ADD("uptime_seconds %ld\n", (long)(now.tv_sec - s->started.tv_sec));
    ADD("token_label %s\n", ti.label);
    ADD("token_model %s\n", ti.model);
    ADD("token_module %s\n", p11psk_token_module(s->tok));
    ADD("token_available %d\n", ti.available);
    ADD("token_logged_in %d\n", ti.logged_in);
    ADD("token_sessions %zu\n", ti.sessions);
    ADD("token_recoveries %lu\n", ti.recoveries);
    if (!ti.available)
        ADD("token_fault %s\n", ti.down_why);
    ADD("threads %zu\n", s->nworkers);
    pthread_mutex_lock(&s->peerlock);
    ADD("connections_open %zu\n", s->nconns);
    pthread_mutex_unlock(&s->peerlock);
    ADD("connections_total %lu\n", atomic_load(&s->stats.connections));
    ADD("cache_enabled %d\n", cs.max_entries > 0);
    ADD("cache_entries %lu\n", cs.entries);
    ADD("cache_hits %lu\n", cs.hits);
    ADD("cache_misses %lu\n", cs.misses);
    ADD("cache_ttl_seconds %lu\n", cs.ttl_s);
    ADD("cache_size %lu\n", cs.max_entries);
    ADD("revalidate_ms %lu\n", rv.revalidate_ms);
    ADD("revalidate_age_ms %lu\n", rv.age_ms);
    ADD("revalidations %lu\n", rv.revalidations);
    ADD("revalidate_changes %lu\n", rv.changes);
    ADD("key_changes %lu\n", p11psk_keychange_count());
    ADD("max_connections %u\n", s->cfg->max_connections);
    ADD("max_connections_per_peer %u\n", s->cfg->max_connections_peer);
    for (i = 0; i <= p11psk_ops_n; i++) /* the rows, then "other" */
        for (j = 0; j < P11PSK_ST_MAX_; j++) {
            if ((n = atomic_load(&s->stats.req[i][j])) == 0)
                continue;
            stats_result_word((int)j, res, sizeof(res));
            ADD("requests{op=\"%s\",result=\"%s\"} %lu\n", p11psk_op_slot_name(i), res, n);
        }
    p11psk_token_expiry_counts(s->tok, wall, EXPIRING_SOON_S, &nexp, &nsoon);
    ADD("keys_expired %zu\n", nexp);
    ADD("keys_expiring_7d %zu\n", nsoon);
    /* Latency histogram per operation, cumulative as Prometheus wants it. */
    for (i = 0; i <= p11psk_ops_n; i++) {
        for (n = 0, j = 0; j < STATS_LAT_BUCKETS; j++)
            n += atomic_load(&s->stats.lat[i][j]);
        if (n == 0)
            continue;
        for (cum = 0, j = 0; j < STATS_LAT_BUCKETS; j++) {
            cum += atomic_load(&s->stats.lat[i][j]);
            ADD("request_duration_seconds_bucket{op=\"%s\",le=\"%s\"} %lu\n",
                p11psk_op_slot_name(i), lat_le_str[j], cum);
        }
        sum = atomic_load(&s->stats.lat_sum_us[i]);
        ADD("request_duration_seconds_sum{op=\"%s\"} %llu.%06llu\n", p11psk_op_slot_name(i),
            sum / 1000000, sum % 1000000);
        ADD("request_duration_seconds_count{op=\"%s\"} %lu\n", p11psk_op_slot_name(i), cum);
    }
    /* Per-key usage, the most used keys only: label cardinality stays bounded. */
    top = s->cfg->metrics_top_keys;
    if (top > 0 && (rows = calloc(top, sizeof(*rows))) != NULL) {
        nrows = key_usage_top(s->stats.keys, rows, top, &untracked);
        for (i = 0; i < nrows; i++) {
            label_value(rows[i].label, lab, sizeof(lab));
            ADD("key_requests{key=\"%s\"} %lu\n", lab, rows[i].requests);
            ADD("key_last_use_seconds{key=\"%s\"} %lld\n", lab, rows[i].last_use);
        }
        if (untracked > 0)
            ADD("key_requests_untracked %lu\n", untracked);
        free(rows);
    }
    if (truncated) { /* say so rather than drop lines silently */
        cap = full;
        ADD("status_truncated 1\n");
    }
#undef ADD
    p11psk_frame_add(resp, P11PSK_T_INFO, txt, off);
    free(txt);
    return P11PSK_ST_OK;
}
