/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The key generation page: one sealed memfd page whose first 8 bytes are a counter that
 * changes whenever a key's value or existence may have changed (keychange.c). p11pskd keeps
 * the only writable mapping; providers get a read-only descriptor (GEN_PAGE) and map it,
 * so they can tell with one load that their cached binder keys are still current.
 */
#ifndef P11PSK_KEYSVC_GENPAGE_H
#define P11PSK_KEYSVC_GENPAGE_H

#include <stddef.h>
#include <stdint.h>

/* The value a stopping p11pskd leaves: "this page is dead, fetch a new one". */
#define P11PSK_GEN_DEAD UINT64_MAX

/* Creates, maps and seals the page. 0, or -1 with the reason in why (the daemon runs on,
 * and providers simply do not cache). */
int p11psk_genpage_open(char *why, size_t whylen);
/* The descriptor to pass to a client (read-only where /proc allows), or -1. */
int p11psk_genpage_fd(void);
/* The current generation (0 when there is no page). */
uint64_t p11psk_genpage_value(void);
/* Moves the generation on; a no-op without a page (the CLI links this too). */
void p11psk_genpage_bump(void);
/* Marks the page dead (P11PSK_GEN_DEAD) as p11pskd stops: clients drop their caches and
 * fetch the next daemon's page. */
void p11psk_genpage_close(void);

#endif
