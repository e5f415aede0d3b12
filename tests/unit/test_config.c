/* SPDX-License-Identifier: Apache-2.0 */
/*
 * p11pskd.conf: defaults, every key of conf/p11pskd.conf, the shipped file itself, and the
 * exact error text (FILE:LINE: problem; fix) for every kind of bad line.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "p11psk/client.h"
#include "p11psk/handle.h"
#include "unit.h"

static char path[64];
static char err[2048];

/* Writes text to a new temporary file; its name is left in path. */
static const char *conf(const char *text)
{
    FILE *f;
    int fd;

    snprintf(path, sizeof(path), "/tmp/p11psk-conf-XXXXXX");
    fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    f = fdopen(fd, "w");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_ge(fputs(text, f), 0);
    ck_assert_int_eq(fclose(f), 0);
    return path;
}

static void load_ok(const char *text, p11psk_config *cfg)
{
    err[0] = '\0';
    ck_assert_msg(p11psk_config_load(conf(text), cfg, err, sizeof(err)) == 1, "refused: %s", err);
    unlink(path);
}

/* Loads text, which must fail; err then holds the message. */
static void load_bad(const char *text)
{
    p11psk_config cfg;

    err[0] = '\0';
    ck_assert_msg(p11psk_config_load(conf(text), &cfg, err, sizeof(err)) == 0, "accepted: %s",
                  text);
    unlink(path);
}

START_TEST(defaults)
{
    p11psk_config cfg;

    load_ok("# nothing but a comment\n\n   \n", &cfg);
    ck_assert_str_eq(cfg.path, path);
    ck_assert_str_eq(cfg.module, P11PSK_DEFAULT_MODULE);
    ck_assert_ptr_null(cfg.token_uri);
    ck_assert_ptr_null(cfg.pin_source);
    ck_assert_ptr_null(cfg.p11kit_server);
    ck_assert_str_eq(cfg.socket, P11PSK_DEFAULT_SOCKET);
    ck_assert_uint_eq(cfg.socket_mode, 0660);
    ck_assert_int_eq(cfg.has_socket_group, 0);
    ck_assert_int_eq(cfg.log_level, P11PSK_LOG_INFO);
    ck_assert_uint_eq(cfg.threads, 0);
    ck_assert_uint_eq(cfg.max_connections, 1024);
    ck_assert_uint_eq(cfg.max_connections_peer, 256);
    ck_assert_uint_eq(cfg.request_timeout_ms, 10000);
    ck_assert_uint_eq(cfg.accept_rate_per_uid, 400);
    ck_assert_uint_eq(cfg.busy_poll_us, 1000);
    ck_assert_uint_eq(cfg.revalidate_ms, 1000);
    ck_assert_uint_eq(cfg.revalidate_value_ms, 60000);
    ck_assert_int_eq(cfg.cache, 1);
    ck_assert_uint_eq(cfg.cache_ttl_s, 300);
    ck_assert_uint_eq(cfg.cache_size, 16384);
    ck_assert_uint_eq(cfg.acl.n, 0); /* deny by default */
    ck_assert_int_eq(cfg.policy.allow_psk_ke, 0);
    ck_assert_int_eq(cfg.policy.readable_keys, 1);
    ck_assert_uint_eq(cfg.policy.rate_limit, 0);
    ck_assert(p11psk_policy_digest_ok(&cfg.policy, P11PSK_MD_SHA256));
    ck_assert(p11psk_policy_digest_ok(&cfg.policy, P11PSK_MD_SHA384));
    p11psk_config_free(&cfg);
    ck_assert_ptr_null(cfg.module);
}
END_TEST

/* The file shipped in conf/ parses, and says what the comments in it say. */
START_TEST(shipped_file)
{
    p11psk_config cfg;

    err[0] = '\0';
    ck_assert_msg(p11psk_config_load(P11PSK_SRC_DIR "/conf/p11pskd.conf", &cfg, err, sizeof(err)) ==
                      1,
                  "%s", err);
    ck_assert_str_eq(cfg.module, "/usr/lib/softhsm/libsofthsm2.so");
    ck_assert_str_eq(cfg.token_uri, "pkcs11:token=p11psk");
    ck_assert_str_eq(cfg.pin_source, "file:/etc/p11psk/pin");
    ck_assert_str_eq(cfg.socket, "/run/p11psk/p11psk.sock");
    ck_assert_uint_eq(cfg.socket_mode, 0660);
    ck_assert_int_eq(cfg.log_level, P11PSK_LOG_INFO);
    ck_assert_int_eq(cfg.cache, 1);
    ck_assert_uint_eq(cfg.acl.n, 0);
    ck_assert_int_eq(cfg.policy.allow_psk_ke, 0);
    p11psk_config_free(&cfg);
}
END_TEST

START_TEST(every_key)
{
    p11psk_config cfg;

    load_ok("module = /opt/pkcs11/mod.so\n"
            "p11-kit-server-address = unix:path=/run/p11-kit/pkcs11-42\n"
            "token = pkcs11:token=Other\n"
            "pin-source = /etc/p11psk/other-pin\n"
            "socket = /run/p11psk-test/d.sock\n"
            "socket-mode = 0600\n"
            "socket-group = daemon\n"
            "log-level = debug\n"
            "threads = 4\n"
            "max-connections = 10\n"
            "max-connections-per-peer = 3\n"
            "request-timeout-ms = 250\n"
            "busy-poll-us = 300\n"
            "revalidate-value-ms = 5000\n"
            "accept-rate-per-uid = 50\n"
            "cache = off\n"
            "cache-ttl = 60\n"
            "cache-size = 100\n"
            "allow web-* uid=root\n"
            "allow-status uid=daemon\n"
            "allow-admin gid=0\n"
            "allow-psk-ke = yes\n"
            "readable-keys = no\n"
            "digests = SHA384\n"
            "rate-limit = 50\n",
            &cfg);
    ck_assert_str_eq(cfg.module, "/opt/pkcs11/mod.so");
    ck_assert_str_eq(cfg.p11kit_server, "unix:path=/run/p11-kit/pkcs11-42");
    ck_assert_str_eq(cfg.token_uri, "pkcs11:token=Other");
    ck_assert_str_eq(cfg.pin_source, "/etc/p11psk/other-pin");
    ck_assert_str_eq(cfg.socket, "/run/p11psk-test/d.sock");
    ck_assert_uint_eq(cfg.socket_mode, 0600);
    ck_assert_int_eq(cfg.has_socket_group, 1);
    ck_assert_uint_eq(cfg.socket_gid, 1);
    ck_assert_int_eq(cfg.log_level, P11PSK_LOG_DEBUG);
    ck_assert_uint_eq(cfg.threads, 4);
    ck_assert_uint_eq(cfg.max_connections, 10);
    ck_assert_uint_eq(cfg.max_connections_peer, 3);
    ck_assert_uint_eq(cfg.request_timeout_ms, 250);
    ck_assert_uint_eq(cfg.busy_poll_us, 300);
    ck_assert_uint_eq(cfg.revalidate_value_ms, 5000);
    ck_assert_uint_eq(cfg.accept_rate_per_uid, 50);
    ck_assert_int_eq(cfg.cache, 0);
    ck_assert_uint_eq(cfg.cache_ttl_s, 60);
    ck_assert_uint_eq(cfg.cache_size, 100);
    ck_assert_uint_eq(cfg.acl.n, 3);
    ck_assert_int_eq(cfg.acl.rules[0].kind, P11PSK_ACL_KEY);
    ck_assert_str_eq(cfg.acl.rules[0].glob, "web-*");
    ck_assert_int_eq(cfg.acl.rules[1].kind, P11PSK_ACL_STATUS);
    ck_assert_uint_eq(cfg.acl.rules[1].uid, 1);
    ck_assert_int_eq(cfg.acl.rules[2].kind, P11PSK_ACL_ADMIN);
    ck_assert_int_eq(cfg.acl.rules[2].has_gid, 1);
    /* Each rule remembers where it was written, for the logs. */
    {
        char where[80];

        snprintf(where, sizeof(where), "%s:19", path);
        ck_assert_str_eq(cfg.acl.rules[0].where, where);
    }
    ck_assert_int_eq(cfg.policy.allow_psk_ke, 1);
    ck_assert_int_eq(cfg.policy.readable_keys, 0);
    ck_assert(!p11psk_policy_digest_ok(&cfg.policy, P11PSK_MD_SHA256));
    ck_assert(p11psk_policy_digest_ok(&cfg.policy, P11PSK_MD_SHA384));
    ck_assert_uint_eq(cfg.policy.rate_limit, 50);
    p11psk_config_free(&cfg);
}
END_TEST

START_TEST(syntax_variants)
{
    p11psk_config cfg;

    load_ok("module=/a.so\n"
            "  socket   =   /run/s.sock   # trailing comment\n"
            "token = pkcs11:token=a#b\n" /* '#' inside a word is not a comment */
            "\tlog-level\t=\twarn\n"
            "allow = k-* uid=0\n"
            "allow *\n"
            "socket-group = 65534\n"
            "threads = 0\n",
            &cfg);
    ck_assert_str_eq(cfg.module, "/a.so");
    ck_assert_str_eq(cfg.socket, "/run/s.sock");
    ck_assert_str_eq(cfg.token_uri, "pkcs11:token=a#b");
    ck_assert_int_eq(cfg.log_level, P11PSK_LOG_WARN);
    ck_assert_uint_eq(cfg.acl.n, 2);
    ck_assert_str_eq(cfg.acl.rules[0].glob, "k-*");
    ck_assert_str_eq(cfg.acl.rules[1].glob, "*");
    ck_assert_int_eq(cfg.acl.rules[1].has_uid, 0);
    ck_assert_uint_eq(cfg.socket_gid, 65534);
    p11psk_config_free(&cfg);
}
END_TEST

/* A pin-source attribute in the token URI is used unless a pin-source line says otherwise,
 * before or after the token line. */
START_TEST(pin_source_from_uri)
{
    p11psk_config cfg;

    load_ok("token = pkcs11:token=T?pin-source=file:/etc/p11psk/uri-pin\n", &cfg);
    ck_assert_str_eq(cfg.pin_source, "file:/etc/p11psk/uri-pin");
    p11psk_config_free(&cfg);
    load_ok("pin-source = /etc/line-pin\ntoken = pkcs11:token=T?pin-source=file:/etc/uri-pin\n",
            &cfg);
    ck_assert_str_eq(cfg.pin_source, "/etc/line-pin");
    p11psk_config_free(&cfg);
    load_ok("token = pkcs11:token=T?pin-source=file:/etc/uri-pin\npin-source = file:/etc/line\n",
            &cfg);
    ck_assert_str_eq(cfg.pin_source, "file:/etc/line");
    p11psk_config_free(&cfg);
}
END_TEST

/* line 3 of a file, the message that must follow "FILE:3: " */
static const struct {
    const char *line, *want;
} bad_lines[] = {
    {"allow-psk-ke = maybe", "allow-psk-ke must be yes or no"},
    {"readable-keys = 1x", "readable-keys must be yes or no"},
    {"digests = MD5", "digests: 'MD5' is not supported; use SHA256 and/or SHA384"},
    {"rate-limit = fast", "rate-limit must be requests per second (0 = unlimited)"},
    {"token = pkcs11:token=x?pin-source=relative/pin",
     "pin-source in the token URI must be file:/ABSOLUTE/PATH"},
    {"pin-source = relative/pin", "pin-source must be file:/ABSOLUTE/PATH or /ABSOLUTE/PATH"},
    {"pin-source = file:pin", "pin-source must be file:/ABSOLUTE/PATH or /ABSOLUTE/PATH"},
    {"p11-kit-server-address = /run/p11-kit/pkcs11",
     "p11-kit-server-address must look like unix:path=/run/p11-kit/pkcs11 (as `p11-kit server` "
     "prints)"},
    {"socket = run/p11psk.sock", "socket must be an absolute path shorter than 108 bytes"},
    {"socket = "
     "/run/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
     "aaaaaaaaaaaaaaaaaaaa.sock",
     "socket must be an absolute path shorter than 108 bytes"},
    {"socket-mode = 0999", "socket-mode must be octal permission bits, e.g. 0660"},
    {"socket-mode = 01777", "socket-mode must be octal permission bits, e.g. 0660"},
    {"socket-mode = rw", "socket-mode must be octal permission bits, e.g. 0660"},
    {"socket-group = p11psk-no-such-group",
     "unknown group 'p11psk-no-such-group'; create it or give a numeric gid"},
    {"socket-group = 4294967295", "socket-group 4294967295 is not a valid gid"},
    {"socket-group = 4294967296", "socket-group 4294967296 is not a valid gid"},
    {"cache = yes", "cache must be on or off"},
    {"cache-ttl = 0", "cache-ttl must be a number from 1 to 86400"},
    {"cache-ttl = 86401", "cache-ttl must be a number from 1 to 86400"},
    {"cache-size = 0", "cache-size must be a number from 1 to 1000000"},
    {"cache-size = 1000001", "cache-size must be a number from 1 to 1000000"},
    {"threads = 65", "threads must be a number from 0 to 64"},
    {"threads = -1", "threads must be a number from 0 to 64"},
    {"threads = 2x", "threads must be a number from 0 to 64"},
    {"max-connections = 0", "max-connections must be a number from 1 to 65536"},
    {"max-connections-per-peer = 65537",
     "max-connections-per-peer must be a number from 1 to 65536"},
    {"busy-poll-us = 10001", "busy-poll-us must be a number from 0 to 10000"},
    {"revalidate-value-ms = 86400001", "revalidate-value-ms must be a number from 0 to 86400000"},
    {"request-timeout-ms = 99", "request-timeout-ms must be a number from 100 to 600000"},
    {"accept-rate-per-uid = -1", "accept-rate-per-uid must be a number from 0 to 1000000"},
    {"request-timeout-ms = 600001", "request-timeout-ms must be a number from 100 to 600000"},
    {"log-level = verbose", "log-level must be error, warn, info or debug"},
    {"module =", "'module' needs a value: module = VALUE"},
    {"cache-ttl = # comment", "'cache-ttl' needs a value: cache-ttl = VALUE"},
    {"module /x.so", "malformed line; write 'key = value' or 'allow GLOB ...'"},
    {"justaword", "malformed line; write 'key = value' or 'allow GLOB ...'"},
    {"allow", "allow needs an identity glob, e.g. 'allow web-* uid=www-data' ('allow *' lets "
              "everyone use every key)"},
    {"allow * uid=p11psk-no-such-user",
     "unknown user 'p11psk-no-such-user'; create it or use a numeric uid"},
    {"allow-status everyone", "allow-status takes conditions only, e.g. allow-status "
                              "uid=prometheus"},
};

START_TEST(bad_line_names_file_line)
{
    char text[512], want[1024];

    snprintf(text, sizeof(text), "# header\nmodule = /x.so\n%s\nthreads = 1000\n",
             bad_lines[_i].line);
    load_bad(text);
    snprintf(want, sizeof(want), "%s:3: %s", path, bad_lines[_i].want);
    ck_assert_str_eq(err, want);
}
END_TEST

START_TEST(bad_token_uri)
{
    char prefix[128];

    load_bad("\ntoken = http://example.com/\n");
    snprintf(prefix, sizeof(prefix), "%s:2: bad token URI (", path);
    ck_assert_msg(strncmp(err, prefix, strlen(prefix)) == 0, "%s", err);
    ck_assert_msg(strstr(err, "); write e.g. token = pkcs11:token=MyLabel") != NULL, "%s", err);
}
END_TEST

/* The unknown-key error lists every key the file format knows. */
START_TEST(unknown_key)
{
    static const char *const keys[] = {
        "module",
        "p11-kit-server-address",
        "token",
        "pin-source",
        "socket",
        "socket-mode",
        "socket-group",
        "log-level",
        "threads",
        "max-connections",
        "max-connections-per-peer",
        "request-timeout-ms",
        "accept-rate-per-uid",
        "busy-poll-us",
        "revalidate-value-ms",
        "cache",
        "cache-ttl",
        "cache-size",
        "allow",
        "allow-status",
        "allow-admin",
        "allow-psk-ke",
        "readable-keys",
        "digests",
        "rate-limit",
    };
    char prefix[128], word[64];

    load_bad("module = /x.so\nfrobnicate = 1\n");
    snprintf(prefix, sizeof(prefix), "%s:2: unknown key 'frobnicate'; known keys: ", path);
    ck_assert_msg(strncmp(err, prefix, strlen(prefix)) == 0, "%s", err);
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        const char *list = err + strlen(prefix);
        size_t n = strlen(keys[i]);
        int found = 0;

        snprintf(word, sizeof(word), "%s", keys[i]);
        /* whole words of the comma separated list */
        for (const char *p = strstr(list, word); p != NULL && !found; p = strstr(p + 1, word))
            found = (p == list || p[-1] == ' ') && (p[n] == ',' || p[n] == '\0');
        ck_assert_msg(found, "'%s' missing from: %s", keys[i], err);
    }
}
END_TEST

START_TEST(line_too_long)
{
    static char text[6000];
    char want[256];

    memcpy(text, "module = /x.so\n# ", 17);
    memset(text + 17, 'x', 5000);
    memcpy(text + 5017, "\n", 2);
    load_bad(text);
    snprintf(want, sizeof(want), "%s:2: line too long (max 4094 bytes)", path);
    ck_assert_str_eq(err, want);
}
END_TEST

START_TEST(missing_file)
{
    p11psk_config cfg;

    ck_assert_int_eq(p11psk_config_load("/nonexistent/p11psk/p11pskd.conf", &cfg, err, sizeof(err)),
                     0);
    ck_assert_str_eq(err, "/nonexistent/p11psk/p11pskd.conf: No such file or directory; give "
                          "another file with --config FILE or $P11PSK_CONF");
}
END_TEST

START_TEST(config_path)
{
    ck_assert_str_eq(p11psk_config_path("/given.conf"), "/given.conf");
    setenv(P11PSK_CONF_ENV, "/from/env.conf", 1);
    ck_assert_str_eq(p11psk_config_path(NULL), "/from/env.conf");
    ck_assert_str_eq(p11psk_config_path("/given.conf"), "/given.conf");
    setenv(P11PSK_CONF_ENV, "", 1);
    ck_assert_str_eq(p11psk_config_path(NULL), P11PSK_DEFAULT_CONF);
    unsetenv(P11PSK_CONF_ENV);
    ck_assert_str_eq(p11psk_config_path(NULL), "/etc/p11psk/p11pskd.conf");
}
END_TEST

/* p11pskd's checks of its config and PIN file: modes others could use are refused, with the
 * file, its mode and the fix. Files here belong to whoever runs the test, which is root or
 * p11pskd's "own user" alike. */
START_TEST(unsafe_files)
{
    p11psk_config cfg;
    char pinpath[64], line[128], want[256];
    int fd;

    snprintf(pinpath, sizeof(pinpath), "/tmp/p11psk-pin-XXXXXX");
    fd = mkstemp(pinpath); /* 0600 */
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, "1234\n", 5), 5);
    close(fd);
    snprintf(line, sizeof(line), "pin-source = file:%s\n", pinpath);
    load_ok(line, &cfg); /* unlinks the config: write it again for the checks */
    conf(line);
    free(cfg.path);
    cfg.path = strdup(path);
    chmod(path, 0644);
    ck_assert_msg(p11psk_config_check_files(&cfg, err, sizeof(err)) == 0, "%s", err);

    chmod(pinpath, 0644);
    ck_assert_int_eq(p11psk_config_check_files(&cfg, err, sizeof(err)), -1);
    snprintf(want, sizeof(want), "PIN file %s has mode 0644 and owner uid %lu", pinpath,
             (unsigned long)geteuid());
    ck_assert_msg(strncmp(err, want, strlen(want)) == 0, "%s", err);
    ck_assert_msg(strstr(err, "every user may read or change it; fix it with `chmod 0640 ") != NULL,
                  "%s", err);
    chmod(pinpath, 0620);
    ck_assert_int_eq(p11psk_config_check_files(&cfg, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "its group may change it") != NULL, "%s", err);
    chmod(pinpath, 0640); /* our own group may read it */
    ck_assert_msg(p11psk_config_check_files(&cfg, err, sizeof(err)) == 0, "%s", err);
    unlink(pinpath);
    ck_assert_int_eq(p11psk_config_check_files(&cfg, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "No such file or directory; fix pin-source") != NULL, "%s", err);

    chmod(path, 0666);
    ck_assert_int_eq(p11psk_config_check_files(&cfg, err, sizeof(err)), -1);
    snprintf(want, sizeof(want), "config file %s has mode 0666", path);
    ck_assert_msg(strncmp(err, want, strlen(want)) == 0, "%s", err);
    ck_assert_msg(strstr(err, "others than its owner may change it") != NULL, "%s", err);
    chmod(path, 0664);
    ck_assert_int_eq(p11psk_config_check_files(&cfg, err, sizeof(err)), -1);
    unlink(path);
    p11psk_config_free(&cfg);
}
END_TEST

START_TEST(pin_read)
{
    char src[96], want[256];
    char *pin = NULL;
    size_t len = 0;

    conf("12345678\nsecond line\n");
    snprintf(src, sizeof(src), "file:%s", path);
    ck_assert_msg(p11psk_pin_read(src, &pin, &len, err, sizeof(err)), "%s", err);
    ck_assert_uint_eq(len, 8);
    ck_assert_mem_eq(pin, "12345678", 8);
    p11psk_pin_free(pin, len);
    ck_assert(p11psk_pin_read(path, &pin, &len, err, sizeof(err))); /* plain path too */
    ck_assert_uint_eq(len, 8);
    p11psk_pin_free(pin, len);
    unlink(path);

    conf("\nnot the first line\n");
    ck_assert_int_eq(p11psk_pin_read(path, &pin, &len, err, sizeof(err)), 0);
    ck_assert_ptr_null(pin);
    snprintf(want, sizeof(want), "PIN file %s is empty; write the user PIN on its first line",
             path);
    ck_assert_str_eq(err, want);
    unlink(path);

    ck_assert_int_eq(p11psk_pin_read("file:/nonexistent/pin", &pin, &len, err, sizeof(err)), 0);
    ck_assert_str_eq(err, "cannot read PIN file /nonexistent/pin: No such file or directory; fix "
                          "pin-source or the file's permissions");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, defaults);
    tcase_add_test(tc, shipped_file);
    tcase_add_test(tc, every_key);
    tcase_add_test(tc, syntax_variants);
    tcase_add_test(tc, pin_source_from_uri);
    tcase_add_loop_test(tc, bad_line_names_file_line, 0, sizeof(bad_lines) / sizeof(bad_lines[0]));
    tcase_add_test(tc, bad_token_uri);
    tcase_add_test(tc, unknown_key);
    tcase_add_test(tc, line_too_long);
    tcase_add_test(tc, missing_file);
    tcase_add_test(tc, config_path);
    tcase_add_test(tc, pin_read);
    tcase_add_test(tc, unsafe_files);
    suite_add_tcase(s, tc);
    return p11psk_unit_run(s);
}
