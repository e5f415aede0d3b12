/* SPDX-License-Identifier: Apache-2.0 */
/* The one call for "a key's value or existence may have changed". */
#ifndef P11PSK_KEYSVC_KEYCHANGE_H
#define P11PSK_KEYSVC_KEYCHANGE_H

/* Moves the generation page on (genpage.h), so that every provider on this host drops its
 * cached binder keys before its next use of them. Cheap, thread-safe, callable anywhere. */
void p11psk_keys_changed(void);

#endif
