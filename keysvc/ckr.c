/* SPDX-License-Identifier: Apache-2.0 */
/* PKCS#11 return-value names and the error record shared by the token layer and ladder. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "p11call.h"
#include "p11psk/wire.h"
#include "token.h"

#define CKR_ENTRY(x)                                                                               \
    {                                                                                              \
        x, #x                                                                                      \
    }

static const struct {
    CK_RV rv;
    const char *name;
} ckr_names[] = {
    CKR_ENTRY(CKR_OK),
    CKR_ENTRY(CKR_CANCEL),
    CKR_ENTRY(CKR_HOST_MEMORY),
    CKR_ENTRY(CKR_SLOT_ID_INVALID),
    CKR_ENTRY(CKR_GENERAL_ERROR),
    CKR_ENTRY(CKR_FUNCTION_FAILED),
    CKR_ENTRY(CKR_ARGUMENTS_BAD),
    CKR_ENTRY(CKR_NO_EVENT),
    CKR_ENTRY(CKR_NEED_TO_CREATE_THREADS),
    CKR_ENTRY(CKR_CANT_LOCK),
    CKR_ENTRY(CKR_ATTRIBUTE_READ_ONLY),
    CKR_ENTRY(CKR_ATTRIBUTE_SENSITIVE),
    CKR_ENTRY(CKR_ATTRIBUTE_TYPE_INVALID),
    CKR_ENTRY(CKR_ATTRIBUTE_VALUE_INVALID),
    CKR_ENTRY(CKR_ACTION_PROHIBITED),
    CKR_ENTRY(CKR_DATA_INVALID),
    CKR_ENTRY(CKR_DATA_LEN_RANGE),
    CKR_ENTRY(CKR_DEVICE_ERROR),
    CKR_ENTRY(CKR_DEVICE_MEMORY),
    CKR_ENTRY(CKR_DEVICE_REMOVED),
    CKR_ENTRY(CKR_ENCRYPTED_DATA_INVALID),
    CKR_ENTRY(CKR_ENCRYPTED_DATA_LEN_RANGE),
    CKR_ENTRY(CKR_FUNCTION_CANCELED),
    CKR_ENTRY(CKR_FUNCTION_NOT_PARALLEL),
    CKR_ENTRY(CKR_FUNCTION_NOT_SUPPORTED),
    CKR_ENTRY(CKR_KEY_HANDLE_INVALID),
    CKR_ENTRY(CKR_KEY_SIZE_RANGE),
    CKR_ENTRY(CKR_KEY_TYPE_INCONSISTENT),
    CKR_ENTRY(CKR_KEY_NOT_NEEDED),
    CKR_ENTRY(CKR_KEY_CHANGED),
    CKR_ENTRY(CKR_KEY_NEEDED),
    CKR_ENTRY(CKR_KEY_INDIGESTIBLE),
    CKR_ENTRY(CKR_KEY_FUNCTION_NOT_PERMITTED),
    CKR_ENTRY(CKR_KEY_NOT_WRAPPABLE),
    CKR_ENTRY(CKR_KEY_UNEXTRACTABLE),
    CKR_ENTRY(CKR_MECHANISM_INVALID),
    CKR_ENTRY(CKR_MECHANISM_PARAM_INVALID),
    CKR_ENTRY(CKR_OBJECT_HANDLE_INVALID),
    CKR_ENTRY(CKR_OPERATION_ACTIVE),
    CKR_ENTRY(CKR_OPERATION_NOT_INITIALIZED),
    CKR_ENTRY(CKR_PIN_INCORRECT),
    CKR_ENTRY(CKR_PIN_INVALID),
    CKR_ENTRY(CKR_PIN_LEN_RANGE),
    CKR_ENTRY(CKR_PIN_EXPIRED),
    CKR_ENTRY(CKR_PIN_LOCKED),
    CKR_ENTRY(CKR_SESSION_CLOSED),
    CKR_ENTRY(CKR_SESSION_COUNT),
    CKR_ENTRY(CKR_SESSION_HANDLE_INVALID),
    CKR_ENTRY(CKR_SESSION_PARALLEL_NOT_SUPPORTED),
    CKR_ENTRY(CKR_SESSION_READ_ONLY),
    CKR_ENTRY(CKR_SESSION_EXISTS),
    CKR_ENTRY(CKR_SESSION_READ_ONLY_EXISTS),
    CKR_ENTRY(CKR_SESSION_READ_WRITE_SO_EXISTS),
    CKR_ENTRY(CKR_SIGNATURE_INVALID),
    CKR_ENTRY(CKR_SIGNATURE_LEN_RANGE),
    CKR_ENTRY(CKR_TEMPLATE_INCOMPLETE),
    CKR_ENTRY(CKR_TEMPLATE_INCONSISTENT),
    CKR_ENTRY(CKR_TOKEN_NOT_PRESENT),
    CKR_ENTRY(CKR_TOKEN_NOT_RECOGNIZED),
    CKR_ENTRY(CKR_TOKEN_WRITE_PROTECTED),
    CKR_ENTRY(CKR_UNWRAPPING_KEY_SIZE_RANGE),
    CKR_ENTRY(CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT),
    CKR_ENTRY(CKR_USER_ALREADY_LOGGED_IN),
    CKR_ENTRY(CKR_USER_NOT_LOGGED_IN),
    CKR_ENTRY(CKR_USER_PIN_NOT_INITIALIZED),
    CKR_ENTRY(CKR_USER_TYPE_INVALID),
    CKR_ENTRY(CKR_USER_ANOTHER_ALREADY_LOGGED_IN),
    CKR_ENTRY(CKR_USER_TOO_MANY_TYPES),
    CKR_ENTRY(CKR_WRAPPED_KEY_INVALID),
    CKR_ENTRY(CKR_WRAPPED_KEY_LEN_RANGE),
    CKR_ENTRY(CKR_WRAPPING_KEY_HANDLE_INVALID),
    CKR_ENTRY(CKR_WRAPPING_KEY_SIZE_RANGE),
    CKR_ENTRY(CKR_WRAPPING_KEY_TYPE_INCONSISTENT),
    CKR_ENTRY(CKR_RANDOM_SEED_NOT_SUPPORTED),
    CKR_ENTRY(CKR_RANDOM_NO_RNG),
    CKR_ENTRY(CKR_DOMAIN_PARAMS_INVALID),
    CKR_ENTRY(CKR_CURVE_NOT_SUPPORTED),
    CKR_ENTRY(CKR_BUFFER_TOO_SMALL),
    CKR_ENTRY(CKR_SAVED_STATE_INVALID),
    CKR_ENTRY(CKR_INFORMATION_SENSITIVE),
    CKR_ENTRY(CKR_STATE_UNSAVEABLE),
    CKR_ENTRY(CKR_CRYPTOKI_NOT_INITIALIZED),
    CKR_ENTRY(CKR_CRYPTOKI_ALREADY_INITIALIZED),
    CKR_ENTRY(CKR_MUTEX_BAD),
    CKR_ENTRY(CKR_MUTEX_NOT_LOCKED),
    CKR_ENTRY(CKR_NEW_PIN_MODE),
    CKR_ENTRY(CKR_NEXT_OTP),
    CKR_ENTRY(CKR_EXCEEDED_MAX_ITERATIONS),
    CKR_ENTRY(CKR_FIPS_SELF_TEST_FAILED),
    CKR_ENTRY(CKR_LIBRARY_LOAD_FAILED),
    CKR_ENTRY(CKR_PIN_TOO_WEAK),
    CKR_ENTRY(CKR_PUBLIC_KEY_INVALID),
    CKR_ENTRY(CKR_FUNCTION_REJECTED),
};

const char *p11psk_ckr_name(CK_RV rv)
{
    static __thread char unknown[32];
    size_t i;

    for (i = 0; i < sizeof(ckr_names) / sizeof(ckr_names[0]); i++)
        if (ckr_names[i].rv == rv)
            return ckr_names[i].name;
    snprintf(unknown, sizeof(unknown), "CKR_0x%08lX", (unsigned long)rv);
    return unknown;
}

int p11psk_ckr_stale_handle(CK_RV rv)
{
    return rv == CKR_OBJECT_HANDLE_INVALID || rv == CKR_KEY_HANDLE_INVALID;
}

int p11psk_ckr_device_gone(CK_RV rv)
{
    return rv == CKR_DEVICE_REMOVED || rv == CKR_TOKEN_NOT_PRESENT || rv == CKR_DEVICE_ERROR ||
           rv == CKR_CRYPTOKI_NOT_INITIALIZED || rv == CKR_SLOT_ID_INVALID ||
           rv == CKR_TOKEN_NOT_RECOGNIZED || rv == CKR_GENERAL_ERROR;
}

int p11psk_ckr_session_lost(CK_RV rv)
{
    return rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED;
}

int p11psk_ckr_retryable(CK_RV rv)
{
    return p11psk_ckr_device_gone(rv) || p11psk_ckr_session_lost(rv) ||
           rv == CKR_USER_NOT_LOGGED_IN;
}

int p11psk_err_set(p11psk_err *err, int status, const char *fmt, ...)
{
    va_list ap;

    err->status = status;
    err->ckr = CKR_OK;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
    return status;
}

int p11psk_err_ckr(p11psk_err *err, CK_RV rv, const char *fn)
{
    p11psk_err_set(err, P11PSK_ST_TOKEN, "%s in %s", p11psk_ckr_name(rv), fn);
    err->ckr = rv;
    return P11PSK_ST_TOKEN;
}

CK_RV p11psk_call_end(p11psk_call *c, const char *fn, CK_RV rv, p11psk_err *err)
{
    c->rv = rv;
    c->fn = fn;
    if (rv == CKR_OK)
        return rv;
    if (err != NULL)
        p11psk_err_ckr(err, rv, fn);
    if (p11psk_log_enabled(P11PSK_LOG_DEBUG))
        p11psk_log(P11PSK_LOG_DEBUG, "pkcs11: %s returned %s", fn, p11psk_ckr_name(rv));
    return rv;
}

void p11psk_call_quiet(const char *fn, CK_RV rv)
{
    if (rv != CKR_OK && p11psk_log_enabled(P11PSK_LOG_DEBUG))
        p11psk_log(P11PSK_LOG_DEBUG, "pkcs11: %s returned %s (ignored)", fn, p11psk_ckr_name(rv));
}
