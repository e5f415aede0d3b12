/* SPDX-License-Identifier: Apache-2.0 */
/* p11pskd: serves TLS PSK derivations from keys that stay in a PKCS#11 token. */
#define _GNU_SOURCE /* pipe2 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <openssl/crypto.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "checkconf.h"
#include "config.h"
#include "keychange.h"
#include "ladder.h"
#include "log.h"
#include "server.h"
#include "token.h"

#define P11PSK_SECURE_HEAP (4 * 1024 * 1024) /* PINs, key values, the cache */
/* Exit status when a restart cannot help and could hurt: the token refused the PIN (another
 * try counts towards locking it) or a config or PIN file is unsafe. p11pskd.service lists
 * it in RestartPreventExitStatus=. Like EX_CONFIG of sysexits.h. */
#define P11PSKD_EXIT_NO_RESTART 78

static void usage(FILE *f)
{
    fprintf(f, "Usage: p11pskd [--config FILE] [--foreground] [--check-config] [--help] "
               "[--version]\n"
               "\n"
               "Serves TLS pre-shared-key derivations to the p11psk OpenSSL provider from keys\n"
               "kept in a PKCS#11 token.\n"
               "\n"
               "  -c, --config FILE  configuration file (default $" P11PSK_CONF_ENV
               " or " P11PSK_DEFAULT_CONF ")\n"
               "  -f, --foreground   stay in the foreground and log to stderr\n"
               "  -t, --check-config check the configuration (ACL users and groups, PIN file,\n"
               "                     module) without opening the token or the socket; print\n"
               "                     each problem as FILE:LINE: message, exit 1 if any\n"
               "  -h, --help         show this help\n"
               "  -V, --version      show the version\n");
}

/* Startup result channel from the daemonized child to the waiting parent: "OK", or the
 * exit status as one byte followed by the message. */
static int ready_fd = -1;

static void startup_done(const char *errmsg, int status)
{
    char msg[600];

    if (ready_fd < 0)
        return;
    if (errmsg == NULL)
        snprintf(msg, sizeof(msg), "OK");
    else
        snprintf(msg, sizeof(msg), "%c%s", (char)status, errmsg);
    if (write(ready_fd, msg, strlen(msg)) < 0) {
        /* the parent is gone; nothing else to tell */
    }
    close(ready_fd);
    ready_fd = -1;
}

/* Double fork before the PKCS#11 module is loaded; the parent exits once the daemon is
 * serving (0) or has failed (the daemon's exit status, with its message on stderr). */
static void daemonize(void)
{
    char buf[600];
    size_t n = 0;
    ssize_t r;
    int pfd[2], fd;
    pid_t pid;

    if (pipe2(pfd, O_CLOEXEC) != 0) {
        fprintf(stderr, "p11pskd: pipe: %s\n", strerror(errno));
        exit(1);
    }
    if ((pid = fork()) < 0) {
        fprintf(stderr, "p11pskd: fork: %s\n", strerror(errno));
        exit(1);
    }
    if (pid > 0) {
        close(pfd[1]);
        waitpid(pid, NULL, 0);
        while (n < sizeof(buf) - 1 && (r = read(pfd[0], buf + n, sizeof(buf) - 1 - n)) != 0) {
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0)
                break;
            n += (size_t)r;
        }
        buf[n] = '\0';
        if (strcmp(buf, "OK") == 0)
            exit(0);
        fprintf(stderr, "p11pskd: %s\n",
                n > 1 ? buf + 1 : "daemon exited during startup; see the system log");
        exit(n > 1 ? (unsigned char)buf[0] : 1);
    }
    close(pfd[0]);
    setsid();
    if ((pid = fork()) < 0)
        _exit(1);
    if (pid > 0)
        _exit(0);
    ready_fd = pfd[1];
    if (chdir("/") != 0) {
        /* "/" always exists */
    }
    if ((fd = open("/dev/null", O_RDWR)) >= 0) {
        dup2(fd, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        if (fd > 2)
            close(fd);
    }
}

/* No core dumps and no ptrace by the same uid; PINs and key values go to OpenSSL's
 * secure heap, which is locked in RAM and left out of dumps. */
static void harden_memory(void)
{
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
        p11psk_log(P11PSK_LOG_WARN, "prctl(PR_SET_DUMPABLE, 0): %s", strerror(errno));
    if (CRYPTO_secure_malloc_init(P11PSK_SECURE_HEAP, 16) == 0)
        p11psk_log(P11PSK_LOG_WARN,
                   "cannot set up a locked secure heap of %d KiB; raise LimitMEMLOCK / "
                   "RLIMIT_MEMLOCK so that key values cannot be swapped out",
                   P11PSK_SECURE_HEAP / 1024);
}

/* systemd socket activation (the sd_listen_fds protocol): one unix stream socket at fd 3.
 * Returns the fd, -1 when not activated, -2 on a bad hand-over (err set). */
static int activated_socket(char *err, size_t errlen)
{
    const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");
    int fd = 3, type = 0, listening = 0, fl;
    socklen_t len = sizeof(int);
    struct sockaddr_un sa;
    socklen_t salen = sizeof(sa);

    if (pid == NULL || fds == NULL || strtol(pid, NULL, 10) != (long)getpid())
        return -1;
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    if (strcmp(fds, "1") != 0) {
        snprintf(err, errlen,
                 "systemd passed %s sockets; p11pskd.socket must have exactly one "
                 "ListenStream=",
                 fds);
        return -2;
    }
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM ||
        getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 || !listening ||
        getsockname(fd, (struct sockaddr *)&sa, &salen) != 0 || sa.sun_family != AF_UNIX) {
        snprintf(err, errlen,
                 "the socket from systemd is not a listening unix stream socket; use "
                 "ListenStream=/run/p11psk/p11psk.sock");
        return -2;
    }
    fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    return fd;
}

/* Tells systemd (Type=notify) about startup and shutdown; nothing without NOTIFY_SOCKET. */
static void sd_notify_msg(const char *msg)
{
    const char *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un sa;
    socklen_t salen;
    size_t n;
    int fd;

    if (path == NULL || (path[0] != '/' && path[0] != '@') ||
        (n = strlen(path)) >= sizeof(sa.sun_path))
        return;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, n);
    if (path[0] == '@')
        sa.sun_path[0] = '\0'; /* abstract namespace */
    salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    if ((fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)) < 0)
        return;
    if (sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sa, salen) < 0) {
        /* systemd will time the start out and say so */
    }
    close(fd);
}

/* STATUS= for `systemctl status`; kept to one line. */
static char status_line[400];

static void notify_status(const char *state, const char *status)
{
    char msg[600];
    size_t i, n;

    n = (size_t)snprintf(msg, sizeof(msg), "%sSTATUS=", state);
    /* A newline in a token label or a path would start another assignment. */
    for (i = 0; status[i] != '\0' && n < sizeof(msg) - 1; i++, n++)
        msg[n] = (unsigned char)status[i] < 0x20 ? '?' : status[i];
    msg[n] = '\0';
    sd_notify_msg(msg);
}

/* systemd 253+ wants MONOTONIC_USEC= with RELOADING=1 to tell reloads apart; 252 ignores it. */
static void on_reload(int done, const char *err)
{
    struct timespec ts;
    char msg[700];

    if (!done) {
        clock_gettime(CLOCK_MONOTONIC, &ts);
        snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=reloading",
                 (unsigned long long)ts.tv_sec * 1000000ULL +
                     (unsigned long long)ts.tv_nsec / 1000ULL);
        sd_notify_msg(msg);
    } else if (err != NULL) {
        snprintf(msg, sizeof(msg), "reload refused, running the previous configuration: %s", err);
        notify_status("READY=1\n", msg);
    } else {
        notify_status("READY=1\n", status_line);
    }
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"foreground", no_argument, NULL, 'f'},
        {"check-config", no_argument, NULL, 't'}, {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},      {NULL, 0, NULL, 0},
    };
    const char *conf_arg = NULL;
    char err[512];
    p11psk_token_params prm;
    p11psk_config cfg;
    p11psk_token *tok = NULL;
    p11psk_ladder *lad = NULL;
    p11psk_cache *cache = NULL;
    p11psk_err terr;
    size_t nkeys = 0;
    int fg = 0, check = 0, have_nkeys = 0, opt, lfd, rc = 1, activated = 0;

    /* The global openssl.cnf may load the p11psk provider; this process never needs it. */
    OPENSSL_init_crypto(OPENSSL_INIT_NO_LOAD_CONFIG, NULL);
    while ((opt = getopt_long(argc, argv, "c:fthV", opts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            conf_arg = optarg;
            break;
        case 'f':
            fg = 1;
            break;
        case 't':
            check = 1;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("p11pskd %s\n", P11PSK_VERSION);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "p11pskd: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (check)
        return p11psk_check_config(p11psk_config_path(conf_arg)) ? 0 : 1;
    if (!p11psk_config_load(p11psk_config_path(conf_arg), &cfg, err, sizeof(err))) {
        fprintf(stderr, "p11pskd: %s\n", err);
        return 1;
    }
    if (p11psk_config_check_files(&cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "p11pskd: %s\n", err);
        p11psk_config_free(&cfg);
        return P11PSKD_EXIT_NO_RESTART;
    }
    signal(SIGPIPE, SIG_IGN);
    if (!fg)
        daemonize();
    p11psk_log_open("p11pskd", !fg, cfg.log_level);
    harden_memory();

    lfd = activated_socket(err, sizeof(err));
    activated = lfd >= 0;
    if (lfd == -2 || (!activated && (lfd = p11psk_server_listen(&cfg, err, sizeof(err))) < 0)) {
        lfd = -1;
        p11psk_log(P11PSK_LOG_ERROR, "%s", err);
        startup_done(err, 1);
        goto out;
    }
    if ((lad = p11psk_ladder_new()) == NULL) {
        snprintf(err, sizeof(err), "cannot set up OpenSSL (default provider, TLS13-KDF)");
        goto fail;
    }
    if ((cache = p11psk_cache_new(cfg.cache ? cfg.cache_size : 0, cfg.cache_ttl_s)) == NULL) {
        snprintf(err, sizeof(err), "out of memory");
        goto fail;
    }
    p11psk_ladder_set_cache(lad, cache);
    p11psk_keychange_init(cache);
    p11psk_token_params_from_config(&prm, &cfg);
    prm.sessions = p11psk_server_threads(&cfg); /* one per worker: nobody waits */
    if (p11psk_token_open(&prm, &tok, &terr) != P11PSK_ST_OK) {
        snprintf(err, sizeof(err), "%s (config %s)", terr.msg, cfg.path);
        if (terr.status == P11PSK_ST_TOKEN && p11psk_ckr_pin_refused(terr.ckr))
            rc = P11PSKD_EXIT_NO_RESTART;
        goto fail;
    }
    p11psk_token_set_revalidate(tok, cfg.revalidate_ms, cfg.revalidate_value_ms);
    {
        struct timespec t0, t1;

        clock_gettime(CLOCK_MONOTONIC, &t0);
        if (p11psk_token_prefetch(tok, &nkeys, &terr) == P11PSK_ST_OK) {
            have_nkeys = 1;
            clock_gettime(CLOCK_MONOTONIC, &t1);
            p11psk_log(
                P11PSK_LOG_INFO, "%zu keys in token '%s' (looked up in %ld ms)", nkeys,
                p11psk_token_label(tok),
                (long)((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000));
        } else {
            p11psk_log(P11PSK_LOG_WARN, "cannot list the token's keys: %s", terr.msg);
        }
    }
    p11psk_log(P11PSK_LOG_INFO,
               "p11pskd %s serving module %s, token '%s', socket %s%s (%zu allow "
               "rules)",
               P11PSK_VERSION, p11psk_token_module(tok), p11psk_token_label(tok), cfg.socket,
               activated ? " (from systemd)" : "", cfg.acl.n);
    if (cfg.acl.n == 0)
        p11psk_log(P11PSK_LOG_WARN, "no allow rules in %s: every key request will be refused",
                   cfg.path);
    startup_done(NULL, 0);
    if (have_nkeys)
        snprintf(status_line, sizeof(status_line), "serving token '%s' (%zu keys) on %s",
                 p11psk_token_label(tok), nkeys, cfg.socket);
    else
        snprintf(status_line, sizeof(status_line), "serving token '%s' on %s",
                 p11psk_token_label(tok), cfg.socket);
    notify_status("READY=1\n", status_line);
    p11psk_server_set_reload_hook(on_reload);
    rc = p11psk_server_run(&cfg, tok, lad, cache, lfd) == 0 ? 0 : 1;
    sd_notify_msg("STOPPING=1");
    goto cleanup;
fail:
    if (rc == P11PSKD_EXIT_NO_RESTART)
        snprintf(err + strlen(err), sizeof(err) - strlen(err),
                 "; at start: exit status %d, which p11pskd.service does not restart (start "
                 "p11pskd again once the PIN is fixed)",
                 P11PSKD_EXIT_NO_RESTART);
    p11psk_log(P11PSK_LOG_ERROR, "%s", err);
    notify_status("", err);
    startup_done(err, rc);
cleanup:
    close(lfd);
    if (!activated) /* systemd owns an activated socket's file */
        unlink(cfg.socket);
out:
    p11psk_token_close(tok);
    p11psk_ladder_free(lad);
    p11psk_cache_free(cache);
    p11psk_log(P11PSK_LOG_INFO, "p11pskd stopped");
    p11psk_log_close();
    p11psk_config_free(&cfg);
    return rc;
}
