/* fuzz_config.c - libFuzzer target for the config loader
 * (m2a_config_load_buffer): any bytes must give either a config or a
 * "NAME:LINE:COLUMN: message" error, never a crash, a leak or a read out of
 * bounds.
 *
 * Properties checked beyond "no sanitizer report":
 *  - a failure leaves *out NULL and writes a message that starts with the
 *    name and a 1-based position inside the input;
 *  - a config the loader accepts compiles into a route table (the loader
 *    promises to reject bad filters and templates itself, with a position,
 *    so the bridge never fails later with a message that has none);
 *  - every name it accepts that travels as an AMQP short string fits one
 *    (255 bytes): the envelope encoder aborts on a longer one (issue 9).
 *
 * Single-threaded (libFuzzer's thread). */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "fuzz.h"
#include "mqtt2amqp/config.h"
#include "mqtt2amqp/routes.h"

#define NAME "fuzz.yaml"

/* An upper bound on the lines libyaml can count: it also breaks lines at
 * '\r', NEL (C2 85) and U+2028/U+2029 (E2 80 A8/A9). */
static size_t max_lines(const uint8_t *data, size_t size)
{
    size_t n = 1;
    for (size_t i = 0; i < size; i++)
        n += data[i] == '\n' || data[i] == '\r' || data[i] == 0x85 || data[i] == 0xA8 ||
             data[i] == 0xA9;
    return n;
}

static void check_error(const uint8_t *data, size_t size, const char *err)
{
    int line = 0, col = 0, used = 0;
    int n = sscanf(err, NAME ":%d:%d: %n", &line, &col, &used);
    FUZZ_CHECK(n == 2 && used > 0, "error without a position: \"%s\"", err);
    FUZZ_CHECK(line >= 1 && (size_t)line <= max_lines(data, size), "line %d out of range: \"%s\"",
               line, err);
    FUZZ_CHECK(col >= 1 && (size_t)col <= size + 1, "column %d out of range: \"%s\"", col, err);
    FUZZ_CHECK(err[used] != '\0', "error with an empty message: \"%s\"", err);
}

static void check_short(const char *s, const char *what)
{
    FUZZ_CHECK(!s || strlen(s) <= M2A_AMQP_SHORTSTR_MAX, "%s of %zu bytes accepted", what,
               strlen(s));
}

static void check_short_strings(const struct m2a_config *cfg)
{
    const struct m2a_conf_amqp *a = &cfg->amqp;
    check_short(a->vhost, "vhost");
    check_short(cfg->dead_letter.exchange, "dead_letter.exchange");
    for (size_t i = 0; i < a->nexchanges; i++) {
        check_short(a->exchanges[i].name, "exchange name");
        check_short(a->exchanges[i].type, "exchange type");
    }
    for (size_t i = 0; i < a->nqueues; i++) {
        check_short(a->queues[i].name, "queue name");
        for (size_t j = 0; j < a->queues[i].nbindings; j++)
            check_short(a->queues[i].bindings[j].routing_key, "binding key");
    }
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const struct m2a_conf_route *r = &cfg->routes[i];
        check_short(r->name, "route name");
        check_short(r->exchange, "route exchange");
        check_short(r->content_type, "content_type");
        for (size_t j = 0; j < r->nheaders; j++)
            check_short(r->headers[j].key, "header name");
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    /* Give ${VAR} expansion something to find besides the usual environment. */
    setenv("MQTT_HOST", "mosquitto", 1);
    setenv("AMQP_PORT", "5672", 1);
    setenv("FUZZ_EMPTY", "", 1);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct m2a_config *cfg = (struct m2a_config *)1; /* must be overwritten */
    char err[1024];
    memset(err, 'x', sizeof(err));
    int rc = m2a_config_load_buffer(NAME, (const char *)data, size, &cfg, err, sizeof(err));
    FUZZ_CHECK(memchr(err, '\0', sizeof(err)) != NULL, "error buffer not terminated");
    if (rc != 0) {
        FUZZ_CHECK(rc < 0, "positive return code %d", rc);
        FUZZ_CHECK(cfg == NULL, "failure left a config behind");
        check_error(data, size, err);
        return 0;
    }
    FUZZ_CHECK(cfg != NULL, "success without a config");
    check_short_strings(cfg);
    struct m2a_routes *rt = NULL;
    char cerr[512] = "";
    rc = m2a_routes_compile(cfg, NULL, &rt, cerr, sizeof(cerr));
    FUZZ_CHECK(rc == 0, "the loader accepted routes that do not compile: %s", cerr);
    FUZZ_CHECK(m2a_routes_count(rt) == cfg->nroutes, "%zu routes compiled from %zu",
               m2a_routes_count(rt), cfg->nroutes);
    m2a_routes_free(rt);
    m2a_config_free(cfg);
    return 0;
}
