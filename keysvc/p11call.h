/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The one way the token layer calls PKCS#11: P11CALL runs fl->C_X(...), remembers "C_X"
 * and its result in a p11psk_call (the session pool reads it to tell a lost session or a
 * dead device from a plain failure), and maps a failure into p11psk_err.
 */
#ifndef P11PSK_KEYSVC_P11CALL_H
#define P11PSK_KEYSVC_P11CALL_H

#include <p11-kit/pkcs11.h>

#include "token.h"

/* The last PKCS#11 call an operation made. */
typedef struct {
    CK_RV rv;
    const char *fn;
} p11psk_call;

#define P11PSK_CALL_INIT                                                                           \
    {                                                                                              \
        CKR_OK, "?"                                                                                \
    }

/* Epilog: records fn and rv in c; on failure fills err (if not NULL) with "CKR_X in fn" and
 * logs it at debug level. Returns rv. */
CK_RV p11psk_call_end(p11psk_call *c, const char *fn, CK_RV rv, p11psk_err *err);
/* Epilog for cleanup calls whose result changes nothing: logged at debug level only. */
void p11psk_call_quiet(const char *fn, CK_RV rv);

/* rv = fl->name(args...) through the epilog; err may be NULL to only record. */
#define P11CALL(c, err, fl, name, ...) p11psk_call_end((c), #name, (fl)->name(__VA_ARGS__), (err))
/* The same with a literal note after the name in messages, e.g. "(CKA_VALUE)". */
#define P11CALL_NOTE(c, err, note, fl, name, ...)                                                  \
    p11psk_call_end((c), #name note, (fl)->name(__VA_ARGS__), (err))
/* The same for calls whose result is ignored (C_FindObjectsFinal, C_Logout on detach...). */
#define P11CALL_QUIET(fl, name, ...) p11psk_call_quiet(#name, (fl)->name(__VA_ARGS__))

/* Classification of CK_RV values for the session pool (ckr.c). */
/* The module or token is gone: every session is dead and the module needs C_Finalize. */
int p11psk_ckr_device_gone(CK_RV rv);
int p11psk_ckr_session_lost(CK_RV rv);
/* Worth one more try on a fresh session (after recovery or a new login). */
int p11psk_ckr_retryable(CK_RV rv);

#endif
