/* p11psk: manage the PSKs p11pskd serves (add, handle, list, rm, migrate). */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <openssl/crypto.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "config.h"
#include "p11psk/handle.h"
#include "token.h"

#define EXIT_USAGE 2
#define NEW_ID_LEN 16
#define HEX_FILE_MAX (4 * P11PSK_KEY_LEN_MAX + 4096) /* generous room for whitespace */

static const char usage_main[] =
    "Usage: p11psk [--config FILE] COMMAND [ARGS]\n"
    "\n"
    "Manages TLS pre-shared keys kept in the PKCS#11 token that p11pskd serves.\n"
    "\n"
    "Commands:\n"
    "  add ID [--generate N | --hex-file F] [--readable]   create a key, print its handle\n"
    "  handle ID                                           print the handle of key ID\n"
    "  list                                                list the keys\n"
    "  rm ID                                               remove the key(s) labelled ID\n"
    "  migrate --stunnel FILE | --mosquitto FILE           move a PSK file's keys into the\n"
    "                                                      token, leave handles in the file\n"
    "\n"
    "Options:\n"
    "  -c, --config FILE  configuration file (default $" P11PSK_CONF_ENV " or " P11PSK_DEFAULT_CONF
    ")\n"
    "  -h, --help         show help; `p11psk COMMAND --help` for a command\n"
    "\n"
    "ID is the key's identity (its CKA_LABEL) as used in allow rules.\n";

static const char usage_add[] =
    "Usage: p11psk add ID [--generate N | --hex-file FILE] [--readable]\n"
    "\n"
    "Creates a generic secret key labelled ID with a random 16-byte CKA_ID and prints its\n"
    "handle (64 hex characters) for the application's configuration.\n"
    "\n"
    "  --generate N     let the token generate N random bytes (16..512, default 32)\n"
    "  --hex-file FILE  import the key from FILE holding hex (whitespace ignored, 16..512 "
    "bytes)\n"
    "  --readable       allow the daemon to read the value (needed only for TLS 1.2 with\n"
    "                   short keys); default: sensitive and non-extractable\n";

static const char usage_handle[] = "Usage: p11psk handle ID\n"
                                   "\n"
                                   "Prints the 32-byte handle (64 hex characters) of key ID.\n";

static const char usage_list[] =
    "Usage: p11psk list\n"
    "\n"
    "Lists the keys: identity, CKA_ID, type, length in bytes, readable.\n";

static const char usage_rm[] = "Usage: p11psk rm ID\n"
                               "\n"
                               "Destroys every key labelled ID and prints what it removed.\n";

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

/* Parses the command's own options; returns 1 if --help was asked. */
static int cmd_help_only(int argc, char **argv, const char *usage)
{
    static const struct option opts[] = {{"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    int opt;

    optind = 0; /* GNU getopt: full reset after the "+" global parse */
    while ((opt = getopt_long(argc, argv, "+h", opts, NULL)) != -1) {
        if (opt == 'h') {
            fputs(usage, stdout);
            return 1;
        }
        die_usage(usage, "unknown option '%s' for %s", argv[optind - 1], argv[0]);
    }
    return 0;
}

int p11psk_cli_open_token(const p11psk_config *cfg, int rw, p11psk_token **tok)
{
    p11psk_token_params prm;
    p11psk_err err;

    memset(&prm, 0, sizeof(prm));
    prm.module = cfg->module;
    prm.token_uri = cfg->token_uri;
    prm.pin_source = cfg->pin_source;
    prm.server_address = cfg->p11kit_server;
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
    if (!p11psk_handle_encode(&h, hb, sizeof(hb))) {
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
    long gen = -1;
    char *end;
    int opt, rc = 1;

    memset(&nk, 0, sizeof(nk));
    optind = 0; /* GNU getopt: full reset after the "+" global parse */
    while ((opt = getopt_long(argc, argv, "g:x:rh", opts, NULL)) != -1) {
        switch (opt) {
        case 'g':
            errno = 0;
            gen = strtol(optarg, &end, 10);
            if (errno != 0 || *end != '\0' || gen < P11PSK_KEY_LEN_MIN || gen > P11PSK_KEY_LEN_MAX)
                die_usage(usage_add, "--generate takes a length of 16..512 bytes, not '%s'",
                          optarg);
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
                "p11psk: a key labelled '%s' already exists in token '%s'; pick another ID or "
                "remove it first with `p11psk rm %s`\n",
                nk.label, p11psk_token_label(tok), nk.label);
        goto out;
    }
    if (p11psk_token_random(tok, id, sizeof(id), &err) != P11PSK_ST_OK) {
        fprintf(stderr, "p11psk: %s\n", err.msg);
        goto out;
    }
    nk.id = id;
    nk.idlen = sizeof(id);
    nk.value = val;
    nk.value_len = val != NULL ? vlen : (size_t)(gen >= 0 ? gen : 32);
    if (p11psk_token_create_key(tok, &nk, &key, &err) != P11PSK_ST_OK) {
        fprintf(stderr, "p11psk: cannot create key '%s': %s\n", nk.label, err.msg);
        goto out;
    }
    rc = print_handle(&key) ? 0 : 1;
out:
    if (val != NULL)
        OPENSSL_secure_clear_free(val, P11PSK_KEY_LEN_MAX);
    p11psk_token_close(tok);
    return rc;
}

/* Finds the keys labelled argv[1] (exactly one ID argument). */
static int keys_for_label(const p11psk_config *cfg, int argc, char **argv, const char *usage,
                          int rw, p11psk_token **tok, p11psk_key **keys, size_t *n)
{
    p11psk_err err;

    if (cmd_help_only(argc, argv, usage))
        exit(0);
    if (optind + 1 != argc)
        die_usage(usage, "%s needs exactly one ID", argv[0]);
    if (!p11psk_cli_open_token(cfg, rw, tok))
        return 0;
    if (p11psk_token_list(*tok, argv[optind], keys, n, &err) != P11PSK_ST_OK) {
        fprintf(stderr, "p11psk: %s\n", err.msg);
        return 0;
    }
    if (*n == 0) {
        fprintf(stderr, "p11psk: no key labelled '%s' in token '%s'; see `p11psk list`\n",
                argv[optind], p11psk_token_label(*tok));
        return 0;
    }
    return 1;
}

static int cmd_handle(const p11psk_config *cfg, int argc, char **argv)
{
    p11psk_token *tok = NULL;
    p11psk_key *keys = NULL;
    size_t n = 0;
    int rc = 1;

    if (keys_for_label(cfg, argc, argv, usage_handle, 0, &tok, &keys, &n)) {
        if (n > 1)
            fprintf(stderr,
                    "p11psk: %zu keys are labelled '%s'; remove the extra ones (`p11psk rm` "
                    "removes all) or relabel them\n",
                    n, keys[0].label);
        else
            rc = print_handle(&keys[0]) ? 0 : 1;
    }
    free(keys);
    p11psk_token_close(tok);
    return rc;
}

static int cmd_rm(const p11psk_config *cfg, int argc, char **argv)
{
    char hex[2 * P11PSK_KEY_ID_MAX + 1];
    p11psk_token *tok = NULL;
    p11psk_key *keys = NULL;
    p11psk_err err;
    size_t n = 0, i;
    int rc = 1;

    if (keys_for_label(cfg, argc, argv, usage_rm, 1, &tok, &keys, &n)) {
        rc = 0;
        for (i = 0; i < n; i++) {
            p11psk_hex_encode(keys[i].id, keys[i].idlen <= P11PSK_KEY_ID_MAX ? keys[i].idlen : 0,
                              hex);
            if (p11psk_token_destroy_key(tok, &keys[i], &err) != P11PSK_ST_OK) {
                fprintf(stderr, "p11psk: cannot remove '%s' (CKA_ID %s): %s\n", keys[i].label, hex,
                        err.msg);
                rc = 1;
                continue;
            }
            printf("removed '%s' (CKA_ID %s, %zu bytes)\n", keys[i].label, hex, keys[i].len);
        }
    }
    free(keys);
    p11psk_token_close(tok);
    return rc;
}

static int cmd_list(const p11psk_config *cfg, int argc, char **argv)
{
    char hex[2 * P11PSK_KEY_ID_MAX + 1];
    p11psk_token *tok = NULL;
    p11psk_key *keys = NULL;
    p11psk_err err;
    size_t n = 0, i;
    int rc = 1;

    if (cmd_help_only(argc, argv, usage_list))
        return 0;
    if (optind != argc)
        die_usage(usage_list, "list takes no arguments, got '%s'", argv[optind]);
    if (!p11psk_cli_open_token(cfg, 0, &tok))
        return 1;
    if (p11psk_token_list(tok, NULL, &keys, &n, &err) != P11PSK_ST_OK) {
        fprintf(stderr, "p11psk: %s\n", err.msg);
        goto out;
    }
    printf("%-24s %-34s %-8s %6s %s\n", "IDENTITY", "ID", "TYPE", "LENGTH", "READABLE");
    for (i = 0; i < n; i++) {
        if (keys[i].idlen <= P11PSK_KEY_ID_MAX)
            p11psk_hex_encode(keys[i].id, keys[i].idlen, hex);
        else
            snprintf(hex, sizeof(hex), "(%zu bytes)", keys[i].idlen);
        printf("%-24s %-34s %-8s %6zu %s\n", keys[i].label[0] ? keys[i].label : "-",
               hex[0] ? hex : "-", keys[i].type == CKK_AES ? "aes" : "generic", keys[i].len,
               keys[i].readable ? "yes" : "no");
    }
    rc = 0;
out:
    free(keys);
    p11psk_token_close(tok);
    return rc;
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
    } cmds[] = {
        {"add", cmd_add, usage_add},
        {"handle", cmd_handle, usage_handle},
        {"list", cmd_list, usage_list},
        {"rm", cmd_rm, usage_rm},
        {"migrate", p11psk_cli_migrate, p11psk_usage_migrate},
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
    if (!p11psk_config_load(p11psk_config_path(conf_arg), &cfg, err, sizeof(err))) {
        fprintf(stderr, "p11psk: %s\n", err);
        return 1;
    }
    rc = cmds[i].fn(&cfg, argc, argv);
    p11psk_config_free(&cfg);
    return rc;
}
