/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Whether a CPU is idle right now, for the one decision that needs it: may a thread that
 * waits for the other end of the socket poll instead of sleeping? Waking a sleeping thread
 * costs 50-150 us on some VMs, but polling must never take a CPU that a runnable thread
 * could use.
 */
#ifndef P11PSK_CPUIDLE_H
#define P11PSK_CPUIDLE_H

/*
 * 1 while no more threads are runnable host-wide than there are CPUs (a caller that is
 * polling counts itself), from /proc/loadavg's instantaneous count. One reading is shared
 * by every thread of the process and reused while younger than max_age_us (a read costs a
 * few us). 0 when it cannot be read (no /proc, a chroot): then nobody polls.
 */
int p11psk_cpu_idle(long long max_age_us);

#endif
