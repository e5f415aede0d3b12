/* SPDX-License-Identifier: Apache-2.0 */
/* Order statistics for p11psk-bench: rounds are summarised by min, median and max. */
#include <stdlib.h>

#include "bench.h"

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

static void sort_doubles(double *v, size_t n)
{
    qsort(v, n, sizeof(*v), cmp_double);
}

double bench_median(const double *v, size_t n)
{
    double *s, m;
    size_t i;

    if (n == 0 || (s = malloc(n * sizeof(*s))) == NULL)
        return 0;
    for (i = 0; i < n; i++)
        s[i] = v[i];
    sort_doubles(s, n);
    /* An even count (e.g. a smoke run of 2 rounds) takes the mean of the middle pair. */
    m = n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
    free(s);
    return m;
}

double bench_min(const double *v, size_t n)
{
    double m = n ? v[0] : 0;
    size_t i;

    for (i = 1; i < n; i++)
        m = v[i] < m ? v[i] : m;
    return m;
}

double bench_max(const double *v, size_t n)
{
    double m = n ? v[0] : 0;
    size_t i;

    for (i = 1; i < n; i++)
        m = v[i] > m ? v[i] : m;
    return m;
}
