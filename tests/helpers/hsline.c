/* SPDX-License-Identifier: Apache-2.0 */
/*
 * p11psk-hsline: one in-process TLS 1.3 PSK handshake (tests/helpers/hs.c) per line read on
 * stdin, in a process that stays up between lines, so a test can change keys between two
 * handshakes of the same process and see what it does next.
 *
 * Input lines:  CLIENT_PSK_HEX SERVER_PSK_HEX   (raw keys or p11psk handles)
 * Output lines: "ok" or "fail: <first OpenSSL error>", one per input line.
 * "pid" prints the process id. EOF ends the program: exit 0, or 1 if a handshake failed.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "hs.h"
#include "p11psk/handle.h"

#define HSLINE_MAX (4 * P11PSK_HS_PSK_MAX + 16)

/* Parses "CLIENT SERVER" into cfg; 0, or -1 with a reason printed as the answer. */
static int hsline_parse(char *line, p11psk_hs_config *cfg)
{
    char *c = strtok(line, " \t\r\n"), *s = strtok(NULL, " \t\r\n");
    long cn, sn;

    if (c == NULL || s == NULL || strtok(NULL, " \t\r\n") != NULL) {
        printf("fail: expected CLIENT_PSK_HEX SERVER_PSK_HEX\n");
        return -1;
    }
    cn = p11psk_hex_decode(c, cfg->client_psk, sizeof(cfg->client_psk));
    sn = p11psk_hex_decode(s, cfg->server_psk, sizeof(cfg->server_psk));
    if (cn <= 0 || sn <= 0) {
        printf("fail: a PSK is not hex of 1..%d bytes\n", P11PSK_HS_PSK_MAX);
        return -1;
    }
    cfg->client_psk_len = (size_t)cn;
    cfg->server_psk_len = (size_t)sn;
    return 0;
}

int main(void)
{
    static char line[HSLINE_MAX];
    p11psk_hs_config cfg;
    p11psk_hs *hs;
    char err[512];
    int failed = 0;

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!OPENSSL_init_ssl(OPENSSL_INIT_LOAD_CONFIG, NULL)) {
        ERR_print_errors_fp(stderr);
        return 2;
    }
    while (fgets(line, sizeof(line), stdin) != NULL) {
        if (strcmp(line, "pid\n") == 0) {
            printf("%ld\n", (long)getpid());
            continue;
        }
        memset(&cfg, 0, sizeof(cfg));
        cfg.tls13 = 1;
        snprintf(cfg.identity, sizeof(cfg.identity), "Client_identity");
        if (hsline_parse(line, &cfg) != 0) {
            failed = 1;
            continue;
        }
        OPENSSL_cleanse(line, sizeof(line));
        hs = p11psk_hs_new(&cfg, err, sizeof(err));
        OPENSSL_cleanse(&cfg, sizeof(cfg));
        if (hs == NULL || !p11psk_hs_run(hs, err, sizeof(err))) {
            printf("fail: %s\n", err);
            failed = 1;
        } else {
            printf("ok\n");
        }
        p11psk_hs_free(hs);
    }
    return failed;
}
