/* SPDX-License-Identifier: Apache-2.0 */
/*
 * p11psk export: the token's keys as a PSK file of handles, identity:handle-hex lines, the
 * format of stunnel's PSKsecrets and mosquitto's psk_file alike. The file holds no key
 * bytes, so a fleet tool can render it on every host from the token's contents.
 */
#include <errno.h>
#include <fnmatch.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "atomic_file.h"
#include "cli.h"
#include "handlekey.h"

/* Keys p11psk keeps for itself (none yet; a handle-protection key would be one): never
 * exported as an identity. */

const char p11psk_usage_export[] =
    "Usage: p11psk export (--stunnel | --mosquitto) [--match GLOB] [-o FILE]\n"
    "\n"
    "Writes one identity:handle line per key in the token (identity = the key's label,\n"
    "handle = 64 hex characters), sorted by identity: a stunnel PSKsecrets file or a\n"
    "mosquitto psk_file that the provider turns back into the keys. No key bytes are\n"
    "written. Keys that the format cannot carry (identity with ':' or a line break; for\n"
    "mosquitto also leading or trailing blanks or a leading '#'), keys without a handle\n"
    "(CKA_ID longer than 16 bytes), expired keys, and identities held by several keys are\n"
    "left out with a note on stderr. Exits 1 when no key is left.\n"
    "\n"
    "  --stunnel         stunnel PSKsecrets format\n"
    "  --mosquitto       mosquitto psk_file format\n"
    "  --match GLOB      only identities matching GLOB (fnmatch, e.g. 'web-*'), or the key\n"
    "                    a pkcs11: URI names (object=, id=)\n"
    "  -o, --output FILE write FILE atomically (temporary file beside it, mode 0600, fsync,\n"
    "                    rename); refuses FILE if it exists and is not a regular file.\n"
    "                    Default: standard output\n";

enum fmt { FMT_NONE, FMT_STUNNEL, FMT_MOSQUITTO };

static int by_label(const void *a, const void *b)
{
    return strcmp(((const p11psk_key *)a)->label, ((const p11psk_key *)b)->label);
}

static int is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\v' || c == '\f';
}

/* Why the format cannot carry identity s, or NULL if it can. */
static const char *unfit(enum fmt f, const char *s)
{
    size_t n = strlen(s);

    if (n == 0)
        return "empty identity";
    if (strpbrk(s, ":\r\n") != NULL)
        return "the identity holds ':' or a line break, which ends it in a PSK file";
    if (f == FMT_MOSQUITTO && (is_blank(s[0]) || is_blank(s[n - 1])))
        return "mosquitto trims blanks around the identity";
    if (f == FMT_MOSQUITTO && s[0] == '#')
        return "mosquitto reads a line starting with '#' as a comment";
    return NULL;
}

/* Appends "identity:handle\n" to *out (grown as needed). 0, or -1 when out of memory. */
static int append(char **out, size_t *len, size_t *cap, const char *ident, const char *hex)
{
    size_t need = strlen(ident) + 1 + strlen(hex) + 1;
    char *p;

    if (*len + need + 1 > *cap) {
        size_t nc = (*cap + need) * 2;

        if ((p = realloc(*out, nc)) == NULL)
            return -1;
        *out = p;
        *cap = nc;
    }
    *len += (size_t)snprintf(*out + *len, *cap - *len, "%s:%s\n", ident, hex);
    return 0;
}

/* Refuses an output path that exists and is not a regular file (a device, a FIFO, a
 * directory, a symlink that could point anywhere). */
static int output_ok(const char *path)
{
    struct stat st;

    if (lstat(path, &st) != 0) {
        if (errno == ENOENT)
            return 0;
        fprintf(stderr, "p11psk: cannot check %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        fprintf(stderr,
                "p11psk: %s exists and is not a regular file (%s); give the path of a "
                "regular file or of a new one\n",
                path, S_ISLNK(st.st_mode) ? "a symbolic link" : "not replaced");
        return -1;
    }
    return 0;
}

static int write_out(const char *path, const char *buf, size_t len)
{
    p11psk_atomic af;

    if (path == NULL) {
        if (fwrite(buf, 1, len, stdout) != len || fflush(stdout) != 0) {
            fprintf(stderr, "p11psk: cannot write to standard output: %s\n", strerror(errno));
            return -1;
        }
        return 0;
    }
    if (output_ok(path) != 0 || p11psk_atomic_open(&af, path) != 0)
        return -1;
    if (p11psk_atomic_write(&af, buf, len) != 0) {
        p11psk_atomic_abort(&af);
        return -1;
    }
    return p11psk_atomic_commit(&af);
}

int p11psk_cli_export(const p11psk_config *cfg, int argc, char **argv)
{
    static const struct option opts[] = {
        {"stunnel", no_argument, NULL, 's'},     {"mosquitto", no_argument, NULL, 'm'},
        {"match", required_argument, NULL, 'g'}, {"output", required_argument, NULL, 'o'},
        {"help", no_argument, NULL, 'h'},        {NULL, 0, NULL, 0},
    };
    const char *match = NULL, *outpath = NULL, *why, *tl;
    char hex[P11PSK_HANDLE_HEX_LEN + 1], *out = NULL;
    long long now = (long long)time(NULL);
    size_t n = 0, i, len = 0, cap = 0, written = 0;
    p11psk_token *tok = NULL;
    p11psk_key *keys = NULL;
    p11psk_id_arg ia;
    enum fmt f = FMT_NONE;
    p11psk_err err;
    int opt, rc = 1;

    optind = 0; /* GNU getopt: full reset after the "+" global parse */
    while ((opt = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
        if ((opt == 's' || opt == 'm') && f != FMT_NONE) {
            fprintf(stderr, "p11psk: give one of --stunnel and --mosquitto\n%s",
                    p11psk_usage_export);
            return 2;
        }
        if (opt == 's') {
            f = FMT_STUNNEL;
        } else if (opt == 'm') {
            f = FMT_MOSQUITTO;
        } else if (opt == 'g') {
            match = optarg;
        } else if (opt == 'o') {
            outpath = optarg;
        } else if (opt == 'h') {
            fputs(p11psk_usage_export, stdout);
            return 0;
        } else {
            fprintf(stderr, "p11psk: unknown option or missing value: '%s'\n%s", argv[optind - 1],
                    p11psk_usage_export);
            return 2;
        }
    }
    if (f == FMT_NONE || optind != argc) {
        fprintf(stderr, "p11psk: export needs --stunnel or --mosquitto and no arguments\n%s",
                p11psk_usage_export);
        return 2;
    }
    if (match != NULL && strncmp(match, "pkcs11:", 7) == 0 && p11psk_cli_id_parse(match, &ia) != 0)
        return 1;
    if (outpath != NULL && output_ok(outpath) != 0)
        return 1; /* before the token is opened: no PIN use for nothing */
    if (!p11psk_cli_open_token(cfg, 0, &tok))
        return 1;
    tl = p11psk_token_label(tok);
    if (p11psk_token_list(tok, NULL, &keys, &n, &err) != P11PSK_ST_OK) {
        fprintf(stderr, "p11psk: %s\n", err.msg);
        goto out;
    }
    if (n > 1)
        qsort(keys, n, sizeof(*keys), by_label);
    for (i = 0; i < n; i++) {
        const p11psk_key *k = &keys[i];
        int dup = (i > 0 && strcmp(keys[i - 1].label, k->label) == 0) ||
                  (i + 1 < n && strcmp(keys[i + 1].label, k->label) == 0);

        if (p11psk_handlekey_is_key(k)) /* the token's own handle key is no PSK */
            continue;
        if (match != NULL && (strncmp(match, "pkcs11:", 7) == 0 ? !p11psk_cli_id_match(&ia, tl, k)
                                                                : fnmatch(match, k->label, 0) != 0))
            continue;
        why = unfit(f, k->label);
        if (why == NULL && dup)
            why = "several keys carry this identity; remove the extra ones (`p11psk list`)";
        if (why == NULL && p11psk_key_expired(k, now))
            why = k->not_after[0] == 'i' ? "its CKA_END_DATE is unreadable" : "it has expired";
        if (why == NULL && (k->idlen == 0 || k->idlen > P11PSK_ID_MAX))
            why = "its CKA_ID is too long for a handle";
        if (why != NULL) {
            fprintf(stderr, "p11psk: note: left out '%s': %s\n", k->label, why);
            continue;
        }
        if (!p11psk_cli_handle_hex(tok, k, hex))
            continue;
        if (append(&out, &len, &cap, k->label, hex) != 0) {
            fprintf(stderr, "p11psk: out of memory\n");
            goto out;
        }
        written++;
    }
    if (written == 0) {
        fprintf(stderr, "p11psk: no key to export%s%s%s in token '%s'; nothing written\n",
                match != NULL ? " matches '" : "", match != NULL ? match : "",
                match != NULL ? "'" : "", tl);
        goto out;
    }
    if (write_out(outpath, out, len) != 0)
        goto out;
    if (outpath != NULL)
        fprintf(stderr, "p11psk: wrote %zu identities to %s\n", written, outpath);
    rc = 0;
out:
    free(out);
    free(keys);
    p11psk_token_close(tok);
    return rc;
}
