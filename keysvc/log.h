/* Daemon logging: stderr in the foreground (the journal under systemd), syslog once
 * daemonized. Never key bytes. */
#ifndef P11PSK_KEYSVC_LOG_H
#define P11PSK_KEYSVC_LOG_H

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

#endif
