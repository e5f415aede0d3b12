/* SPDX-License-Identifier: Apache-2.0 */
/* Error raising through the core (provider-style ERR_raise_data) and debug logging. */
#define _GNU_SOURCE
#include "prov.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

/* The core's upcalls are the same for every instance of the provider. */
static OSSL_FUNC_core_new_error_fn *c_new_error;
static OSSL_FUNC_core_set_error_debug_fn *c_set_error_debug;
static OSSL_FUNC_core_vset_error_fn *c_vset_error;
static int debug_on;

void p11psk_err_init(const OSSL_DISPATCH *in)
{
    for (; in != NULL && in->function_id != 0; in++) {
        switch (in->function_id) {
        case OSSL_FUNC_CORE_NEW_ERROR:
            c_new_error = OSSL_FUNC_core_new_error(in);
            break;
        case OSSL_FUNC_CORE_SET_ERROR_DEBUG:
            c_set_error_debug = OSSL_FUNC_core_set_error_debug(in);
            break;
        case OSSL_FUNC_CORE_VSET_ERROR:
            c_vset_error = OSSL_FUNC_core_vset_error(in);
            break;
        default:
            break;
        }
    }
    debug_on = secure_getenv("P11PSK_DEBUG") != NULL;
}

int p11psk_debug_enabled(void)
{
    return debug_on;
}

void p11psk_debug(const char *fmt, ...)
{
    va_list ap;

    if (!debug_on)
        return;
    va_start(ap, fmt);
    fputs("p11psk: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

void p11psk_raise(const OSSL_CORE_HANDLE *handle, const char *file, int line, const char *func,
                  int reason, const char *fmt, ...)
{
    va_list ap;

    if (debug_on) {
        va_start(ap, fmt);
        fprintf(stderr, "p11psk: error: %s: ", p11psk_reason_str(reason));
        vfprintf(stderr, fmt, ap);
        fprintf(stderr, " (%s:%d %s)\n", file, line, func);
        va_end(ap);
    }
    if (handle == NULL || c_new_error == NULL || c_set_error_debug == NULL || c_vset_error == NULL)
        return;
    va_start(ap, fmt);
    c_new_error(handle);
    c_set_error_debug(handle, file, line, func);
    c_vset_error(handle, (uint32_t)reason, fmt, ap);
    va_end(ap);
}
