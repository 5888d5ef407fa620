/* check_main.h - the end of every test program's main(): run the suite
 * with check's default (forking) runner and turn the result into an exit
 * code. Header-only, so unit tests need not link the integration harness. */
#ifndef M2A_TEST_CHECK_MAIN_H
#define M2A_TEST_CHECK_MAIN_H

#include <check.h>
#include <stdlib.h>

/* Runs every test of s (and frees the runner); returns how many failed. */
static inline int m2a_check_failures(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed;
}

/* The same as main()'s exit status. */
static inline int m2a_check_run(Suite *s)
{
    return m2a_check_failures(s) ? EXIT_FAILURE : EXIT_SUCCESS;
}

#endif
