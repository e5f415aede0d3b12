/* SPDX-License-Identifier: Apache-2.0 */
/*
 * p11psk migrate: moves the keys of a stunnel PSKsecrets or mosquitto psk_file into the
 * token and rewrites the file with handles in their place.
 *
 * Three phases, so that a problem stops the run before anything changed: parse and check
 * every line and the token (read-only), then create keys, then write the new file next to
 * the old one and rename it over. Key bytes never reach stdout or stderr.
 */
#define _GNU_SOURCE /* O_NOFOLLOW, realpath */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "atomic_file.h"
#include "cli.h"
#include "log.h"

#define MIGRATE_FILE_MAX (1024 * 1024)
#define NEW_ID_LEN 16
#define TLS12_TOKEN_MIN 31 /* shortest key TLS 1.2 plain PSK (SHA-256) keeps in the token */

const char p11psk_usage_migrate[] =
    "Usage: p11psk migrate (--stunnel FILE | --mosquitto FILE) [--dry-run] [--replace]\n"
    "                      [--backup BACKUP] [--readable]\n"
    "\n"
    "Imports every key of a PSK file (identity:key lines) into the token as a p11psk key\n"
    "labelled with its identity, then rewrites FILE with the keys' handles in their place\n"
    "(same mode and owner; comments and blank lines kept; written to a temporary file in the\n"
    "same directory and renamed). Afterwards the file holds no raw key. Lines that already\n"
    "hold handles are left alone, so a second run changes nothing.\n"
    "\n"
    "  --stunnel FILE    stunnel PSKsecrets: hex or ASCII keys of 16..512 bytes\n"
    "  --mosquitto FILE  mosquitto psk_file: hex keys\n"
    "  --dry-run         show what would be done; change nothing\n"
    "  --replace         an identity already in the token with a different key gets the\n"
    "                    file's key (same CKA_ID, so its handle stays valid); default: error\n"
    "  --backup BACKUP   first save the original file, raw keys included, as BACKUP (mode\n"
    "                    0600, must not exist). Without it no copy of the raw keys is kept.\n"
    "  --readable        create the keys readable by p11pskd (needed only for TLS 1.2 with\n"
    "                    keys shorter than 31 bytes); default: sensitive, non-extractable\n"
    "\n"
    "Exit status: 0 done; 1 failure; 2 usage error; 3 done, but p11pskd could not be told\n"
    "(FLUSH) about keys --replace changed (it notices within its revalidate-ms).\n";

enum fmt { FMT_STUNNEL, FMT_MOSQUITTO };

enum action {
    ACT_KEEP,    /* comment, blank or ignored line: copied as is */
    ACT_HANDLE,  /* already a handle */
    ACT_IMPORT,  /* new key in the token */
    ACT_REUSE,   /* the token already holds this identity with these bytes */
    ACT_REPLACE, /* the token holds this identity with other bytes; --replace */
    ACT_SAME,    /* same identity and key as an earlier line: that line's handle */
};

typedef struct {
    size_t off, len;         /* the line in the file buffer, end of line excluded */
    size_t eol;              /* length of the end of line ("\n", "\r\n" or "") */
    size_t key_off, key_len; /* the key text inside the line */
    enum action act;
    char ident[P11PSK_KEY_LABEL_MAX];
    uint8_t *key; /* decoded key bytes (OPENSSL_clear_free) */
    size_t keylen;
    p11psk_key tokkey; /* REUSE/REPLACE: the existing key; after phase 2: the key used */
    size_t first;      /* ACT_SAME: index of the first line with this identity */
    char handle[P11PSK_HANDLE_HEX_LEN + 1];
} mline;

typedef struct {
    enum fmt fmt;
    const char *path; /* as given */
    char real[PATH_MAX];
    char *buf; /* the whole file */
    size_t size;
    struct stat st;
    mline *lines;
    size_t n;
} psk_file;

static const char *fmt_name(enum fmt f)
{
    return f == FMT_STUNNEL ? "stunnel PSKsecrets" : "mosquitto psk_file";
}

static void file_free(psk_file *pf)
{
    size_t i;

    for (i = 0; i < pf->n; i++)
        OPENSSL_clear_free(pf->lines[i].key, pf->lines[i].keylen);
    free(pf->lines);
    OPENSSL_clear_free(pf->buf, pf->size + 1);
    pf->buf = NULL;
    pf->lines = NULL;
}

/* Reads the whole file (following a symlink, so that the link survives the rename). */
static int file_read(psk_file *pf)
{
    FILE *f;
    size_t got;

    if (realpath(pf->path, pf->real) == NULL) {
        fprintf(stderr, "p11psk: cannot open %s: %s\n", pf->path, strerror(errno));
        return 0;
    }
    if ((f = fopen(pf->real, "re")) == NULL || fstat(fileno(f), &pf->st) != 0) {
        fprintf(stderr, "p11psk: cannot open %s: %s\n", pf->path, strerror(errno));
        if (f != NULL)
            fclose(f);
        return 0;
    }
    if (!S_ISREG(pf->st.st_mode) || pf->st.st_size > MIGRATE_FILE_MAX) {
        fprintf(stderr, "p11psk: %s is not a regular file of at most %d bytes\n", pf->path,
                MIGRATE_FILE_MAX);
        fclose(f);
        return 0;
    }
    pf->size = (size_t)pf->st.st_size;
    pf->buf = OPENSSL_zalloc(pf->size + 1);
    got = pf->buf != NULL ? fread(pf->buf, 1, pf->size, f) : 0;
    fclose(f);
    if (pf->buf == NULL || got != pf->size) {
        fprintf(stderr, "p11psk: cannot read %s\n", pf->path);
        return 0;
    }
    if (memchr(pf->buf, '\0', pf->size) != NULL) {
        fprintf(stderr, "p11psk: %s holds a NUL byte; it is not a PSK text file\n", pf->path);
        return 0;
    }
    return 1;
}

static int line_error(const psk_file *pf, size_t i, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int line_error(const psk_file *pf, size_t i, const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "p11psk: %s:%zu: ", pf->path, i + 1);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("; nothing was changed\n", stderr);
    return 0;
}

static int is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

/*
 * Finds the identity and key text of line i as the application itself reads them.
 * Returns 1 for a key line, 2 for a line to keep as it is, 0 after reporting an error.
 * stunnel: identity = everything before the first ':', key = everything after it.
 * mosquitto: both split at ':' and trimmed of blanks; '#' lines and lines without ':' are
 * ignored by mosquitto and kept here.
 */
static int split_line(const psk_file *pf, mline *l, size_t i)
{
    const char *s = pf->buf + l->off, *colon, *ks, *ke, *is = s, *ie;
    size_t n = l->len;
    int c;

    while (n > 0 && s[n - 1] == '\r')
        n--; /* both applications drop CRs */
    if (n == 0 || s[0] == '#')
        return 2;
    colon = memchr(s, ':', n);
    if (pf->fmt == FMT_MOSQUITTO) {
        const char *p = s;

        while (p < s + n && is_blank(*p))
            p++;
        if (p == s + n) /* whitespace only */
            return 2;
        if (colon == NULL) /* mosquitto would skip it silently: surely a mistake */
            return line_error(pf, i, "no ':' (expected identity:hexkey)");
        is = p;
        ie = colon;
        while (ie > is && is_blank(ie[-1]))
            ie--;
        ks = colon + 1;
        while (ks < s + n && is_blank(*ks))
            ks++;
        /* mosquitto ignores a further ':' part */
        for (ke = ks; ke < s + n && *ke != ':'; ke++)
            ;
        while (ke > ks && is_blank(ke[-1]))
            ke--;
    } else {
        if (colon == NULL)
            return line_error(pf, i, "not in identity:key format (stunnel rejects it too)");
        ie = colon;
        ks = colon + 1;
        ke = s + n;
    }
    if (ie == is)
        return line_error(pf, i, "empty identity");
    if ((size_t)(ie - is) >= sizeof(l->ident))
        return line_error(pf, i, "identity longer than %zu characters", sizeof(l->ident) - 1);
    memcpy(l->ident, is, (size_t)(ie - is));
    l->ident[ie - is] = '\0';
    if ((c = p11psk_first_ctrl(l->ident)) >= 0)
        return line_error(pf, i,
                          "identity contains a control character (0x%02x); labels end up in "
                          "logs and config files",
                          c);
    l->key_off = (size_t)(ks - pf->buf);
    l->key_len = (size_t)(ke - ks);
    return 1;
}

/* Decodes the key text as the application would; sets l->key or reports the line. */
static int decode_key(const psk_file *pf, mline *l, size_t i)
{
    const char *ks = pf->buf + l->key_off;
    char *txt = OPENSSL_strndup(ks, l->key_len);
    long len = -1;

    if (txt == NULL)
        return line_error(pf, i, "out of memory");
    if (pf->fmt == FMT_STUNNEL) {
        /* stunnel: OPENSSL_hexstr2buf() if that parses, else the ASCII bytes. */
        l->key = txt[0] != '\0' ? OPENSSL_hexstr2buf(txt, &len) : NULL;
        if (l->key == NULL) {
            l->key = (uint8_t *)OPENSSL_strndup(txt, l->key_len);
            len = (long)l->key_len;
        }
    } else {
        if (l->key_len == 0 || strspn(txt, "0123456789abcdefABCDEF") != l->key_len) {
            OPENSSL_clear_free(txt, l->key_len + 1);
            return line_error(pf, i,
                              "identity '%s': the key is not hexadecimal (mosquitto "
                              "rejects such a file too)",
                              l->ident);
        }
        if (l->key_len % 2 != 0) {
            OPENSSL_clear_free(txt, l->key_len + 1);
            return line_error(pf, i,
                              "identity '%s': odd number of hex digits; write the key "
                              "as whole bytes (add the leading 0)",
                              l->ident);
        }
        l->key = OPENSSL_malloc(l->key_len / 2);
        if (l->key != NULL)
            len = p11psk_hex_decode(txt, l->key, l->key_len / 2);
    }
    OPENSSL_clear_free(txt, l->key_len + 1);
    if (l->key == NULL || len < 0)
        return line_error(pf, i, "identity '%s': cannot decode the key", l->ident);
    l->keylen = (size_t)len;
    return 1;
}

/* Already a handle? 1: yes (valid), 0: no, -1: carries the magic but is broken. */
static int key_is_handle(const mline *l, p11psk_handle *h)
{
    int rc;

    if (!p11psk_handle_has_magic(l->key, l->keylen))
        return 0;
    rc = p11psk_handle_decode(l->key, l->keylen, h);
    return rc == P11PSK_HANDLE_OK && h->type == P11PSK_HT_PSK ? 1 : -1;
}

/* SHA-256 of the token key, computed by the token, compared with the file's key. */
static int token_key_equals(p11psk_token *tok, const p11psk_key *k, const mline *l, int *eq,
                            p11psk_err *err)
{
    uint8_t a[32], b[32];
    unsigned int blen = 0;

    *eq = 0;
    if (k->len != l->keylen)
        return 1;
    if (p11psk_token_digest_key(tok, P11PSK_MD_SHA256, NULL, 0, k, a, err) != P11PSK_ST_OK)
        return 0;
    if (!EVP_Digest(l->key, l->keylen, b, &blen, EVP_sha256(), NULL) || blen != sizeof(b)) {
        p11psk_err_set(err, P11PSK_ST_INTERNAL, "SHA-256 failed");
        return 0;
    }
    *eq = CRYPTO_memcmp(a, b, sizeof(a)) == 0;
    OPENSSL_cleanse(a, sizeof(a));
    OPENSSL_cleanse(b, sizeof(b));
    return 1;
}

/* Phase 1: every line parsed, every identity checked against the token. No changes. */
static int plan(psk_file *pf, p11psk_token *tok, int replace)
{
    size_t i, j, start = 0, cap = 0;

    for (i = 0; i <= pf->size; i++) {
        mline *l;

        if (i < pf->size && pf->buf[i] != '\n')
            continue;
        if (i == pf->size && start == pf->size)
            break; /* no unterminated last line */
        if (pf->n == cap) {
            mline *nl = realloc(pf->lines, (cap = cap ? 2 * cap : 64) * sizeof(*nl));

            if (nl == NULL)
                return line_error(pf, pf->n, "out of memory");
            pf->lines = nl;
        }
        l = &pf->lines[pf->n++];
        memset(l, 0, sizeof(*l));
        l->off = start;
        l->len = i - start;
        l->eol = i < pf->size ? 1 : 0;
        start = i + 1;
    }
    for (i = 0; i < pf->n; i++) {
        mline *l = &pf->lines[i];
        p11psk_key *found = NULL;
        p11psk_handle h;
        p11psk_err err;
        size_t nf = 0;
        int eq, hr;

        int kind = split_line(pf, l, i);

        if (kind == 0)
            return 0;
        if (kind == 2)
            continue; /* ACT_KEEP */
        if (!decode_key(pf, l, i))
            return 0;
        hr = key_is_handle(l, &h);
        if (hr < 0)
            return line_error(pf, i,
                              "identity '%s': the key looks like a p11psk handle but "
                              "fails its check; restore this line from the original file",
                              l->ident);
        if (hr > 0) {
            l->act = ACT_HANDLE;
            continue;
        }
        if (l->keylen < P11PSK_KEY_LEN_MIN || l->keylen > P11PSK_KEY_LEN_MAX)
            return line_error(pf, i,
                              "identity '%s': the key is %zu bytes; p11psk keys are "
                              "%d..%d bytes (for a new key: `p11psk add %s`)",
                              l->ident, l->keylen, P11PSK_KEY_LEN_MIN, P11PSK_KEY_LEN_MAX,
                              l->ident);
        /* An identity seen before in this file must carry the same key. */
        for (j = 0; j < i; j++) {
            mline *o = &pf->lines[j];

            if (o->act == ACT_KEEP || o->act == ACT_HANDLE || strcmp(o->ident, l->ident) != 0)
                continue;
            if (o->keylen != l->keylen || CRYPTO_memcmp(o->key, l->key, l->keylen) != 0)
                return line_error(pf, i,
                                  "identity '%s' appears again (first on line %zu) "
                                  "with a different key; a token label holds one key",
                                  l->ident, j + 1);
            l->act = ACT_SAME;
            l->first = o->act == ACT_SAME ? o->first : j;
            break;
        }
        if (l->act == ACT_SAME)
            continue;
        if (p11psk_token_list(tok, l->ident, &found, &nf, &err) != P11PSK_ST_OK) {
            free(found);
            return line_error(pf, i, "%s", err.msg);
        }
        if (nf == 0) {
            l->act = ACT_IMPORT;
        } else if (nf > 1) {
            free(found);
            return line_error(pf, i,
                              "%zu keys in the token are labelled '%s'; remove the "
                              "extra ones first (see `p11psk list`)",
                              nf, l->ident);
        } else {
            l->tokkey = found[0];
            if (!token_key_equals(tok, &found[0], l, &eq, &err)) {
                free(found);
                return line_error(pf, i,
                                  "identity '%s': cannot compare with the token's key: "
                                  "%s",
                                  l->ident, err.msg);
            }
            if (eq) {
                l->act = ACT_REUSE;
            } else if (replace) {
                l->act = ACT_REPLACE;
            } else {
                free(found);
                return line_error(pf, i,
                                  "identity '%s' already exists in token '%s' with a "
                                  "different key; pass --replace to give it this file's key, "
                                  "or rename the identity",
                                  l->ident, p11psk_token_label(tok));
            }
            if (l->tokkey.idlen == 0 || l->tokkey.idlen > P11PSK_ID_MAX) {
                free(found);
                return line_error(pf, i,
                                  "identity '%s': the token key's CKA_ID is %zu bytes; "
                                  "handles hold 1..%d",
                                  l->ident, l->tokkey.idlen, P11PSK_ID_MAX);
            }
        }
        free(found);
    }
    return 1;
}

static const char *act_str(enum action a)
{
    switch (a) {
    case ACT_HANDLE:
        return "already a handle, left alone";
    case ACT_IMPORT:
        return "import into the token";
    case ACT_REUSE:
        return "already in the token with the same key, use it";
    case ACT_REPLACE:
        return "replace the token's different key (CKA_ID kept)";
    case ACT_SAME:
        return "same key as an earlier line";
    case ACT_KEEP:
        break;
    }
    return "keep";
}

/* Phase 2: create or replace keys; fill in every line's handle. */
static int apply(psk_file *pf, p11psk_token *tok, int readable)
{
    size_t i;

    for (i = 0; i < pf->n; i++) {
        mline *l = &pf->lines[i];
        p11psk_new_key nk;
        p11psk_key old = l->tokkey;
        uint8_t id[NEW_ID_LEN];
        p11psk_err err;

        if (l->act == ACT_KEEP || l->act == ACT_HANDLE)
            continue;
        if (l->act == ACT_SAME) {
            memcpy(l->handle, pf->lines[l->first].handle, sizeof(l->handle));
            continue;
        }
        if (l->act == ACT_IMPORT || l->act == ACT_REPLACE) {
            memset(&nk, 0, sizeof(nk));
            nk.label = l->ident;
            nk.value = l->key;
            nk.value_len = l->keylen;
            nk.readable = readable;
            if (l->act == ACT_REPLACE) {
                nk.id = old.id;
                nk.idlen = old.idlen;
            } else if (p11psk_token_random(tok, id, sizeof(id), &err) != P11PSK_ST_OK) {
                fprintf(stderr, "p11psk: %s\n", err.msg);
                return 0;
            } else {
                nk.id = id;
                nk.idlen = sizeof(id);
            }
            /* Create first, then destroy the old key: a failure never loses a key. */
            if (p11psk_token_create_key(tok, &nk, &l->tokkey, &err) != P11PSK_ST_OK) {
                fprintf(stderr, "p11psk: %s:%zu: cannot create key '%s': %s\n", pf->path, i + 1,
                        l->ident, err.msg);
                return 0;
            }
            if (l->act == ACT_REPLACE &&
                p11psk_token_destroy_key(tok, &old, &err) != P11PSK_ST_OK) {
                fprintf(stderr,
                        "p11psk: %s:%zu: created the new key '%s' but cannot remove the "
                        "old one: %s; remove it by hand\n",
                        pf->path, i + 1, l->ident, err.msg);
                return 0;
            }
        }
        if (!p11psk_cli_handle_hex(tok, &l->tokkey, l->handle))
            return 0;
    }
    return 1;
}

static int write_backup(const psk_file *pf, const char *backup)
{
    int fd = open(backup, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);

    if (fd < 0) {
        fprintf(stderr, "p11psk: cannot create backup %s: %s; nothing was changed\n", backup,
                strerror(errno));
        return 0;
    }
    if (fchmod(fd, 0600) != 0 || p11psk_write_all(fd, pf->buf, pf->size) != 0 || fsync(fd) != 0) {
        fprintf(stderr, "p11psk: cannot write backup %s: %s\n", backup, strerror(errno));
        close(fd);
        unlink(backup);
        return 0;
    }
    close(fd);
    fprintf(stderr,
            "p11psk: warning: %s holds the raw keys; keep it offline and delete it (shred -u) "
            "once the migration is verified\n",
            backup);
    return 1;
}

/* Phase 3: the new text in a temp file beside the original, same mode and owner, renamed
 * over it (atomic_file.c). */
static int rewrite(const psk_file *pf, const char *backup)
{
    p11psk_atomic af;
    size_t i;
    int ok = 1;

    if (p11psk_atomic_open(&af, pf->real) != 0)
        return 0;
    if (fchown(af.fd, pf->st.st_uid, pf->st.st_gid) != 0) {
        fprintf(stderr,
                "p11psk: cannot give the new file %s's owner (%s); run as root or as "
                "its owner\n",
                pf->path, strerror(errno));
        ok = 0;
    }
    if (ok && fchmod(af.fd, pf->st.st_mode & 07777) != 0) {
        fprintf(stderr, "p11psk: cannot set the mode of the new file: %s\n", strerror(errno));
        ok = 0;
    }
    for (i = 0; ok && i < pf->n; i++) {
        const mline *l = &pf->lines[i];
        const char *s = pf->buf + l->off;

        if (l->act == ACT_KEEP || l->act == ACT_HANDLE) {
            ok = p11psk_atomic_write(&af, s, l->len + l->eol) == 0;
            continue;
        }
        /* Everything around the key text stays as it was. */
        ok = p11psk_atomic_write(&af, s, l->key_off - l->off) == 0 &&
             p11psk_atomic_write(&af, l->handle, P11PSK_HANDLE_HEX_LEN) == 0 &&
             p11psk_atomic_write(&af, pf->buf + l->key_off + l->key_len,
                                 l->off + l->len + l->eol - (l->key_off + l->key_len)) == 0;
    }
    if (ok && backup != NULL)
        ok = write_backup(pf, backup);
    if (!ok) {
        p11psk_atomic_abort(&af);
        return 0;
    }
    return p11psk_atomic_commit(&af) == 0;
}

int p11psk_cli_migrate(const p11psk_config *cfg, int argc, char **argv)
{
    static const struct option opts[] = {
        {"stunnel", required_argument, NULL, 's'}, {"mosquitto", required_argument, NULL, 'm'},
        {"dry-run", no_argument, NULL, 'n'},       {"replace", no_argument, NULL, 'r'},
        {"backup", required_argument, NULL, 'b'},  {"readable", no_argument, NULL, 'R'},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0},
    };
    const char *backup = NULL;
    int opt, dry = 0, replace = 0, readable = 0, rc = 1, nfiles = 0, not_told = 0;
    size_t i, counts[ACT_SAME + 1] = {0}, shortkeys = 0;
    p11psk_token *tok = NULL;
    psk_file pf;
    struct stat bst;
    char uri[P11PSK_URI_MAX];

    memset(&pf, 0, sizeof(pf));
    optind = 0; /* GNU getopt: full reset after the "+" global parse */
    while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (opt) {
        case 's':
        case 'm':
            pf.fmt = opt == 's' ? FMT_STUNNEL : FMT_MOSQUITTO;
            pf.path = optarg;
            nfiles++;
            break;
        case 'n':
            dry = 1;
            break;
        case 'r':
            replace = 1;
            break;
        case 'b':
            backup = optarg;
            break;
        case 'R':
            readable = 1;
            break;
        case 'h':
            fputs(p11psk_usage_migrate, stdout);
            return 0;
        default:
            fprintf(stderr, "p11psk: unknown option or missing value: '%s'\n%s", argv[optind - 1],
                    p11psk_usage_migrate);
            return 2;
        }
    }
    if (nfiles != 1 || optind != argc) {
        fprintf(stderr, "p11psk: migrate takes exactly one --stunnel FILE or --mosquitto FILE\n%s",
                p11psk_usage_migrate);
        return 2;
    }
    if (backup != NULL && lstat(backup, &bst) == 0) {
        fprintf(stderr,
                "p11psk: backup %s already exists; choose a new name; nothing was "
                "changed\n",
                backup);
        return 1;
    }
    if (!file_read(&pf))
        goto out;
    if (!p11psk_cli_open_token(cfg, !dry, &tok))
        goto out;
    if (!plan(&pf, tok, replace))
        goto out;
    for (i = 0; i < pf.n; i++) {
        const mline *l = &pf.lines[i];

        counts[l->act]++;
        if (l->act == ACT_KEEP)
            continue;
        if (l->act == ACT_REUSE || l->act == ACT_REPLACE) {
            p11psk_cli_uri(p11psk_token_label(tok), &l->tokkey, uri, sizeof(uri));
            printf("%s:%zu: %s: %s: %s\n", pf.path, i + 1, l->ident, act_str(l->act), uri);
        } else {
            printf("%s:%zu: %s: %s\n", pf.path, i + 1, l->ident, act_str(l->act));
        }
        if ((l->act == ACT_IMPORT || l->act == ACT_REPLACE) && l->keylen < TLS12_TOKEN_MIN &&
            !readable)
            shortkeys++;
    }
    if (counts[ACT_IMPORT] + counts[ACT_REUSE] + counts[ACT_REPLACE] + counts[ACT_SAME] == 0) {
        printf("%s (%s): no raw keys; nothing to do\n", pf.path, fmt_name(pf.fmt));
        rc = 0;
        goto out;
    }
    if (dry) {
        printf("dry run: would import %zu, replace %zu, reuse %zu and rewrite %s; nothing "
               "changed\n",
               counts[ACT_IMPORT], counts[ACT_REPLACE], counts[ACT_REUSE], pf.path);
        rc = 0;
        goto out;
    }
    if (!apply(&pf, tok, readable)) {
        fprintf(stderr,
                "p11psk: %s was not rewritten; keys created so far stay in the token and "
                "a new run will reuse them\n",
                pf.path);
        goto out;
    }
    if (!rewrite(&pf, backup)) {
        fprintf(stderr,
                "p11psk: %s was not rewritten; the keys are in the token and a new run "
                "will reuse them\n",
                pf.path);
        goto out;
    }
    for (i = 0; i < pf.n; i++) {
        const mline *l = &pf.lines[i];

        if (l->act != ACT_IMPORT && l->act != ACT_REPLACE)
            continue;
        p11psk_cli_uri(p11psk_token_label(tok), &l->tokkey, uri, sizeof(uri));
        printf("%s:%zu: %s: %s %s\n", pf.path, i + 1, l->ident,
               l->act == ACT_IMPORT ? "imported as" : "replaced", uri);
        /* A replaced key keeps its CKA_ID: p11pskd must drop what it derived from the old. */
        if (l->act == ACT_REPLACE &&
            !p11psk_cli_flush(cfg, &l->tokkey, "the key was replaced in the token"))
            not_told = 1;
    }
    printf("rewrote %s (%s) with handles: %zu imported, %zu replaced, %zu reused, %zu already "
           "handles\n",
           pf.path, fmt_name(pf.fmt), counts[ACT_IMPORT], counts[ACT_REPLACE], counts[ACT_REUSE],
           counts[ACT_HANDLE]);
    if (shortkeys > 0)
        fprintf(stderr,
                "p11psk: note: %zu key(s) are shorter than %d bytes: TLS 1.3 keeps them in the "
                "token, but TLS 1.2 plain PSK needs them readable (re-run a fresh migration "
                "with --readable, or `p11psk add --readable`), or longer keys\n",
                shortkeys, TLS12_TOKEN_MIN);
    rc = not_told ? P11PSK_EXIT_NOT_TOLD : 0;
out:
    p11psk_token_close(tok);
    file_free(&pf);
    return rc;
}
