/* p11psk: manage the PSKs p11pskd serves (add, handle, list, rotate, rm, migrate, status). */
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
#include <unistd.h>

#include "cli.h"
#include "config.h"
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
    "  add ID [--generate N | --hex-file F] [--readable]   create a key, print its handle\n"
    "  handle ID [--uri]                                   print the handle of key ID\n"
    "  list [--json]                                       list the keys\n"
    "  rotate ID [--generate N | --hex-file F]             give key ID new key material;\n"
    "                                                      its handle stays valid\n"
    "  rm ID [--yes]                                       remove the key(s) labelled ID\n"
    "  migrate --stunnel FILE | --mosquitto FILE           move a PSK file's keys into the\n"
    "                                                      token, leave handles in the file\n"
    "  status [--json]                                     p11pskd's health and counters\n"
    "  metrics                                             the same for Prometheus\n"
    "\n"
    "Options:\n"
    "  -c, --config FILE  configuration file (default $" P11PSK_CONF_ENV " or " P11PSK_DEFAULT_CONF
    ")\n"
    "  -h, --help         show help; `p11psk COMMAND --help` for a command\n"
    "\n"
    "ID is the key's identity (its CKA_LABEL) as used in allow rules. Commands that touch or\n"
    "show a key name it by its pkcs11: URI (RFC 7512). See p11psk(1).\n";

static const char usage_add[] =
    "Usage: p11psk add ID [--generate N | --hex-file FILE] [--readable]\n"
    "\n"
    "Creates a generic secret key labelled ID with a random 16-byte CKA_ID and prints its\n"
    "handle (64 hex characters) for the application's configuration; its pkcs11: URI goes\n"
    "to stderr.\n"
    "\n"
    "  --generate N     let the token generate N random bytes (16..512, default 32)\n"
    "  --hex-file FILE  import the key from FILE holding hex (whitespace ignored, 16..512 "
    "bytes)\n"
    "  --readable       allow the daemon to read the value (needed only for TLS 1.2 with\n"
    "                   short keys); default: sensitive and non-extractable\n";

static const char usage_handle[] =
    "Usage: p11psk handle ID [--uri]\n"
    "\n"
    "Prints the 32-byte handle (64 hex characters) of key ID.\n"
    "\n"
    "  --uri  print the key's pkcs11: URI instead of the handle\n";

static const char usage_list[] =
    "Usage: p11psk list [--json]\n"
    "\n"
    "Lists the keys: identity, CKA_ID, type, length in bytes, readable, pkcs11: URI.\n"
    "\n"
    "  --json  print a JSON array instead: one object per key with the fields id (the\n"
    "          identity), ckaid (hex), type, length, readable, handle (null when the\n"
    "          CKA_ID does not fit a handle) and uri\n";

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
    "revalidate-ms).\n";

static const char usage_rotate[] =
    "Usage: p11psk rotate ID [--generate N | --hex-file FILE] [--readable | --not-readable]\n"
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
    "                   (default for both: as the current key)\n";

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

int p11psk_cli_handle_hex(const p11psk_key *k, char hex[P11PSK_HANDLE_HEX_LEN + 1])
{
    uint8_t hb[P11PSK_HANDLE_LEN];
    p11psk_handle h;

    if (k->idlen == 0 || k->idlen > P11PSK_ID_MAX) {
        fprintf(stderr,
                "p11psk: key '%s' has a %zu-byte CKA_ID; handles hold 1..%d bytes: re-import it "
                "with a shorter --id (e.g. softhsm2-util --import ... --id 0102)\n",
                k->label, k->idlen, P11PSK_ID_MAX);
        return 0;
    }
    memset(&h, 0, sizeof(h));
    h.type = P11PSK_HT_PSK;
    h.idlen = (uint8_t)k->idlen;
    memcpy(h.id, k->id, k->idlen);
    if (p11psk_handle_encode(&h, hb, sizeof(hb)) != 0) {
        fprintf(stderr, "p11psk: cannot encode a handle for '%s'\n", k->label);
        return 0;
    }
    p11psk_hex_encode(hb, sizeof(hb), hex);
    return 1;
}

static int print_handle(const p11psk_key *k)
{
    char hex[P11PSK_HANDLE_HEX_LEN + 1];

    if (!p11psk_cli_handle_hex(k, hex))
        return 0;
    printf("%s\n", hex);
    return 1;
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
    if (uri == NULL || p11_kit_uri_format(uri, P11_KIT_URI_FOR_OBJECT_ON_TOKEN, &s) !=
                           P11_KIT_URI_OK ||
        strlen(s) >= cap)
        snprintf(out, cap, "pkcs11:type=secret-key"); /* out of memory: still a valid URI */
    else
        memcpy(out, s, strlen(s) + 1);
    free(s);
    p11_kit_uri_free(uri);
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
        snprintf(why, whylen, "%s at %s%s%s", p11psk_call_strerror(rc), c.path, e ? ": " : "",
                 e ? strerror(e) : "");
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
        die_usage(usage, "--generate takes a length of %d..%d bytes, not '%s'",
                  P11PSK_KEY_LEN_MIN, P11PSK_KEY_LEN_MAX, arg);
    return n;
}

static int cmd_add(const p11psk_config *cfg, int argc, char **argv)
{
    static const struct option opts[] = {
        {"generate", required_argument, NULL, 'g'},
        {"hex-file", required_argument, NULL, 'x'},
        {"readable", no_argument, NULL, 'r'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *hexfile = NULL;
    uint8_t id[NEW_ID_LEN], *val = NULL;
    size_t vlen = 0, n;
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
    nk.label = argv[optind];
    if (*nk.label == '\0')
        die_usage(usage_add, "%s", "ID must not be empty");
    if (hexfile != NULL && !read_hex_file(hexfile, &val, &vlen))
        return 1;
    if (!p11psk_cli_open_token(cfg, 1, &tok))
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
    fprintf(stderr, "created %s (%zu bytes%s)\n", uri, key.len, key.readable ? ", readable" : "");
    rc = print_handle(&key) ? 0 : 1;
out:
    if (val != NULL)
        OPENSSL_secure_clear_free(val, P11PSK_KEY_LEN_MAX);
    p11psk_token_close(tok);
    return rc;
}

/* Finds the keys labelled label; prints why and returns 0 if there are none. */
static int keys_for_label(const p11psk_config *cfg, const char *label, int rw, p11psk_token **tok,
                          p11psk_key **keys, size_t *n)
{
    p11psk_err err;

    if (!p11psk_cli_open_token(cfg, rw, tok))
        return 0;
    if (p11psk_token_list(*tok, label, keys, n, &err) != P11PSK_ST_OK) {
        fprintf(stderr, "p11psk: %s\n", err.msg);
        return 0;
    }
    if (*n == 0) {
        fprintf(stderr, "p11psk: no key labelled '%s' in token '%s'; see `p11psk list`\n", label,
                p11psk_token_label(*tok));
        return 0;
    }
    return 1;
}

static int cmd_handle(const p11psk_config *cfg, int argc, char **argv)
{
    static const struct option opts[] = {
        {"uri", no_argument, NULL, 'u'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    char uri[P11PSK_URI_MAX];
    p11psk_token *tok = NULL;
    p11psk_key *keys = NULL;
    size_t n = 0;
    int opt, rc = 1, want_uri = 0;

    optind = 0;
    while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (opt == 'u') {
            want_uri = 1;
        } else if (opt == 'h') {
            fputs(usage_handle, stdout);
            return 0;
        } else {
            die_usage(usage_handle, "unknown option or missing value: '%s'", argv[optind - 1]);
        }
    }
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
            rc = print_handle(&keys[0]) ? 0 : 1;
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
               hex, k->type == CKK_AES ? "aes" : "generic", k->len,
               k->readable ? "true" : "false");
        /* A CKA_ID that fits no handle is shown as null, not as an error. */
        if (k->idlen >= 1 && k->idlen <= P11PSK_ID_MAX) {
            p11psk_handle h;
            uint8_t hb[P11PSK_HANDLE_LEN];

            memset(&h, 0, sizeof(h));
            h.type = P11PSK_HT_PSK;
            h.idlen = (uint8_t)k->idlen;
            memcpy(h.id, k->id, k->idlen);
            if (p11psk_handle_encode(&h, hb, sizeof(hb)) == 0) {
                p11psk_hex_encode(hb, sizeof(hb), handle);
                printf("\"%s\"", handle);
            } else {
                printf("null");
            }
        } else {
            printf("null");
        }
        printf(", \"uri\": ");
        p11psk_cli_json_str(stdout, uri);
        printf("}");
    }
    printf("%s]\n", n ? "\n" : "");
}

static int cmd_list(const p11psk_config *cfg, int argc, char **argv)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    char hex[2 * P11PSK_KEY_ID_MAX + 1], uri[P11PSK_URI_MAX];
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
    if (json) {
        list_json(tok, keys, n);
        rc = 0;
        goto out;
    }
    printf("%-24s %-34s %-8s %6s %-8s %s\n", "IDENTITY", "ID", "TYPE", "LENGTH", "READABLE",
           "URI");
    for (i = 0; i < n; i++) {
        if (keys[i].idlen <= P11PSK_KEY_ID_MAX)
            p11psk_hex_encode(keys[i].id, keys[i].idlen, hex);
        else
            snprintf(hex, sizeof(hex), "(%zu bytes)", keys[i].idlen);
        key_uri(tok, &keys[i], uri);
        printf("%-24s %-34s %-8s %6zu %-8s %s\n", keys[i].label[0] ? keys[i].label : "-",
               hex[0] ? hex : "-", keys[i].type == CKK_AES ? "aes" : "generic", keys[i].len,
               keys[i].readable ? "yes" : "no", uri);
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
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
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
    if (!p11psk_cli_handle_hex(&old, handle))
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
    if (p11psk_token_create_key(tok, &nk, &newk, &err) != P11PSK_ST_OK) {
        fprintf(stderr, "p11psk: cannot create the new key for %s: %s; nothing was changed\n",
                uri, err.msg);
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
           val != NULL ? " from " : " generated in the token",
           val != NULL ? hexfile : "");
    if (newk.readable != old.readable)
        printf("the key is now %s\n",
               newk.readable ? "readable by p11pskd" : "sensitive and non-extractable");
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
        {NULL, 0, NULL, 0},
    };
    static const struct {
        const char *name;
        int (*fn)(const p11psk_config *cfg, int argc, char **argv);
        const char *usage;
        int daemon; /* talks to p11pskd only */
    } cmds[] = {
        {"add", cmd_add, usage_add, 0},
        {"handle", cmd_handle, usage_handle, 0},
        {"list", cmd_list, usage_list, 0},
        {"rotate", cmd_rotate, usage_rotate, 0},
        {"rm", cmd_rm, usage_rm, 0},
        {"migrate", p11psk_cli_migrate, p11psk_usage_migrate, 0},
        {"status", p11psk_cli_status, p11psk_usage_status, 1},
        {"metrics", p11psk_cli_metrics, p11psk_usage_metrics, 1},
    };
    const char *conf_arg = NULL;
    p11psk_config cfg;
    char err[512];
    size_t i;
    int opt, rc;

    OPENSSL_init_crypto(OPENSSL_INIT_NO_LOAD_CONFIG, NULL);
    opterr = 0; /* our own messages, prefixed "p11psk: " */
    while ((opt = getopt_long(argc, argv, "+c:h", opts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            conf_arg = optarg;
            break;
        case 'h':
            fputs(usage_main, stdout);
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
    if (cmds[i].daemon && socket_given(argc, argv)) {
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
