/* config_check.h - loading a configuration from text in a test, as the file
 * "t.yaml", and asserting (check) that it loads or that it is refused with
 * an exact message. For the unit tests of the loader and of whatever takes
 * a loaded configuration. Test-thread only: messages live in one static
 * buffer, valid until the next call. */
#ifndef M2A_TEST_CONFIG_CHECK_H
#define M2A_TEST_CONFIG_CHECK_H

#include "mqtt2amqp/config.h"

/* Loads yaml; asserts success (the message and the text on failure).
 * Caller frees with m2a_config_free. */
struct m2a_config *th_config_load(const char *yaml);
/* Asserts that yaml is refused with M2A_ERR_CONFIG and no config, with a
 * message that starts with prefix ("t.yaml:LINE:COLUMN: ...") and contains
 * fragment (unless NULL). Returns the message. */
const char *th_config_refuse(const char *yaml, const char *prefix, const char *fragment);
/* The loader's message for yaml, or "" if it loads (then freed at once). */
const char *th_config_error(const char *yaml);

#endif
