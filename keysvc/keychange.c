/* SPDX-License-Identifier: Apache-2.0 */
/* What happens when a key changed in the token; see keychange.h. */
#include "keychange.h"

#include <stdatomic.h>

#include "genpage.h"
#include "log.h"
#include "p11psk/handle.h"

_Static_assert(P11PSK_CACHE_FP_LEN == P11PSK_KEY_FP_LEN, "cache entries hold key fingerprints");

static p11psk_cache *_Atomic kc_cache;
static atomic_ulong kc_count;

void p11psk_keychange_init(p11psk_cache *cache)
{
    atomic_store(&kc_cache, cache);
}

size_t p11psk_keys_changed(p11psk_token *tok, const uint8_t *id, size_t idlen, const char *why)
{
    char hex[2 * P11PSK_ID_MAX + 1] = "*";
    size_t n;

    if (id != NULL && idlen > P11PSK_ID_MAX)
        return 0; /* no handle names such a key: nothing was derived from it */
    n = p11psk_cache_flush(atomic_load(&kc_cache), id, id != NULL ? idlen : 0);
    if (tok != NULL)
        p11psk_token_forget(tok, id, idlen);
    /* Every provider on this host drops its cached binder keys before it next uses one. */
    p11psk_genpage_bump();
    atomic_fetch_add(&kc_count, 1);
    if (id != NULL)
        p11psk_hex_encode(id, idlen, hex);
    p11psk_log(P11PSK_LOG_INFO, "key CKA_ID %s: %s; dropped %zu cached values", hex, why, n);
    return n;
}

unsigned long p11psk_keychange_count(void)
{
    return atomic_load(&kc_count);
}
