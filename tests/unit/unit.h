/* SPDX-License-Identifier: Apache-2.0 */
/* What every check suite's main() does once its cases are added. */
#ifndef P11PSK_TESTS_UNIT_H
#define P11PSK_TESTS_UNIT_H

#include <check.h>
#include <stdlib.h>

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

#endif
