/* SPDX-License-Identifier: Apache-2.0 */
/* p11pskd's request counters and the STATUS answer built from them. */
#include "server_int.h"

#include <stdio.h>
#include <stdlib.h>

void stats_count(server *s, int op, int status)
{
    size_t slot = p11psk_op_index(op); /* unknown codes: the "other" slot */

    if (status >= 0 && status < P11PSK_ST_MAX_)
        atomic_fetch_add(&s->stats.req[slot][status], 1);
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
    char *txt = malloc(P11PSK_WIRE_MAX - 64), res[48];
    size_t cap = P11PSK_WIRE_MAX - 64, off = 0, i, j;
    p11psk_token_info ti;
    p11psk_cache_stats cs;
    p11psk_token_revalidate_stats rv;
    struct timespec now;
    unsigned long n;

    if (txt == NULL)
        return outcome_fail(o, P11PSK_ST_INTERNAL, "out of memory");
#define ADD(...)                                                                                   \
    do {                                                                                           \
        int w_ = snprintf(txt + off, cap - off, __VA_ARGS__);                                      \
        if (w_ > 0 && (size_t)w_ < cap - off)                                                      \
            off += (size_t)w_;                                                                     \
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
#undef ADD
    p11psk_frame_add(resp, P11PSK_T_INFO, txt, off);
    free(txt);
    return P11PSK_ST_OK;
}
