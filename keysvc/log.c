/* SPDX-License-Identifier: Apache-2.0 */
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

static struct {
    int use_syslog;
    int journal;      /* stderr is systemd's journal stream */
    atomic_int level; /* changed by SIGHUP while workers log */
    char ident[32];
} log_state = {0, 0, P11PSK_LOG_INFO, "p11pskd"};

static const char *const level_names[] = {"error", "warn", "info", "debug"};

int p11psk_log_level_from_name(const char *name)
{
    int i;

    for (i = 0; i <= P11PSK_LOG_DEBUG; i++)
        if (strcmp(name, level_names[i]) == 0)
            return i;
    return -1;
}

const char *p11psk_log_level_name(int level)
{
    return level >= 0 && level <= P11PSK_LOG_DEBUG ? level_names[level] : "?";
}

/* systemd names the journal stream it connected in JOURNAL_STREAM=DEV:INO; a check of stderr
 * against it tells a child's redirected stderr apart (sd_journal_stream_fd(3)). */
static int stderr_is_journal(void)
{
    const char *e = getenv("JOURNAL_STREAM");
    unsigned long long dev, ino;
    struct stat st;
    char end;

    if (e == NULL || sscanf(e, "%llu:%llu%c", &dev, &ino, &end) != 2 ||
        fstat(STDERR_FILENO, &st) != 0)
        return 0;
    return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void p11psk_log_open(const char *ident, int use_syslog, int level)
{
    snprintf(log_state.ident, sizeof(log_state.ident), "%s", ident);
    log_state.use_syslog = use_syslog;
    log_state.level = level;
    log_state.journal = !use_syslog && stderr_is_journal();
    if (use_syslog)
        openlog(log_state.ident, LOG_PID | LOG_NDELAY, LOG_DAEMON);
}

void p11psk_log_set_level(int level)
{
    log_state.level = level;
}

void p11psk_log_close(void)
{
    if (log_state.use_syslog)
        closelog();
    log_state.use_syslog = 0;
}

int p11psk_log_enabled(int level)
{
    return level <= log_state.level;
}

void p11psk_log(int level, const char *fmt, ...)
{
    static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
    char line[2048], stamp[32]; /* an audit line with every value escaped fits */
    struct timeval tv;
    struct tm tm;
    va_list ap;
    size_t n;

    if (!p11psk_log_enabled(level))
        return;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    /* One entry per call: a control character in a peer-supplied string cannot start a
     * forged line. */
    for (n = 0; line[n] != '\0'; n++)
        if ((unsigned char)line[n] < 0x20 || line[n] == 0x7f)
            line[n] = '?';
    if (log_state.use_syslog) {
        syslog(prio[level], "%s", line);
        return;
    }
    if (log_state.journal) { /* the journal adds time, name and pid; "<N>" sets the priority */
        fprintf(stderr, "<%d>%s: %s\n", prio[level], level_names[level], line);
        return;
    }
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
    fprintf(stderr, "%s.%03ldZ %s[%ld]: %s: %s\n", stamp, (long)tv.tv_usec / 1000, log_state.ident,
            (long)getpid(), level_names[level], line);
}

/* The escape of one byte inside a value, or NULL when it stands for itself. */
static const char *value_escape(unsigned char ch, char buf[5])
{
    switch (ch) {
    case '\n':
        return "\\n";
    case '\t':
        return "\\t";
    case '\r':
        return "\\r";
    case '"':
        return "\\\"";
    case '\\':
        return "\\\\";
    default:
        if (ch < 0x20 || ch == 0x7f) {
            snprintf(buf, 5, "\\x%02x", ch);
            return buf;
        }
        return NULL;
    }
}

int p11psk_log_value(char *out, size_t cap, const char *in)
{
    const unsigned char *p;
    size_t o = 0, n;
    int quote = in[0] == '\0', rc = 0;
    char buf[5];
    const char *e;

    if (cap < 3) { /* not even "" fits */
        if (cap > 0)
            out[0] = '\0';
        return -1;
    }
    for (p = (const unsigned char *)in; *p != '\0' && !quote; p++)
        quote = *p == ' ' || *p == '=' || value_escape(*p, buf) != NULL;
    if (quote)
        out[o++] = '"';
    for (p = (const unsigned char *)in; *p != '\0'; p++) {
        e = value_escape(*p, buf);
        n = e != NULL ? strlen(e) : 1;
        if (o + n + (size_t)quote + 1 > cap) { /* never cut an escape in half */
            rc = -1;
            break;
        }
        if (e != NULL)
            memcpy(out + o, e, n);
        else
            out[o] = (char)*p;
        o += n;
    }
    if (quote)
        out[o++] = '"';
    out[o] = '\0';
    return rc;
}

int p11psk_first_ctrl(const char *s)
{
    const unsigned char *p;

    for (p = (const unsigned char *)s; *p != '\0'; p++)
        if (*p < 0x20 || *p == 0x7f)
            return *p;
    return -1;
}
