/* SPDX-License-Identifier: Apache-2.0 */
/*
 * p11psk-logout-shim.so: a PKCS#11 module in front of a real one ($P11PSK_SHIM_MODULE) that
 * makes the token forget the login on demand, for tests of what p11pskd does then. SoftHSM2
 * keeps the login per process and nothing outside the process can end it, so: when the file
 * $P11PSK_SHIM_TRIGGER exists, the next C_DigestKey removes it and calls the real C_Logout.
 * From then on, while the session is public, C_DigestKey answers CKR_USER_NOT_LOGGED_IN, as
 * the PKCS#11 spec says a token does (SoftHSM2 itself reports the key handle invalid), and
 * ends the digest operation so that the session can be used again.
 */
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST shim, *real;

static CK_RV shim_digest_key(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE k)
{
    const char *trigger = getenv("P11PSK_SHIM_TRIGGER");
    CK_SESSION_INFO si;
    CK_BYTE md[64];
    CK_ULONG mdlen = sizeof(md);

    if (trigger != NULL && unlink(trigger) == 0)
        real->C_Logout(s);
    if (real->C_GetSessionInfo(s, &si) == CKR_OK &&
        (si.state == CKS_RO_PUBLIC_SESSION || si.state == CKS_RW_PUBLIC_SESSION)) {
        real->C_DigestFinal(s, md, &mdlen); /* ends the operation DigestInit began */
        return CKR_USER_NOT_LOGGED_IN;
    }
    return real->C_DigestKey(s, k);
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out)
{
    if (real == NULL) {
        const char *m = getenv("P11PSK_SHIM_MODULE");
        void *h = m != NULL ? dlopen(m, RTLD_NOW | RTLD_LOCAL) : NULL;
        CK_C_GetFunctionList gfl =
            h != NULL ? (CK_C_GetFunctionList)dlsym(h, "C_GetFunctionList") : NULL;

        if (gfl == NULL || gfl(&real) != CKR_OK)
            return CKR_GENERAL_ERROR;
        shim = *real;
        shim.C_GetFunctionList = C_GetFunctionList;
        shim.C_DigestKey = shim_digest_key;
    }
    *out = &shim;
    return CKR_OK;
}
