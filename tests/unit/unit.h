/* SPDX-License-Identifier: Apache-2.0 */
/* What every check suite's main() does once its cases are added. */
#ifndef P11PSK_TESTS_UNIT_H
#define P11PSK_TESTS_UNIT_H

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

/* Runs s (CK_NORMAL output) and returns the process exit status. */
static inline int p11psk_unit_run(Suite *s)
{
    SRunner *sr = srunner_create(s);
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

/*
 * A SoftHSM2 of its own for a suite: dir is a mkdtemp template (filled in); makes
 * DIR/tokens and DIR/softhsm2.conf and points SOFTHSM2_CONF there. Returns 1, or 0 on
 * failure. *made says whether dir exists, for p11psk_unit_softhsm_remove.
 */
static inline int p11psk_unit_softhsm_dir(char *dir, int *made)
{
    char path[256];
    FILE *f;

    *made = 0;
    if (mkdtemp(dir) == NULL)
        return 0;
    *made = 1;
    snprintf(path, sizeof(path), "%s/tokens", dir);
    if (mkdir(path, 0700) != 0)
        return 0;
    snprintf(path, sizeof(path), "%s/softhsm2.conf", dir);
    if ((f = fopen(path, "w")) == NULL)
        return 0;
    fprintf(f, "directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n",
            dir);
    fclose(f);
    setenv("SOFTHSM2_CONF", path, 1);
    return 1;
}

/* Removes what p11psk_unit_softhsm_dir made. */
static inline void p11psk_unit_softhsm_remove(const char *dir, int made)
{
    char cmd[300];

    if (!made)
        return;
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
}

#endif
