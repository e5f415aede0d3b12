/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The one number parser for config and policy values. Header-only so that every target
 * that builds config.c or policy.c from source (the config fuzzer) gets it without a new
 * source file.
 */
#ifndef P11PSK_KEYSVC_PARSE_H
#define P11PSK_KEYSVC_PARSE_H

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>

enum {
    P11PSK_PARSE_BAD = -1,   /* not a number: empty, sign, space, junk after it, overflow */
    P11PSK_PARSE_RANGE = -2, /* a number, but above max */
};

/* Parses all of s as an unsigned number in base (8, 10 or 16, no prefix) into *out, which is
 * only written on success. Returns 0, P11PSK_PARSE_BAD or P11PSK_PARSE_RANGE. */
static inline int p11psk_parse_uint(const char *s, int base, unsigned long max, unsigned long *out)
{
    unsigned long n;
    char *end;

    /* strtoul would accept leading space, a sign, and wrap "-1" around. */
    if (!isxdigit((unsigned char)*s))
        return P11PSK_PARSE_BAD;
    errno = 0;
    n = strtoul(s, &end, base);
    if (errno != 0 || *end != '\0' || end == s)
        return P11PSK_PARSE_BAD;
    if (n > max)
        return P11PSK_PARSE_RANGE;
    *out = n;
    return 0;
}

#endif
