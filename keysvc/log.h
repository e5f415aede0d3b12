/* SPDX-License-Identifier: Apache-2.0 */
/* Daemon logging: stderr in the foreground (the journal under systemd), syslog once
 * daemonized. Never key bytes. */
#ifndef P11PSK_KEYSVC_LOG_H
#define P11PSK_KEYSVC_LOG_H

#include <stddef.h>

enum p11psk_log_level {
    P11PSK_LOG_ERROR = 0,
    P11PSK_LOG_WARN = 1,
    P11PSK_LOG_INFO = 2,
    P11PSK_LOG_DEBUG = 3,
};

/* Returns a P11PSK_LOG_* for "error", "warn", "info", "debug", or -1. */
int p11psk_log_level_from_name(const char *name);
const char *p11psk_log_level_name(int level);

/* use_syslog: 0 = stderr with a timestamp (or, when stderr is systemd's journal stream, a
 * "<N>" syslog priority prefix and no timestamp), 1 = syslog(LOG_DAEMON) as ident. */
void p11psk_log_open(const char *ident, int use_syslog, int level);
void p11psk_log_close(void);
void p11psk_log_set_level(int level); /* SIGHUP reload */
int p11psk_log_enabled(int level);
void p11psk_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * One value for a key=value log line, escaped as logfmt does, so that a label or a path
 * can neither end the line nor fake a field: control characters become \n \t \r \xHH, and
 * a value that is empty or holds a space, '=', '"', a backslash or an escape is quoted with '"'
 * (inner '"' and backslashes escaped). Other bytes (UTF-8) pass. out always ends up a complete,
 * NUL-terminated value; returns 0, or -1 when in did not fit in cap and was cut short.
 */
int p11psk_log_value(char *out, size_t cap, const char *in);
/* Room for the escaped form of a string of n bytes (worst case: every byte \xHH, quotes). */
#define P11PSK_LOG_VALUE_CAP(n) ((n)*4 + 3)

/* The first control character (below 0x20, or 0x7f) in s, or -1: identities with one are
 * refused where they are created, since labels end up in logs and config files. */
int p11psk_first_ctrl(const char *s);

#endif
