/* SPDX-License-Identifier: Apache-2.0 */
/* The list of users p11pskd may run as: defaults, parsing, lookup. See daemon_users.h. */
#include "p11psk/daemon_users.h"

#include <errno.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int p11psk_daemon_users_allows(const p11psk_daemon_users *p, uid_t uid)
{
    int i;

    for (i = 0; i < p->n; i++)
        if (p->uid[i] == uid)
            return 1;
    return 0;
}

int p11psk_daemon_users_add(p11psk_daemon_users *p, uid_t uid, const char *name)
{
    size_t used = strlen(p->names);
    char num[32];

    if (p11psk_daemon_users_allows(p, uid))
        return 0;
    if (p->n >= P11PSK_DAEMON_USERS_MAX)
        return -1;
    p->uid[p->n++] = uid;
    if (name == NULL) {
        snprintf(num, sizeof(num), "uid %lu", (unsigned long)uid);
        name = num;
    }
    snprintf(p->names + used, sizeof(p->names) - used, "%s%s", used > 0 ? ", " : "", name);
    return 0;
}

/* The uid of user name; -1 when there is no such user. getpwnam() is not thread-safe. */
static int user_uid(const char *name, uid_t *uid)
{
    struct passwd pw, *res = NULL;
    char buf[4096];

    if (getpwnam_r(name, &pw, buf, sizeof(buf), &res) != 0 || res == NULL)
        return -1;
    *uid = pw.pw_uid;
    return 0;
}

void p11psk_daemon_users_default(p11psk_daemon_users *p)
{
    uid_t uid;

    memset(p, 0, sizeof(*p));
    p11psk_daemon_users_add(p, 0, "root");
    if (user_uid(P11PSK_DAEMON_SYSUSER, &uid) == 0)
        p11psk_daemon_users_add(p, uid, P11PSK_DAEMON_SYSUSER);
}

/* Configuration text goes into error messages: no control bytes. */
static void printable(char *s)
{
    for (; *s != '\0'; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s == 0x7f)
            *s = '?';
}

int p11psk_daemon_users_parse(p11psk_daemon_users *p, const char *spec, char *err, size_t errcap)
{
    const char *s = spec, *end;
    char item[64], *numend;
    unsigned long v;
    uid_t uid;
    size_t n;

    memset(p, 0, sizeof(*p));
    while (*s != '\0') {
        s += strspn(s, " \t");
        end = s + strcspn(s, ",");
        n = (size_t)(end - s);
        while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
            n--;
        if (n == 0 || n >= sizeof(item)) {
            snprintf(err, errcap, "expected user names or uids separated by commas");
            goto deny;
        }
        memcpy(item, s, n);
        item[n] = '\0';
        printable(item);
        /* A leading digit makes a uid (POSIX names may not start with one portably). */
        if (item[0] >= '0' && item[0] <= '9') {
            errno = 0;
            v = strtoul(item, &numend, 10);
            if (errno != 0 || *numend != '\0' || v >= (unsigned long)(uid_t)-1) {
                snprintf(err, errcap, "\"%s\" is not a valid uid", item);
                goto deny;
            }
            uid = (uid_t)v;
            if (p11psk_daemon_users_add(p, uid, NULL) != 0)
                goto full;
        } else if (user_uid(item, &uid) != 0) {
            snprintf(err, errcap, "no user \"%s\" on this system", item);
            goto deny;
        } else if (p11psk_daemon_users_add(p, uid, item) != 0) {
            goto full;
        }
        s = *end == ',' ? end + 1 : end;
    }
    if (p->n == 0) {
        snprintf(err, errcap, "empty list: name at least one user p11pskd runs as");
        goto deny;
    }
    return 0;
full:
    snprintf(err, errcap, "more than %d users", P11PSK_DAEMON_USERS_MAX);
deny:
    memset(p, 0, sizeof(*p));
    return -1;
}
