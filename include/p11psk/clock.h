/* SPDX-License-Identifier: Apache-2.0 */
/* Monotonic time, the one clock every timeout, TTL and latency figure is measured on. */
#ifndef P11PSK_CLOCK_H
#define P11PSK_CLOCK_H

#include <time.h>

static inline long long p11psk_mono_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static inline long long p11psk_mono_ms(void)
{
    return p11psk_mono_us() / 1000;
}

#endif
