/* config_check.c - configurations from text for the tests; see
 * config_check.h. Test-thread only (one static message buffer). */
#include "config_check.h"

#include <check.h>
#include <string.h>

#include "mqtt2amqp/err.h"

#define NAME "t.yaml"

static char err[1024];

struct m2a_config *th_config_load(const char *yaml)
{
    struct m2a_config *cfg = NULL;
    err[0] = '\0';
    int rc = m2a_config_load_buffer(NAME, yaml, strlen(yaml), &cfg, err, sizeof(err));
    ck_assert_msg(rc == 0, "unexpected error: %s\nfor:\n%s", err, yaml);
    ck_assert_ptr_nonnull(cfg);
    return cfg;
}

const char *th_config_refuse(const char *yaml, const char *prefix, const char *fragment)
{
    struct m2a_config *cfg = (struct m2a_config *)&cfg; /* must become NULL */
    err[0] = 'x';                                       /* must be overwritten */
    int rc = m2a_config_load_buffer(NAME, yaml, strlen(yaml), &cfg, err, sizeof(err));
    ck_assert_msg(rc == M2A_ERR_CONFIG, "rc %d for:\n%s\nerr: %s", rc, yaml, err);
    ck_assert_ptr_null(cfg);
    ck_assert_msg(!strncmp(err, prefix, strlen(prefix)), "got '%s', want prefix '%s'", err, prefix);
    if (fragment)
        ck_assert_msg(strstr(err, fragment), "got '%s', want '%s' in it", err, fragment);
    return err;
}

const char *th_config_error(const char *yaml)
{
    struct m2a_config *cfg = NULL;
    err[0] = '\0';
    int rc = m2a_config_load_buffer(NAME, yaml, strlen(yaml), &cfg, err, sizeof(err));
    m2a_config_free(cfg);
    return rc == 0 ? "" : err;
}
