/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Key changes seen by p11pskd: FLUSH (which `p11psk rotate` and `rm` send), a stale object
 * handle found while serving, and the token re-validation. Each calls p11psk_keys_changed.
 */
#include "keychange.h"

#include "genpage.h"

void p11psk_keys_changed(void)
{
    p11psk_genpage_bump();
}
