/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A key's validity window: CKA_END_DATE (a CK_DATE, "YYYYMMDD" without a terminator) to
 * and from "YYYY-MM-DD". The key is valid through the end of that day, UTC.
 */
#include <stdio.h>
#include <string.h>

#include "token.h"
#include "token_int.h"

#define DAY_S 86400LL

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm). */
static long long days_from_civil(long long y, unsigned m, unsigned d)
{
    long long era;
    unsigned yoe, doy, doe;

    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = (unsigned)(y - era * 400);
    doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (long long)doe - 719468;
}

static int leap(unsigned y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* y, m, d as a real date: 0, else -1. */
static int date_ok(unsigned y, unsigned m, unsigned d)
{
    static const unsigned mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};

    if (y < 1970 || y > 9999 || m < 1 || m > 12 || d < 1)
        return -1;
    return d <= mdays[m - 1] + (m == 2 && leap(y)) ? 0 : -1;
}

static int digits(const char *s, size_t n, unsigned *v)
{
    size_t i;

    *v = 0;
    for (i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        *v = *v * 10 + (unsigned)(s[i] - '0');
    }
    return 0;
}

int p11psk_date_parse(const char *s, CK_DATE *d, long long *end)
{
    unsigned y, m, dd;

    if (strlen(s) != 10 || s[4] != '-' || s[7] != '-' || digits(s, 4, &y) != 0 ||
        digits(s + 5, 2, &m) != 0 || digits(s + 8, 2, &dd) != 0 || date_ok(y, m, dd) != 0)
        return -1;
    memcpy(d->year, s, 4);
    memcpy(d->month, s + 5, 2);
    memcpy(d->day, s + 8, 2);
    *end = (days_from_civil(y, m, dd) + 1) * DAY_S;
    return 0;
}

void token_key_set_end_date(p11psk_key *k, const CK_DATE *d, size_t len)
{
    const char *c = (const char *)d;
    unsigned y, m, dd;
    size_t i, blank = 0;

    k->not_after[0] = '\0';
    k->expires_at = 0;
    if (len != sizeof(*d))
        return; /* absent or empty: never expires */
    for (i = 0; i < sizeof(*d); i++)
        blank += c[i] == '0' || c[i] == ' ' || c[i] == '\0';
    if (blank == sizeof(*d))
        return; /* some tools write zeros or blanks for "no date" */
    if (digits((const char *)d->year, 4, &y) != 0 || digits((const char *)d->month, 2, &m) != 0 ||
        digits((const char *)d->day, 2, &dd) != 0 || date_ok(y, m, dd) != 0) {
        /* Deny by default: a date we cannot read must not make the key live forever. */
        snprintf(k->not_after, sizeof(k->not_after), "invalid");
        k->expires_at = 1;
        return;
    }
    snprintf(k->not_after, sizeof(k->not_after), "%04u-%02u-%02u", y, m, dd);
    k->expires_at = (days_from_civil(y, m, dd) + 1) * DAY_S;
}

int p11psk_key_expired(const p11psk_key *k, long long now)
{
    return k->expires_at != 0 && now >= k->expires_at;
}
