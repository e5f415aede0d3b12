/* SPDX-License-Identifier: Apache-2.0 */
/* p11psk: manage the PSKs p11pskd serves (add, handle, list, rotate, rm; the other commands
 * live in migrate.c, export.c, status.c and doctor.c). */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <openssl/crypto.h>
#include <p11-kit/uri.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "config.h"
#include "handlekey.h"
#include "log.h"
#include "p11psk/client.h"
#include "p11psk/handle.h"
#include "token.h"

#define EXIT_USAGE 2
#define DEFAULT_GEN_LEN 32
#define NEW_ID_LEN 16
#define HEX_FILE_MAX (4 * P11PSK_KEY_LEN_MAX + 4096) /* generous room for whitespace */

static const char usage_main[] =
    "Usage: p11psk [--config FILE] COMMAND [ARGS]\n"
    "\n"
    "Manages TLS pre-shared keys kept in the PKCS#11 token that p11pskd serves.\n"
    "\n"
    "Commands:\n"
    "  add ID [--generate N | --hex-file F] [--readable] [--not-after DATE]\n"
    "                                                      create a key, print its handle\n"
    "  handle ID [--uri]                                   print the handle of key ID\n"
    "  handle --reissue-all --yes                          new handle key: new handles for\n"
    "                                                      every key, old ones refused\n"
    "  list [--json]                                       list the keys\n"
    "  rotate ID [--generate N | --hex-file F]             give key ID new key material;\n"
    "                                                      its handle stays valid\n"
    "  rm ID [--yes]                                       remove the key(s) labelled ID\n"
    "  migrate --stunnel FILE | --mosquitto FILE           move a PSK file's keys into the\n"
    "                                                      token, leave handles in the file\n"
    "  export --stunnel|--mosquitto [--match GLOB] [-o FILE]\n"
    "                                                      write identity:handle lines for\n"
    "                                                      the keys (a PSK file of handles)\n"
    "  status [--json]                                     p11pskd's health and counters\n"
    "  metrics                                             the same for Prometheus\n"
    "  doctor [--openssl-conf F] [--handle HEX] [--pid N]  check that an application really\n"
    "                                                      uses the p11psk provider\n"
    "\n"
    "Options:\n"
    "  -c, --config FILE  configuration file (default $" P11PSK_CONF_ENV " or " P11PSK_DEFAULT_CONF
    ")\n"
    "  -h, --help         show help; `p11psk COMMAND --help` for a command\n"
    "\n"
    "ID is the key's identity (its CKA_LABEL) as used in allow rules, or a pkcs11: URI\n"
    "(RFC 7512) with object=ID. Commands that touch or show a key name it by its URI.\n"
    "status and metrics exit 1 when p11pskd cannot be reached. See p11psk(1).\n";

static const char usage_add[] =
    "Usage: p11psk add ID [--generate N | --hex-file FILE] [--readable] [--not-after DATE]\n"
    "\n"
    "Creates a generic secret key labelled ID with a random 16-byte CKA_ID and prints its\n"
    "handle (96 hex characters) for the application's configuration; its pkcs11: URI goes\n"
    "to stderr. Keep the handle as secret as the key: an application that does not load the\n"
    "p11psk provider would use it as its PSK.\n"
    "\n"
    "  --generate N     let the token generate N random bytes (16..512, default 32)\n"
    "  --hex-file FILE  import the key from FILE holding hex (whitespace ignored, 16..512 "
    "bytes)\n"
    "  --readable       allow the daemon to read the value (needed only for TLS 1.2 with\n"
    "                   short keys); default: sensitive and non-extractable\n"
    "  --not-after DATE last day (YYYY-MM-DD, UTC) p11pskd serves the key, kept as its\n"
    "                   CKA_END_DATE; afterwards requests fail with \"key expired on DATE\".\n"
    "                   Default: never (also `never`)\n"
    "\n"
    "ID may also be a pkcs11: URI whose object= is the identity.\n";

static const char usage_handle[] =
    "Usage: p11psk handle ID [--uri]\n"
    "       p11psk handle --reissue-all --yes\n"
    "\n"
    "Prints the 48-byte handle (96 hex characters) of key ID. Handles carry a tag made with\n"
    "the token's handle key (created on first use), so only the token can issue them; keys\n"
    "imported with softhsm2-util or pkcs11-tool get one too.\n"
    "\n"
    "  --uri          print the key's pkcs11: URI instead of the handle\n"
    "  --reissue-all  destroy the token's handle key and create a new one, print every key's\n"
    "                 new handle as 'IDENTITY HANDLE' lines and tell p11pskd to use the new\n"
    "                 key. Every handle issued before is refused from then on: replace every\n"
    "                 handle file. Needs --yes\n"
    "  -y, --yes      confirm --reissue-all\n"
    "\n"
    "ID may also be a pkcs11: URI (object= the identity; id= picks one CKA_ID).\n";

static const char usage_list[] =
    "Usage: p11psk list [--json]\n"
    "\n"
    "Lists the keys: identity, CKA_ID, type, length in bytes, readable, last valid day\n"
    "(CKA_END_DATE; \"-\" never expires, \"!\" marks an expired key), pkcs11: URI.\n"
    "\n"
    "  --json  print a JSON array instead: one object per key with the fields id (the\n"
    "          identity), ckaid (hex), type, length, readable, not_after (\"YYYY-MM-DD\" or\n"
    "          null), expired, handle (null when the CKA_ID does not fit a handle) and uri\n";

static const char usage_rm[] =
    "Usage: p11psk rm ID [--yes]\n"
    "\n"
    "Destroys every key labelled ID and prints what it removed. Asks for each key when\n"
    "stdin is a terminal; otherwise refuses unless --yes is given.\n"
    "\n"
    "  -y, --yes  remove without asking\n"
    "\n"
    "Then p11pskd is told at once (FLUSH) to stop serving the key (root, p11pskd's user,\n"
    "or allow-admin). Exit status: 0 done and p11pskd told; 1 failure; 2 usage error;\n"
    "3 removed from the token, but p11pskd could not be told (it notices within its\n"
    "revalidate-ms).\n"
    "\n"
    "ID may also be a pkcs11: URI (object= the identity; id= picks one CKA_ID).\n";

static const char usage_rotate[] =
    "Usage: p11psk rotate ID [--generate N | --hex-file FILE] [--readable | --not-readable]\n"
    "                        [--not-after DATE|never]\n"
    "\n"
    "Gives key ID new key material and keeps its CKA_ID and label, so its handle stays\n"
    "valid and applications need no change. The new key is created before the old one is\n"
    "destroyed, so the identity never lacks a key. Then a running p11pskd is told to drop\n"
    "its cached values for the key (root, p11pskd's user, or allow-admin). Peers that hold\n"
    "the raw key need the new value too. Exit status: 0 done and p11pskd told; 1 failure;\n"
    "2 usage error; 3 rotated in the token, but p11pskd could not be told (it notices\n"
    "within its revalidate-ms).\n"
    "\n"
    "  --generate N     let the token generate N random bytes (16..512; default: the\n"
    "                   current key's length); this is the default\n"
    "  --hex-file FILE  the new key as hex in FILE (whitespace ignored, 16..512 bytes)\n"
    "  --readable       make the new key readable by p11pskd (TLS 1.2 with short keys)\n"
    "  --not-readable   make the new key sensitive and non-extractable\n"
    "                   (default for both: as the current key)\n"
    "  --not-after DATE last day (YYYY-MM-DD, UTC) the new key is served, or `never`;\n"
    "                   default: the current key's date\n"
    "\n"
    "ID may also be a pkcs11: URI (object= the identity; id= picks one CKA_ID).\n";

static void die_usage(const char *usage, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));

static void die_usage(const char *usage, const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "p11psk: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n%s", usage);
    exit(EXIT_USAGE);
}

int p11psk_cli_open_token(const p11psk_config *cfg, int rw, p11psk_token **tok)
{
    p11psk_token_params prm;
    p11psk_err err;

    p11psk_token_params_from_config(&prm, cfg);
    prm.rw = rw;
    if (p11psk_token_open(&prm, tok, &err) != P11PSK_ST_OK) {
        fprintf(stderr, "p11psk: %s (config %s)\n", err.msg, cfg->path);
        return 0;
    }
    return 1;
}

/* Prints why k cannot have a handle and returns 0, or returns 1. */
static int id_fits_handle(const p11psk_key *k)
{
    if (k->idlen >= 1 && k->idlen <= P11PSK_ID_MAX)
        return 1;
    fprintf(stderr,
            "p11psk: key '%s' has a %zu-byte CKA_ID; handles hold 1..%d bytes: give it a "
            "shorter one in place, e.g. pkcs11-tool --module MODULE --token-label TOKEN "
            "--login --type secrkey --label LABEL --set-id 0102\n",
            k->label, k->idlen, P11PSK_ID_MAX);
    return 0;
}

/* The token's handle key, created if missing (create), in a holder to free; NULL after
 * printing why. */
static p11psk_handlekey *cli_handlekey(p11psk_token *tok, int create)
{
    p11psk_handlekey *hk = p11psk_handlekey_new();
    p11psk_err err;

    if (hk == NULL) {
        fprintf(stderr, "p11psk: out of memory\n");
        return NULL;
    }
    if (p11psk_handlekey_load(hk, tok, create, &err) != P11PSK_ST_OK) {
        if (create)
            fprintf(stderr, "p11psk: cannot use the handle key of token '%s': %s\n",
                    p11psk_token_label(tok), err.msg);
        p11psk_handlekey_free(hk);
        return NULL;
    }
    return hk;
}

static int handle_hex_with(p11psk_handlekey *hk, const p11psk_key *k,
                           char hex[P11PSK_HANDLE_HEX_LEN + 1])
{
    uint8_t hb[P11PSK_HANDLE_LEN];

    if (p11psk_handlekey_is_key(k)) {
        fprintf(stderr, "p11psk: '%s' is the token's handle key, not a PSK\n", k->label);
        return 0;
    }
    if (!id_fits_handle(k))
        return 0;
    if (p11psk_handlekey_make(hk, k->id, k->idlen, hb) != 0) {
        fprintf(stderr, "p11psk: cannot make a handle for '%s'\n", k->label);
        return 0;
    }
    p11psk_hex_encode(hb, sizeof(hb), hex);
    return 1;
}

int p11psk_cli_handle_hex(p11psk_token *tok, const p11psk_key *k,
                          char hex[P11PSK_HANDLE_HEX_LEN + 1])
{
    p11psk_handlekey *hk;
    int ok;

    if (!id_fits_handle(k) || (hk = cli_handlekey(tok, 1)) == NULL)
        return 0;
    ok = handle_hex_with(hk, k, hex);
    p11psk_handlekey_free(hk); /* cleanses mk */
    return ok;
}

static int print_handle(p11psk_token *tok, const p11psk_key *k)
{
    char hex[P11PSK_HANDLE_HEX_LEN + 1];

    if (!p11psk_cli_handle_hex(tok, k, hex))
        return 0;
    printf("%s\n", hex);
    return 1;
}

/* Drops the token's handle key from a key list: it is no PSK. */
static void drop_handle_key(p11psk_key *keys, size_t *n)
{
    size_t i, kept = 0;

    for (i = 0; i < *n; i++)
        if (!p11psk_handlekey_is_key(&keys[i]))
            keys[kept++] = keys[i];
    *n = kept;
}

/* Reads hex from path, whitespace ignored, into secure memory. */
static int read_hex_file(const char *path, uint8_t **val, size_t *len)
{
    char *txt = OPENSSL_secure_zalloc(HEX_FILE_MAX + 1);
    uint8_t *bin = OPENSSL_secure_zalloc(P11PSK_KEY_LEN_MAX);
    size_t n = 0;
    long got = -1;
    FILE *f;
    int ch;

    if (txt == NULL || bin == NULL) {
        fprintf(stderr, "p11psk: out of memory\n");
        goto fail;
    }
    if ((f = fopen(path, "re")) == NULL) {
        fprintf(stderr, "p11psk: cannot open %s: %s\n", path, strerror(errno));
        goto fail;
    }
    while ((ch = getc(f)) != EOF && n < HEX_FILE_MAX)
        if (!isspace(ch))
            txt[n++] = (char)ch;
    fclose(f);
    ch = 0;
    if (n < HEX_FILE_MAX)
        got = p11psk_hex_decode(txt, bin, P11PSK_KEY_LEN_MAX);
    if (got < P11PSK_KEY_LEN_MIN || got > P11PSK_KEY_LEN_MAX) {
        fprintf(stderr,
                "p11psk: %s must hold %d..%d bytes as hex (whitespace is ignored); write e.g. "
                "`openssl rand -hex 32 > %s`\n",
                path, P11PSK_KEY_LEN_MIN, P11PSK_KEY_LEN_MAX, path);
        goto fail;
    }
    OPENSSL_secure_clear_free(txt, HEX_FILE_MAX + 1);
    *val = bin;
    *len = (size_t)got;
    return 1;
fail:
    OPENSSL_secure_clear_free(txt, HEX_FILE_MAX + 1);
    OPENSSL_secure_clear_free(bin, P11PSK_KEY_LEN_MAX);
    return 0;
}

void p11psk_cli_uri(const char *token_label, const p11psk_key *k, char *out, size_t cap)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_ATTRIBUTE label = {CKA_LABEL, (void *)k->label, strlen(k->label)};
    CK_ATTRIBUTE id = {CKA_ID, (void *)k->id, k->idlen};
    CK_ATTRIBUTE type = {CKA_CLASS, &cls, sizeof(cls)};
    P11KitUri *uri = p11_kit_uri_new();
    CK_TOKEN_INFO *ti;
    char *s = NULL;
    size_t n = strlen(token_label);

    /* p11-kit does the RFC 7512 percent-encoding; labels may hold any byte. */
    if (uri != NULL) {
        ti = p11_kit_uri_get_token_info(uri);
        memset(ti->label, ' ', sizeof(ti->label)); /* PKCS#11 pads with blanks */
        memcpy(ti->label, token_label, n < sizeof(ti->label) ? n : sizeof(ti->label));
        if (k->label[0] != '\0')
            p11_kit_uri_set_attribute(uri, &label);
        if (k->idlen > 0 && k->idlen <= P11PSK_KEY_ID_MAX)
            p11_kit_uri_set_attribute(uri, &id);
        p11_kit_uri_set_attribute(uri, &type);
    }
    if (uri == NULL ||
        p11_kit_uri_format(uri, P11_KIT_URI_FOR_OBJECT_ON_TOKEN, &s) != P11_KIT_URI_OK ||
        strlen(s) >= cap)
        snprintf(out, cap, "pkcs11:type=secret-key"); /* out of memory: still a valid URI */
    else
        memcpy(out, s, strlen(s) + 1);
    free(s);
    p11_kit_uri_free(uri);
}

int p11psk_cli_id_parse(const char *arg, p11psk_id_arg *ia)
{
    P11KitUri *uri;
    CK_ATTRIBUTE *a;
    CK_TOKEN_INFO *ti;
    size_t n;
    int rc;

    memset(ia, 0, sizeof(*ia));
    if (strncmp(arg, "pkcs11:", 7) != 0) {
        if (strlen(arg) >= sizeof(ia->label)) {
            fprintf(stderr, "p11psk: ID longer than %zu bytes\n", sizeof(ia->label) - 1);
            return -1;
        }
        snprintf(ia->label, sizeof(ia->label), "%s", arg);
        return 0;
    }
    ia->is_uri = 1;
    if ((uri = p11_kit_uri_new()) == NULL) {
        fprintf(stderr, "p11psk: out of memory\n");
        return -1;
    }
    rc = p11_kit_uri_parse(arg, P11_KIT_URI_FOR_OBJECT_ON_TOKEN, uri);
    if (rc != P11_KIT_URI_OK) {
        fprintf(stderr, "p11psk: '%s' is not a pkcs11: URI (RFC 7512): %s\n", arg,
                p11_kit_uri_message(rc));
        goto fail;
    }
    if ((a = p11_kit_uri_get_attribute(uri, CKA_CLASS)) != NULL &&
        (a->ulValueLen != sizeof(CK_OBJECT_CLASS) ||
         *(CK_OBJECT_CLASS *)a->pValue != CKO_SECRET_KEY)) {
        fprintf(stderr, "p11psk: %s: p11psk keys are type=secret-key\n", arg);
        goto fail;
    }
    a = p11_kit_uri_get_attribute(uri, CKA_LABEL);
    if (a == NULL || a->ulValueLen == 0 || a->ulValueLen >= sizeof(ia->label) ||
        memchr(a->pValue, '\0', a->ulValueLen) != NULL) {
        fprintf(stderr,
                "p11psk: %s names no key: give its identity as object=ID (as `p11psk list` "
                "shows in its URI column)\n",
                arg);
        goto fail;
    }
    memcpy(ia->label, a->pValue, a->ulValueLen);
    if ((a = p11_kit_uri_get_attribute(uri, CKA_ID)) != NULL) {
        if (a->ulValueLen == 0 || a->ulValueLen > sizeof(ia->id)) {
            fprintf(stderr, "p11psk: %s: id= must hold 1..%zu bytes\n", arg, sizeof(ia->id));
            goto fail;
        }
        memcpy(ia->id, a->pValue, a->ulValueLen);
        ia->idlen = a->ulValueLen;
    }
    ti = p11_kit_uri_get_token_info(uri);
    for (n = sizeof(ti->label); n > 0 && (ti->label[n - 1] == ' ' || ti->label[n - 1] == 0); n--)
        ;
    memcpy(ia->token, ti->label, n); /* blank-padded in PKCS#11 */
    p11_kit_uri_free(uri);
    return 0;
fail:
    p11_kit_uri_free(uri);
    return -1;
}

int p11psk_cli_id_match(const p11psk_id_arg *ia, const char *token_label, const p11psk_key *k)
{
    if (ia->token[0] != '\0' && strcmp(ia->token, token_label) != 0)
        return 0;
    if (strcmp(ia->label, k->label) != 0)
        return 0;
    return ia->idlen == 0 || (ia->idlen == k->idlen && memcmp(ia->id, k->id, k->idlen) == 0);
}

int p11psk_cli_id_token_ok(const p11psk_id_arg *ia, const char *token_label)
{
    if (ia->token[0] == '\0' || strcmp(ia->token, token_label) == 0)
        return 0;
    fprintf(stderr,
            "p11psk: the URI names token '%s' but the configuration uses token '%s'; give "
            "--config for that token's p11pskd.conf\n",
            ia->token, token_label);
    return -1;
}

/* Parses --not-after: a date, or "never" (*set = 1, d = NULL). Exits with usage otherwise. */
static void not_after_arg(const char *usage, const char *arg, CK_DATE *d, const CK_DATE **out)
{
    long long end;

    if (strcmp(arg, "never") == 0) {
        *out = NULL;
        return;
    }
    if (p11psk_date_parse(arg, d, &end) != 0)
        die_usage(usage, "--not-after takes a date YYYY-MM-DD (UTC) or never, not '%s'", arg);
    *out = d;
}

/* Makes sure the token can return key k's end date d (NULL: none): where it cannot keep
 * CKA_END_DATE readable, the mirror object carries it. Returns 0, or -1 after saying why. */
static int keep_end_date(p11psk_token *tok, p11psk_key *k, const CK_DATE *d, const char *had)
{
    char s[11];
    p11psk_err err;
    long long end;
    CK_DATE tmp;

    if (d == NULL) {
        if (had[0] != '\0' && p11psk_token_mirror_end_date(tok, k, NULL, &err) != P11PSK_ST_OK)
            fprintf(stderr, "p11psk: note: cannot remove the old end date mirror: %s\n", err.msg);
        return 0;
    }
    snprintf(s, sizeof(s), "%.4s-%.2s-%.2s", (const char *)d->year, (const char *)d->month,
             (const char *)d->day);
    if (strcmp(k->not_after, s) == 0)
        return 0; /* the token returns CKA_END_DATE itself */
    if (p11psk_token_mirror_end_date(tok, k, d, &err) != P11PSK_ST_OK) {
        fprintf(stderr,
                "p11psk: token '%s' does not return the CKA_END_DATE of key '%s' and the "
                "mirror object failed: %s\n",
                p11psk_token_label(tok), k->label, err.msg);
        return -1;
    }
    if (p11psk_date_parse(s, &tmp, &end) == 0) {
        memcpy(k->not_after, s, sizeof(k->not_after));
        k->expires_at = end;
    }
    return 0;
}

/* Warns when a new key's date is already past: allowed (tests, staged rollouts), never
 * silent. */
static void note_expiry(const p11psk_key *k)
{
    if (k->not_after[0] == '\0')
        return;
    if (p11psk_key_expired(k, (long long)time(NULL)))
        fprintf(stderr,
                "p11psk: warning: key '%s' expired on %s (UTC end of day): p11pskd refuses "
                "it\n",
                k->label, k->not_after);
    else
        fprintf(stderr, "p11psk: key '%s' is valid through %s (UTC)\n", k->label, k->not_after);
}

int p11psk_cli_daemon_call(const char *socket, p11psk_frame *req, uint8_t *resp, p11psk_msg *m,
                           char *why, size_t whylen)
{
    p11psk_conn c;
    int rc, e = 0;

    if (p11psk_frame_finish(req) == 0) {
        snprintf(why, whylen, "request too large");
        return P11PSK_CALL_PROTO;
    }
    p11psk_conn_init(&c, socket, P11PSK_DEFAULT_TIMEOUT_MS);
    rc = p11psk_conn_call(&c, req, resp, m, &e);
    p11psk_conn_close(&c);
    if (rc != P11PSK_CALL_OK) {
        p11psk_conn_strerror(&c, rc, e, why, whylen);
        return rc;
    }
    return m->code;
}

int p11psk_cli_flush(const p11psk_config *cfg, const p11psk_key *k, const char *done)
{
    uint8_t hb[P11PSK_HANDLE_LEN], resp[P11PSK_WIRE_MAX];
    char why[400], info[128];
    p11psk_handle h;
    p11psk_frame req;
    p11psk_msg m;
    int st;

    memset(&h, 0, sizeof(h));
    h.type = P11PSK_HT_PSK;
    h.idlen = (uint8_t)k->idlen;
    memcpy(h.id, k->id, k->idlen <= P11PSK_ID_MAX ? k->idlen : 0);
    if (k->idlen == 0 || k->idlen > P11PSK_ID_MAX || p11psk_handle_encode(&h, hb, sizeof(hb)) != 0)
        return 0; /* no handle, so p11pskd cannot have served (or cached) this key */
    p11psk_frame_start(&req, P11PSK_OP_FLUSH);
    p11psk_frame_add(&req, P11PSK_T_HANDLE, hb, sizeof(hb));
    st = p11psk_cli_daemon_call(cfg->socket, &req, resp, &m, why, sizeof(why));
    if (st >= 0 && st != P11PSK_ST_OK) {
        char msg[300];

        p11psk_msg_str(&m, P11PSK_T_MSG, msg, sizeof(msg));
        snprintf(why, sizeof(why), "refused: %s: %s", p11psk_status_str(st), msg);
    }
    if (st != P11PSK_ST_OK) {
        fprintf(stderr,
                "p11psk: %s ('%s') but p11pskd at %s could not be told: %s; it stops serving "
                "the old key within revalidate-ms (%u ms)\n",
                done, k->label, cfg->socket, why, cfg->revalidate_ms);
        return 0;
    }
    p11psk_msg_str(&m, P11PSK_T_INFO, info, sizeof(info));
    /* The answer says "flushed N". */
    printf("p11pskd flushed %s cached values for '%s'\n",
           strncmp(info, "flushed ", 8) == 0 ? info + 8 : "?", k->label);
    return 1;
}

void p11psk_cli_json_str(FILE *f, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;

    putc('"', f);
    for (; *p != '\0'; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p < 0x20 || *p == 0x7f)
            fprintf(f, "\\u%04x", *p);
        else
            putc(*p, f);
    }
    putc('"', f);
}

/* Prints "created/removed ... URI" lines: the URI is what other PKCS#11 tools take. */
static void key_uri(p11psk_token *tok, const p11psk_key *k, char uri[P11PSK_URI_MAX])
{
    p11psk_cli_uri(p11psk_token_label(tok), k, uri, P11PSK_URI_MAX);
}

/* Parses a --generate value or exits with the usage. */
static long gen_len(const char *usage, const char *arg)
{
    char *end;
    long n;

    errno = 0;
    n = strtol(arg, &end, 10);
    if (errno != 0 || *end != '\0' || n < P11PSK_KEY_LEN_MIN || n > P11PSK_KEY_LEN_MAX)
        die_usage(usage, "--generate takes a length of %d..%d bytes, not '%s'", P11PSK_KEY_LEN_MIN,
                  P11PSK_KEY_LEN_MAX, arg);
    return n;
}

static int cmd_add(const p11psk_config *cfg, int argc, char **argv)
{
    static const struct option opts[] = {
        {"generate", required_argument, NULL, 'g'}, {"hex-file", required_argument, NULL, 'x'},
        {"readable", no_argument, NULL, 'r'},       {"not-after", required_argument, NULL, 'N'},
        {"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0},
    };
    const char *hexfile = NULL;
    p11psk_id_arg ia;
    CK_DATE end;
    uint8_t id[NEW_ID_LEN], *val = NULL;
    size_t vlen = 0, n;
    int ctrl;
    p11psk_new_key nk;
    p11psk_token *tok = NULL;
    p11psk_key key, *found = NULL;
    p11psk_err err;
    char uri[P11PSK_URI_MAX];
    long gen = -1;
    int opt, rc = 1;

    memset(&nk, 0, sizeof(nk));
    optind = 0; /* GNU getopt: full reset after the "+" global parse */
    while ((opt = getopt_long(argc, argv, "g:x:rh", opts, NULL)) != -1) {
        switch (opt) {
        case 'g':
            gen = gen_len(usage_add, optarg);
            break;
        case 'x':
            hexfile = optarg;
            break;
        case 'r':
            nk.readable = 1;
            break;
        case 'N':
            not_after_arg(usage_add, optarg, &end, &nk.not_after);
            break;
        case 'h':
            fputs(usage_add, stdout);
            return 0;
        default:
            die_usage(usage_add, "unknown option or missing value: '%s'", argv[optind - 1]);
        }
    }
    if (optind + 1 != argc)
        die_usage(usage_add, "%s needs exactly one ID", "add");
    if (hexfile != NULL && gen >= 0)
        die_usage(usage_add, "%s", "give either --generate or --hex-file, not both");
    if (p11psk_cli_id_parse(argv[optind], &ia) != 0)
        return 1;
    if (ia.idlen > 0)
        die_usage(usage_add, "%s", "add draws a random CKA_ID: leave id= out of the URI");
    nk.label = ia.label;
    if (*nk.label == '\0')
        die_usage(usage_add, "%s", "ID must not be empty");
    if ((ctrl = p11psk_first_ctrl(nk.label)) >= 0) {
        fprintf(stderr,
                "p11psk: identity contains a control character (0x%02x); labels end up in logs "
                "and config files\n",
                ctrl);
        return 1;
    }
    if (hexfile != NULL && !read_hex_file(hexfile, &val, &vlen))
        return 1;
    if (!p11psk_cli_open_token(cfg, 1, &tok) ||
        p11psk_cli_id_token_ok(&ia, p11psk_token_label(tok)) != 0)
        goto out;
    if (p11psk_token_list(tok, nk.label, &found, &n, &err) != P11PSK_ST_OK) {
        fprintf(stderr, "p11psk: %s\n", err.msg);
        goto out;
    }
    free(found);
    if (n > 0) {
        fprintf(stderr,
                "p11psk: a key labelled '%s' already exists in token '%s'; pick another ID, "
                "give it new key material with `p11psk rotate %s`, or remove it first with "
                "`p11psk rm %s`\n",
                nk.label, p11psk_token_label(tok), nk.label, nk.label);
        goto out;
    }
    if (p11psk_token_random(tok, id, sizeof(id), &err) != P11PSK_ST_OK) {
        fprintf(stderr, "p11psk: %s\n", err.msg);
        goto out;
    }
    nk.id = id;
    nk.idlen = sizeof(id);
    nk.value = val;
    nk.value_len = val != NULL ? vlen : (size_t)(gen >= 0 ? gen : DEFAULT_GEN_LEN);
    if (p11psk_token_create_key(tok, &nk, &key, &err) != P11PSK_ST_OK) {
        fprintf(stderr, "p11psk: cannot create key '%s': %s\n", nk.label, err.msg);
        goto out;
    }
    /* stdout is the handle alone (scripts take it with $(...)); the URI goes to stderr. */
    key_uri(tok, &key, uri);
    if (keep_end_date(tok, &key, nk.not_after, "") != 0) {
        if (p11psk_token_destroy_key(tok, &key, &err) == P11PSK_ST_OK)
            fprintf(stderr, "p11psk: removed the new key again; nothing was changed\n");
        goto out;
    }
    fprintf(stderr, "created %s (%zu bytes%s)\n", uri, key.len, key.readable ? ", readable" : "");
    note_expiry(&key);
    rc = print_handle(tok, &key) ? 0 : 1;
out:
    if (val != NULL)
        OPENSSL_secure_clear_free(val, P11PSK_KEY_LEN_MAX);
    p11psk_token_close(tok);
    return rc;
}

/* Finds the keys an ID argument (label or pkcs11: URI) names; prints why and returns 0 if
 * there are none. */
static int keys_for_label(const p11psk_config *cfg, const char *arg, int rw, p11psk_token **tok,
                          p11psk_key **keys, size_t *n)
{
    p11psk_id_arg ia;
    p11psk_err err;
    size_t i, kept = 0;

    if (p11psk_cli_id_parse(arg, &ia) != 0 || !p11psk_cli_open_token(cfg, rw, tok) ||
        p11psk_cli_id_token_ok(&ia, p11psk_token_label(*tok)) != 0)
        return 0;
    if (p11psk_token_list(*tok, ia.label, keys, n, &err) != P11PSK_ST_OK) {
        fprintf(stderr, "p11psk: %s\n", err.msg);
        return 0;
    }
    drop_handle_key(*keys, n);
    for (i = 0; i < *n; i++) /* a URI's id= narrows the label's keys */
        if (p11psk_cli_id_match(&ia, p11psk_token_label(*tok), &(*keys)[i]))
            (*keys)[kept++] = (*keys)[i];
    *n = kept;
    if (*n == 0) {
        fprintf(stderr, "p11psk: no key %s '%s' in token '%s'; see `p11psk list`\n",
                ia.is_uri ? "matches" : "labelled", ia.is_uri ? arg : ia.label,
                p11psk_token_label(*tok));
        return 0;
    }
    return 1;
}

/* Tells p11pskd to drop every cached value and derive mk again; 1 if it did. */
static int flush_all(const p11psk_config *cfg)
{
    uint8_t resp[P11PSK_WIRE_MAX];
    char why[400];
    p11psk_frame req;
    p11psk_msg m;
    int st;

    p11psk_frame_start(&req, P11PSK_OP_FLUSH);
    st = p11psk_cli_daemon_call(cfg->socket, &req, resp, &m, why, sizeof(why));
    if (st == P11PSK_ST_OK) {
        p11psk_msg_str(&m, P11PSK_T_INFO, why, sizeof(why));
        fprintf(stderr, "p11pskd: %s\n", why);
        return 1;
    }
    if (st > 0)
        p11psk_msg_str(&m, P11PSK_T_MSG, why, sizeof(why));
    fprintf(stderr,
            "p11psk: note: cannot tell p11pskd to load the new handle key (%s%s%s); restart "
            "p11pskd, or it refuses the new handles\n",
            st > 0 ? p11psk_status_str(st) : "", st > 0 ? ": " : "", why);
    return 0;
}

/* `handle --reissue-all`: a new handle key, so every handle issued before is refused. */
static int reissue_all(const p11psk_config *cfg)
{
    char hex[P11PSK_HANDLE_HEX_LEN + 1];
    p11psk_token *tok = NULL;
    p11psk_handlekey *hk = NULL;
    p11psk_key *keys = NULL;
    p11psk_err err;
    size_t n = 0, i, skipped = 0;
    int rc = 1;

    if (!p11psk_cli_open_token(cfg, 1, &tok))
        return 1;
    if (p11psk_token_list(tok, NULL, &keys, &n, &err) != P11PSK_ST_OK) {
        fprintf(stderr, "p11psk: %s\n", err.msg);
        goto out;
    }
    drop_handle_key(keys, &n);
    if ((hk = p11psk_handlekey_new()) == NULL ||
        p11psk_handlekey_reissue(hk, tok, &err) != P11PSK_ST_OK) {
        fprintf(stderr, "p11psk: cannot replace the handle key of token '%s': %s\n",
                p11psk_token_label(tok), hk != NULL ? err.msg : "out of memory");
        goto out;
    }
    for (i = 0; i < n; i++) {
        if (keys[i].idlen < 1 || keys[i].idlen > P11PSK_ID_MAX) {
            skipped++;
            continue;
        }
        if (!handle_hex_with(hk, &keys[i], hex))
            goto out;
        printf("%s %s\n", keys[i].label[0] ? keys[i].label : "-", hex);
    }
    fprintf(stderr,
            "p11psk: new handle key in token '%s': %zu new handles above%s. Every handle issued "
            "before is refused from now on: replace every handle file (stunnel, mosquitto, "
            "application configuration) with the new handles\n",
            p11psk_token_label(tok), n - skipped,
            skipped ? "; keys whose CKA_ID fits no handle were left out" : "");
    flush_all(cfg);
    rc = 0;
out:
    p11psk_handlekey_free(hk);
    free(keys);
    p11psk_token_close(tok);
    return rc;
}

static int cmd_handle(const p11psk_config *cfg, int argc, char **argv)
{
    static const struct option opts[] = {
        {"uri", no_argument, NULL, 'u'},
        {"reissue-all", no_argument, NULL, 'R'},
        {"yes", no_argument, NULL, 'y'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    char uri[P11PSK_URI_MAX];
    p11psk_token *tok = NULL;
    p11psk_key *keys = NULL;
    size_t n = 0;
    int opt, rc = 1, want_uri = 0, reissue = 0, yes = 0;

    optind = 0;
    while ((opt = getopt_long(argc, argv, "yh", opts, NULL)) != -1) {
        if (opt == 'u') {
            want_uri = 1;
        } else if (opt == 'R') {
            reissue = 1;
        } else if (opt == 'y') {
            yes = 1;
        } else if (opt == 'h') {
            fputs(usage_handle, stdout);
            return 0;
        } else {
            die_usage(usage_handle, "unknown option or missing value: '%s'", argv[optind - 1]);
        }
    }
    if (reissue) {
        if (optind != argc || want_uri)
            die_usage(usage_handle, "%s", "--reissue-all takes no ID and no --uri");
        if (!yes) {
            fprintf(stderr,
                    "p11psk: not re-issuing: --reissue-all replaces the token's handle key, so "
                    "every handle issued so far stops working at once and every handle file "
                    "must be replaced; pass --yes to do it\n");
            return 1;
        }
        return reissue_all(cfg);
    }
    if (yes)
        die_usage(usage_handle, "%s", "--yes goes with --reissue-all only");
    if (optind + 1 != argc)
        die_usage(usage_handle, "%s needs exactly one ID", "handle");
    if (keys_for_label(cfg, argv[optind], 0, &tok, &keys, &n)) {
        if (n > 1) {
            fprintf(stderr,
                    "p11psk: %zu keys are labelled '%s'; remove the extra ones (`p11psk rm` "
                    "removes all) or relabel them\n",
                    n, keys[0].label);
        } else if (want_uri) {
            key_uri(tok, &keys[0], uri);
            printf("%s\n", uri);
            rc = 0;
        } else {
            rc = print_handle(tok, &keys[0]) ? 0 : 1;
        }
    }
    free(keys);
    p11psk_token_close(tok);
    return rc;
}

/* Asks on the terminal; 1 for y/yes. */
static int confirm(const char *what, const char *uri)
{
    char ans[16];

    fprintf(stderr, "remove %s (%s)? [y/N] ", what, uri);
    fflush(stderr);
    if (fgets(ans, sizeof(ans), stdin) == NULL)
        return 0;
    ans[strcspn(ans, "\r\n")] = '\0';
    return strcasecmp(ans, "y") == 0 || strcasecmp(ans, "yes") == 0;
}

static int cmd_rm(const p11psk_config *cfg, int argc, char **argv)
{
    static const struct option opts[] = {
        {"yes", no_argument, NULL, 'y'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    char uri[P11PSK_URI_MAX], what[P11PSK_KEY_LABEL_MAX + 16];
    p11psk_token *tok = NULL;
    p11psk_key *keys = NULL;
    p11psk_err err;
    size_t n = 0, i;
    int opt, rc = 1, yes = 0, not_told = 0;

    optind = 0;
    while ((opt = getopt_long(argc, argv, "yh", opts, NULL)) != -1) {
        if (opt == 'y') {
            yes = 1;
        } else if (opt == 'h') {
            fputs(usage_rm, stdout);
            return 0;
        } else {
            die_usage(usage_rm, "unknown option or missing value: '%s'", argv[optind - 1]);
        }
    }
    if (optind + 1 != argc)
        die_usage(usage_rm, "%s needs exactly one ID", "rm");
    if (!keys_for_label(cfg, argv[optind], 1, &tok, &keys, &n))
        goto out;
    /* A removed key is gone for good and every handle to it fails: no silent removal from
     * a script that forgot what it was doing. */
    if (!yes && !isatty(STDIN_FILENO)) {
        key_uri(tok, &keys[0], uri);
        fprintf(stderr,
                "p11psk: not removing '%s' (%s%s): stdin is not a terminal to confirm on; "
                "pass --yes to remove without asking\n",
                keys[0].label, uri, n > 1 ? " and others" : "");
        goto out;
    }
    rc = 0;
    for (i = 0; i < n; i++) {
        key_uri(tok, &keys[i], uri);
        snprintf(what, sizeof(what), "key '%s'", keys[i].label);
        if (!yes && !confirm(what, uri)) {
            printf("kept %s\n", uri);
            continue;
        }
        if (p11psk_token_destroy_key(tok, &keys[i], &err) != P11PSK_ST_OK) {
            fprintf(stderr, "p11psk: cannot remove %s: %s\n", uri, err.msg);
            rc = 1;
            continue;
        }
        if (keys[i].not_after[0] != '\0') /* its end date mirror, where there is one */
            p11psk_token_mirror_end_date(tok, &keys[i], NULL, &err);
        printf("removed %s (%zu bytes)\n", uri, keys[i].len);
        /* Synchronous: when rm returns 0, p11pskd no longer serves the key. */
        if (!p11psk_cli_flush(cfg, &keys[i], "the key was removed from the token"))
            not_told = 1;
    }
    if (rc == 0 && not_told)
        rc = P11PSK_EXIT_NOT_TOLD;
out:
    free(keys);
    p11psk_token_close(tok);
    return rc;
}

static void list_json(p11psk_token *tok, const p11psk_key *keys, size_t n)
{
    char hex[2 * P11PSK_KEY_ID_MAX + 1], handle[P11PSK_HANDLE_HEX_LEN + 1], uri[P11PSK_URI_MAX];
    p11psk_handlekey *hk = cli_handlekey(tok, 0); /* listing creates nothing */
    uint8_t hb[P11PSK_HANDLE_LEN];
    long long now = (long long)time(NULL);
    size_t i;

    printf("[");
    for (i = 0; i < n; i++) {
        const p11psk_key *k = &keys[i];

        p11psk_hex_encode(k->id, k->idlen <= P11PSK_KEY_ID_MAX ? k->idlen : 0, hex);
        key_uri(tok, k, uri);
        printf("%s\n  {\"id\": ", i ? "," : "");
        p11psk_cli_json_str(stdout, k->label);
        printf(", \"ckaid\": \"%s\", \"type\": \"%s\", \"length\": %zu, \"readable\": %s, "
               "\"handle\": ",
               hex, k->type == CKK_AES ? "aes" : "generic", k->len, k->readable ? "true" : "false");
        /* A CKA_ID that fits no handle (or a token without a handle key yet) is shown as
         * null, not as an error. */
        if (hk != NULL && k->idlen >= 1 && k->idlen <= P11PSK_ID_MAX &&
            p11psk_handlekey_make(hk, k->id, k->idlen, hb) == 0) {
            p11psk_hex_encode(hb, sizeof(hb), handle);
            printf("\"%s\"", handle);
        } else {
            printf("null");
        }
        printf(", \"not_after\": ");
        if (k->not_after[0] != '\0')
            p11psk_cli_json_str(stdout, k->not_after);
        else
            printf("null");
        printf(", \"expired\": %s", p11psk_key_expired(k, now) ? "true" : "false");
        printf(", \"uri\": ");
        p11psk_cli_json_str(stdout, uri);
        printf("}");
    }
    printf("%s]\n", n ? "\n" : "");
    p11psk_handlekey_free(hk);
}

static int cmd_list(const p11psk_config *cfg, int argc, char **argv)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    char hex[2 * P11PSK_KEY_ID_MAX + 1], uri[P11PSK_URI_MAX], date[16];
    long long now = (long long)time(NULL);
    p11psk_token *tok = NULL;
    p11psk_key *keys = NULL;
    p11psk_err err;
    size_t n = 0, i;
    int opt, rc = 1, json = 0;

    optind = 0;
    while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (opt == 'j') {
            json = 1;
        } else if (opt == 'h') {
            fputs(usage_list, stdout);
            return 0;
        } else {
            die_usage(usage_list, "unknown option or missing value: '%s'", argv[optind - 1]);
        }
    }
    if (optind != argc)
        die_usage(usage_list, "list takes no arguments, got '%s'", argv[optind]);
    if (!p11psk_cli_open_token(cfg, 0, &tok))
        return 1;
    if (p11psk_token_list(tok, NULL, &keys, &n, &err) != P11PSK_ST_OK) {
        fprintf(stderr, "p11psk: %s\n", err.msg);
        goto out;
    }
    drop_handle_key(keys, &n);
    if (json) {
        list_json(tok, keys, n);
        rc = 0;
        goto out;
    }
    printf("%-24s %-34s %-8s %6s %-8s %-11s %s\n", "IDENTITY", "ID", "TYPE", "LENGTH", "READABLE",
           "NOT-AFTER", "URI");
    for (i = 0; i < n; i++) {
        if (keys[i].idlen <= P11PSK_KEY_ID_MAX)
            p11psk_hex_encode(keys[i].id, keys[i].idlen, hex);
        else
            snprintf(hex, sizeof(hex), "(%zu bytes)", keys[i].idlen);
        key_uri(tok, &keys[i], uri);
        snprintf(date, sizeof(date), "%s%s", keys[i].not_after[0] ? keys[i].not_after : "-",
                 p11psk_key_expired(&keys[i], now) ? "!" : "");
        printf("%-24s %-34s %-8s %6zu %-8s %-11s %s\n", keys[i].label[0] ? keys[i].label : "-",
               hex[0] ? hex : "-", keys[i].type == CKK_AES ? "aes" : "generic", keys[i].len,
               keys[i].readable ? "yes" : "no", date, uri);
    }
    rc = 0;
out:
    free(keys);
    p11psk_token_close(tok);
    return rc;
}

/*
 * Rotation: C_CreateObject/C_GenerateKey of the new key with the same label and CKA_ID,
 * then C_DestroyObject of the old one. Why not a temporary CKA_ID moved over with
 * C_SetAttributeValue afterwards: that leaves a gap with no key for the CKA_ID, which a
 * p11pskd that has the old object cached runs into as soon as the old one is destroyed
 * (it looks the CKA_ID up again and finds nothing), and it needs CKA_MODIFIABLE, which
 * tokens may refuse. With create-then-destroy, p11pskd keeps using its cached old object
 * until the destroy, then finds exactly the new one; only an uncached lookup during the
 * few milliseconds between the two calls sees two keys. A failed destroy is rolled back.
 */
static int cmd_rotate(const p11psk_config *cfg, int argc, char **argv)
{
    static const struct option opts[] = {
        {"generate", required_argument, NULL, 'g'},
        {"hex-file", required_argument, NULL, 'x'},
        {"readable", no_argument, NULL, 'r'},
        {"not-readable", no_argument, NULL, 'R'},
        {"not-after", required_argument, NULL, 'N'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const CK_DATE *na = NULL;
    CK_DATE end;
    long long end_s;
    int na_given = 0;
    char uri[P11PSK_URI_MAX], handle[P11PSK_HANDLE_HEX_LEN + 1], hex[2 * P11PSK_KEY_ID_MAX + 1];
    const char *hexfile = NULL;
    uint8_t *val = NULL;
    size_t vlen = 0, n = 0;
    p11psk_token *tok = NULL;
    p11psk_key *keys = NULL, old, newk;
    p11psk_new_key nk;
    p11psk_err err, err2;
    long gen = -1;
    int opt, rc = 1, readable = -1;

    optind = 0;
    while ((opt = getopt_long(argc, argv, "g:x:h", opts, NULL)) != -1) {
        switch (opt) {
        case 'g':
            gen = gen_len(usage_rotate, optarg);
            break;
        case 'x':
            hexfile = optarg;
            break;
        case 'r':
        case 'R':
            if (readable >= 0 && readable != (opt == 'r'))
                die_usage(usage_rotate, "%s", "give --readable or --not-readable, not both");
            readable = opt == 'r';
            break;
        case 'N':
            not_after_arg(usage_rotate, optarg, &end, &na);
            na_given = 1;
            break;
        case 'h':
            fputs(usage_rotate, stdout);
            return 0;
        default:
            die_usage(usage_rotate, "unknown option or missing value: '%s'", argv[optind - 1]);
        }
    }
    if (optind + 1 != argc)
        die_usage(usage_rotate, "%s needs exactly one ID", "rotate");
    if (hexfile != NULL && gen >= 0)
        die_usage(usage_rotate, "%s", "give either --generate or --hex-file, not both");
    if (hexfile != NULL && !read_hex_file(hexfile, &val, &vlen))
        return 1;
    if (!keys_for_label(cfg, argv[optind], 1, &tok, &keys, &n))
        goto out;
    if (n > 1) {
        fprintf(stderr,
                "p11psk: %zu keys are labelled '%s' in token '%s'; rotate needs exactly one. "
                "See `p11psk list` and remove the extra ones\n",
                n, keys[0].label, p11psk_token_label(tok));
        goto out;
    }
    old = keys[0];
    key_uri(tok, &old, uri);
    if (!p11psk_cli_handle_hex(tok, &old, handle))
        goto out;
    if (hexfile == NULL && gen < 0 &&
        (old.len < P11PSK_KEY_LEN_MIN || old.len > P11PSK_KEY_LEN_MAX)) {
        fprintf(stderr,
                "p11psk: %s is %zu bytes, outside %d..%d; give the new length with "
                "--generate N\n",
                uri, old.len, P11PSK_KEY_LEN_MIN, P11PSK_KEY_LEN_MAX);
        goto out;
    }
    memset(&nk, 0, sizeof(nk));
    nk.label = old.label;
    nk.id = old.id;
    nk.idlen = old.idlen;
    nk.value = val;
    nk.value_len = val != NULL ? vlen : (size_t)(gen >= 0 ? gen : (long)old.len);
    nk.readable = readable >= 0 ? readable : old.readable;
    /* Default: the current key's end date (an unreadable one is not carried over). */
    if (!na_given && old.not_after[0] != '\0' &&
        p11psk_date_parse(old.not_after, &end, &end_s) == 0)
        na = &end;
    nk.not_after = na;
    if (p11psk_token_create_key(tok, &nk, &newk, &err) != P11PSK_ST_OK) {
        fprintf(stderr, "p11psk: cannot create the new key for %s: %s; nothing was changed\n", uri,
                err.msg);
        goto out;
    }
    if (keep_end_date(tok, &newk, na, old.not_after) != 0) {
        if (p11psk_token_destroy_key(tok, &newk, &err2) == P11PSK_ST_OK)
            fprintf(stderr, "p11psk: removed the new key again; nothing was changed\n");
        goto out;
    }
    if (p11psk_token_destroy_key(tok, &old, &err) != P11PSK_ST_OK) {
        p11psk_hex_encode(old.id, old.idlen, hex);
        if (p11psk_token_destroy_key(tok, &newk, &err2) == P11PSK_ST_OK)
            fprintf(stderr,
                    "p11psk: cannot remove the old key %s: %s; removed the new one again, "
                    "nothing was changed\n",
                    uri, err.msg);
        else
            fprintf(stderr,
                    "p11psk: cannot remove the old key %s: %s, nor the new one: %s. Two keys "
                    "now share CKA_ID %s and p11pskd refuses the handle until one is removed "
                    "(e.g. pkcs11-tool --delete-object --type secrkey --id %s removes "
                    "both; then `p11psk add`)\n",
                    uri, err.msg, err2.msg, hex, hex);
        goto out;
    }
    printf("rotated %s: new %zu-byte key%s%s; handle unchanged\n", uri, newk.len,
           val != NULL ? " from " : " generated in the token", val != NULL ? hexfile : "");
    if (newk.readable != old.readable)
        printf("the key is now %s\n",
               newk.readable ? "readable by p11pskd" : "sensitive and non-extractable");
    if (strcmp(newk.not_after, old.not_after) != 0 && newk.not_after[0] == '\0')
        printf("the key no longer expires (was: %s)\n", old.not_after);
    note_expiry(&newk);
    rc =
        p11psk_cli_flush(cfg, &newk, "the key was rotated in the token") ? 0 : P11PSK_EXIT_NOT_TOLD;
out:
    if (val != NULL)
        OPENSSL_secure_clear_free(val, P11PSK_KEY_LEN_MAX);
    free(keys);
    p11psk_token_close(tok);
    return rc;
}

/* True for status and metrics given --socket: they need nothing else from the config. */
static int socket_given(int argc, char **argv)
{
    int i;

    for (i = 1; i < argc; i++)
        if (strcmp(argv[i], "--socket") == 0 || strncmp(argv[i], "--socket=", 9) == 0)
            return 1;
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    static const struct {
        const char *name;
        int (*fn)(const p11psk_config *cfg, int argc, char **argv);
        const char *usage;
        int daemon; /* talks to p11pskd only; 2: never reads the configuration file */
    } cmds[] = {
        {"add", cmd_add, usage_add, 0},
        {"handle", cmd_handle, usage_handle, 0},
        {"list", cmd_list, usage_list, 0},
        {"rotate", cmd_rotate, usage_rotate, 0},
        {"rm", cmd_rm, usage_rm, 0},
        {"migrate", p11psk_cli_migrate, p11psk_usage_migrate, 0},
        {"export", p11psk_cli_export, p11psk_usage_export, 0},
        {"status", p11psk_cli_status, p11psk_usage_status, 1},
        {"metrics", p11psk_cli_metrics, p11psk_usage_metrics, 1},
        {"doctor", p11psk_cli_doctor, p11psk_usage_doctor, 2},
    };
    const char *conf_arg = NULL;
    p11psk_config cfg;
    char err[512];
    size_t i;
    int opt, rc;

    OPENSSL_init_crypto(OPENSSL_INIT_NO_LOAD_CONFIG, NULL);
    opterr = 0; /* our own messages, prefixed "p11psk: " */
    while ((opt = getopt_long(argc, argv, "+c:hV", opts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            conf_arg = optarg;
            break;
        case 'h':
            fputs(usage_main, stdout);
            return 0;
        case 'V':
            printf("p11psk %s\n", P11PSK_VERSION);
            return 0;
        default:
            die_usage(usage_main, "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind == argc)
        die_usage(usage_main, "%s", "missing COMMAND");
    for (i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
        if (strcmp(argv[optind], cmds[i].name) == 0)
            break;
    if (i == sizeof(cmds) / sizeof(cmds[0]))
        die_usage(usage_main, "unknown command '%s'", argv[optind]);
    argc -= optind;
    argv += optind;
    /* --help needs no config file */
    for (opt = 1; opt < argc; opt++)
        if (strcmp(argv[opt], "--help") == 0 || strcmp(argv[opt], "-h") == 0) {
            fputs(cmds[i].usage, stdout);
            return 0;
        }
    if (cmds[i].daemon == 2 || (cmds[i].daemon && socket_given(argc, argv))) {
        /* An unprivileged user may ask for the status without reading p11pskd.conf. */
        memset(&cfg, 0, sizeof(cfg));
        return cmds[i].fn(&cfg, argc, argv);
    }
    if (!p11psk_config_load(p11psk_config_path(conf_arg), &cfg, err, sizeof(err))) {
        fprintf(stderr, "p11psk: %s%s\n", err,
                cmds[i].daemon ? "; or name p11pskd's socket with --socket PATH" : "");
        return 1;
    }
    rc = cmds[i].fn(&cfg, argc, argv);
    p11psk_config_free(&cfg);
    return rc;
}
