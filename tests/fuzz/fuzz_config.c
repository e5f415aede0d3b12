/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer harness: the p11pskd.conf parser (shared by the daemon and the CLI), which
 * takes a path, so each input is written to a memfd and loaded through /proc/self/fd/N.
 * A successful load must leave a configuration the daemon can use as it is.
 */
#define _GNU_SOURCE
#include <p11-kit/uri.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config.h"
#include "log.h"

#define CHECK(c) ((c) ? (void)0 : abort())

static int memfd = -1;
static char path[64];

static void check_config(const p11psk_config *cfg)
{
    size_t i;

    CHECK(cfg->path != NULL && strcmp(cfg->path, path) == 0);
    CHECK(cfg->module != NULL && cfg->module[0] != '\0');
    CHECK(cfg->socket != NULL && cfg->socket[0] == '/' && strlen(cfg->socket) < 108);
    CHECK((cfg->socket_mode & ~(mode_t)0777) == 0);
    CHECK(cfg->log_level >= P11PSK_LOG_ERROR && cfg->log_level <= P11PSK_LOG_DEBUG);
    if (cfg->has_socket_group)
        CHECK(cfg->socket_gid != (gid_t)-1); /* chown's "leave unchanged" */
    if (cfg->pin_source != NULL)
        CHECK(strncmp(cfg->pin_source, "file:/", 6) == 0 || cfg->pin_source[0] == '/');
    if (cfg->token_uri != NULL) {
        /* The daemon parses it again when it opens the token. p11-kit ignores whitespace
         * and the scheme's case, so "p kcs11:token=x" is a valid token URI. */
        P11KitUri *uri = p11_kit_uri_new();

        CHECK(uri != NULL);
        CHECK(p11_kit_uri_parse(cfg->token_uri, P11_KIT_URI_FOR_TOKEN, uri) == P11_KIT_URI_OK);
        p11_kit_uri_free(uri);
    }
    CHECK(cfg->acl.n <= cfg->acl.cap);
    for (i = 0; i < cfg->acl.n; i++) {
        const p11psk_acl_rule *r = &cfg->acl.rules[i];

        CHECK(r->glob != NULL && r->glob[0] != '\0');
        CHECK(memchr(r->where, '\0', sizeof(r->where)) != NULL);
        if (r->has_uid)
            CHECK(r->uid != (uid_t)-1);
        if (r->has_gid)
            CHECK(r->gid != (gid_t)-1);
    }
    CHECK(cfg->policy.digests != 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    p11psk_config cfg;

    if (memfd < 0) {
        memfd = memfd_create("p11psk-fuzz-config", MFD_CLOEXEC);
        CHECK(memfd >= 0);
        snprintf(path, sizeof(path), "/proc/self/fd/%d", memfd);
    }
    CHECK(ftruncate(memfd, 0) == 0);
    CHECK(pwrite(memfd, data, size, 0) == (ssize_t)size);
    err[0] = '\0';
    if (p11psk_config_load(path, &cfg, err, sizeof(err))) {
        check_config(&cfg);
        p11psk_config_free(&cfg);
    } else {
        /* A refusal always says why; a refused load frees everything itself. */
        CHECK(err[0] != '\0' && memchr(err, '\0', sizeof(err)) != NULL);
    }
    return 0;
}
