/* main.c - the mqtt2amqp command line: run the bridge, --check a config,
 * --explain where a topic would be routed, or look inside the spool
 * (`spool ...`, spool_cli.c).
 *
 * Exit codes: 0 success, 1 runtime failure, 2 bad usage or configuration
 * (the message names file:line:column). */
#include <getopt.h>
#include <stdbool.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt2amqp/app.h"
#include "mqtt2amqp/config.h"
#include "mqtt2amqp/downlink_topic.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/generation.h"
#include "mqtt2amqp/routes.h"
#include "mqtt2amqp/spool_cli.h"
#include "mqtt2amqp/topic.h"
#include "mqtt2amqp/util.h"

#define DEFAULT_CONFIG "/etc/mqtt2amqp/mqtt2amqp.yaml"

static void usage(FILE *out)
{
    fprintf(
        out,
        "Usage: mqtt2amqp [-c FILE]             run the bridge\n"
        "       mqtt2amqp --check [-c FILE]     validate the configuration and exit\n"
        "       mqtt2amqp --explain TOPIC [-c FILE]\n"
        "                                       show where a message on TOPIC would go\n"
        "       mqtt2amqp --explain-downlink ROUTING_KEY [-H NAME=VALUE]... [-c FILE]\n"
        "                                       show the MQTT topic of each downlink\n"
        "       mqtt2amqp spool stat|dump|requeue-quarantine [-c FILE] ...\n"
        "                                       look inside the spool (mqtt2amqp spool --help)\n"
        "\n"
        "Options:\n"
        "  -c, --config FILE   configuration file (default " DEFAULT_CONFIG ")\n"
        "  -k, --check         validate FILE: exit 0 if valid, 2 with file:line:column if not\n"
        "  -e, --explain TOPIC print each route that matches TOPIC with its exchange,\n"
        "                      routing key and headers, or say that none does\n"
        "  -d, --explain-downlink ROUTING_KEY\n"
        "                      print the MQTT topic each downlink would publish an AMQP\n"
        "                      message with this routing key to, or why it would reject it\n"
        "  -H, --header NAME=VALUE\n"
        "                      a string header of that message (repeatable, up to 16)\n"
        "  -h, --help          print this help and exit\n"
        "  -V, --version       print the version and exit\n"
        "\n"
        "Signals: SIGTERM/SIGINT stop reading MQTT, wait up to shutdown_timeout for\n"
        "confirms and exit 0; unconfirmed messages stay in the spool.\n"
        "Exit codes: 0 success, 1 runtime failure, 2 bad usage or configuration.\n");
}

struct explain_ctx {
    size_t matched;
    enum m2a_mqtt_headers mqtt_headers;
};

static void print_str(const char *label, struct m2a_str s)
{
    printf("  %-13s %.*s\n", label, (int)s.len, s.ptr);
}

static void explain_cb(void *ud, size_t route_index, const struct m2a_envelope *env, int err)
{
    struct explain_ctx *ctx = ud;
    ctx->matched++;
    (void)route_index;
    printf("route %.*s\n", (int)env->route.len, env->route.ptr);
    print_str("exchange:", env->exchange.len ? env->exchange : (struct m2a_str){"(default)", 9});
    if (err) {
        printf("  error:        %s: the message would be counted as a routing error\n",
               m2a_strerror(err));
        return;
    }
    print_str("routing key:", env->routing_key);
    printf("  persistent:   %s\n", env->persistent ? "yes" : "no");
    if (env->content_type.len)
        print_str("content type:", env->content_type);
    printf("  headers:     ");
    if (ctx->mqtt_headers != M2A_MQTT_HEADERS_NONE)
        printf(" x-mqtt-topic=%.*s", (int)env->topic.len, env->topic.ptr);
    if (ctx->mqtt_headers == M2A_MQTT_HEADERS_ALL)
        printf(" x-mqtt-qos=%d x-mqtt-retain=%s", env->qos, env->retain ? "true" : "false");
    for (size_t i = 0; i < env->nheaders; i++)
        printf(" %.*s=%.*s", (int)env->headers[i].key.len, env->headers[i].key.ptr,
               (int)env->headers[i].value.len, env->headers[i].value.ptr);
    printf("\n");
}

#define MAX_EXPLAIN_HEADERS 16

/* For each downlink: the topic a message with routing key key and the
 * headers hv ("NAME=VALUE" strings) would get, or why it would be rejected. */
static int explain_downlink(const struct m2a_config *cfg, const char *key, char **hv, int nh)
{
    amqp_table_entry_t e[MAX_EXPLAIN_HEADERS];
    for (int i = 0; i < nh; i++) {
        char *eq = strchr(hv[i], '=');
        if (!eq) {
            fprintf(stderr, "mqtt2amqp: --header '%s' is not NAME=VALUE\n", hv[i]);
            return M2A_EXIT_CONFIG;
        }
        e[i].key = (amqp_bytes_t){(size_t)(eq - hv[i]), hv[i]};
        e[i].value.kind = AMQP_FIELD_KIND_UTF8;
        e[i].value.value.bytes = amqp_cstring_bytes(eq + 1);
    }
    amqp_table_t headers = {nh, e};
    if (!cfg->ndownlinks)
        printf("no downlinks in the configuration\n");
    struct m2a_buf topic = {0};
    for (size_t i = 0; i < cfg->ndownlinks; i++) {
        const struct m2a_conf_downlink *d = &cfg->downlinks[i];
        struct m2a_downlink_topic *t = NULL;
        char why[256] = "";
        printf("downlink %s (queue %s)\n", d->name, d->queue);
        if (m2a_downlink_topic_compile(d->topic, &t, why, sizeof(why)) == 0 &&
            m2a_downlink_topic_render(t, key, strlen(key), &headers, &topic, why, sizeof(why)) == 0)
            printf("  topic:        %s\n  qos:          %d\n  retain:       %s\n",
                   (const char *)topic.data, d->qos,
                   d->retain == M2A_DOWNLINK_RETAIN_TRUE          ? "true"
                   : d->retain == M2A_DOWNLINK_RETAIN_FROM_HEADER ? "from x-mqtt-retain"
                                                                  : "false");
        else
            printf("  rejected:     %s (to the queue's dead-letter exchange)\n", why);
        m2a_downlink_topic_free(t);
    }
    m2a_buf_free(&topic);
    return M2A_EXIT_OK;
}

/* Both commands build the generation the bridge would run (without a
 * route registry: no counters), so they accept exactly what it accepts. */
static int explain(const struct m2a_generation *g, const char *topic)
{
    if (m2a_topic_validate(topic, strlen(topic)) != 0) {
        fprintf(stderr, "mqtt2amqp: '%s' is not a valid MQTT topic name (no wildcards)\n", topic);
        return M2A_EXIT_CONFIG;
    }
    struct m2a_routes_scratch *scratch = m2a_routes_scratch_new();
    struct m2a_mqtt_msg msg = {.topic = topic,
                               .topic_len = strlen(topic),
                               .payload = "",
                               .payload_len = 0,
                               .qos = 1,
                               .retain = false,
                               .timestamp_ms = m2a_wall_s() * 1000u};
    struct explain_ctx ctx = {.mqtt_headers = m2a_generation_mqtt_headers(g)};
    m2a_routes_map(m2a_generation_routes(g), &msg, scratch, explain_cb, &ctx);
    if (ctx.matched == 0)
        printf("no route matches topic '%s'\n", topic);
    m2a_routes_scratch_free(scratch);
    return M2A_EXIT_OK;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"check", no_argument, NULL, 'k'},
                                         {"explain", required_argument, NULL, 'e'},
                                         {"help", no_argument, NULL, 'h'},
                                         {"explain-downlink", required_argument, NULL, 'd'},
                                         {"header", required_argument, NULL, 'H'},
                                         {"version", no_argument, NULL, 'V'},
                                         {NULL, 0, NULL, 0}};
    const char *path = DEFAULT_CONFIG, *topic = NULL, *dkey = NULL;
    char *hv[MAX_EXPLAIN_HEADERS];
    int nh = 0;
    bool check = false;
    int c;

    if (argc > 1 && strcmp(argv[1], "spool") == 0)
        return m2a_spool_cli_main(argc - 1, argv + 1, DEFAULT_CONFIG);

    while ((c = getopt_long(argc, argv, "c:ke:d:H:hV", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            path = optarg;
            break;
        case 'k':
            check = true;
            break;
        case 'e':
            topic = optarg;
            break;
        case 'd':
            dkey = optarg;
            break;
        case 'H':
            if (nh == MAX_EXPLAIN_HEADERS) {
                fprintf(stderr, "mqtt2amqp: at most %d --header\n", MAX_EXPLAIN_HEADERS);
                return M2A_EXIT_CONFIG;
            }
            hv[nh++] = optarg;
            break;
        case 'h':
            usage(stdout);
            return M2A_EXIT_OK;
        case 'V':
            printf("mqtt2amqp %s\n", M2A_VERSION);
            return M2A_EXIT_OK;
        default:
            usage(stderr);
            return M2A_EXIT_CONFIG;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "mqtt2amqp: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return M2A_EXIT_CONFIG;
    }

    if (!topic && !check && !dkey) {
        /* The bridge's stop and reload signals are taken by the signalfd of
         * m2a_app_run; blocked from here, so that one sent while the
         * configuration loads waits for it instead of killing the process
         * (a stop during start-up is a clean stop). */
        sigset_t stop;
        sigemptyset(&stop);
        sigaddset(&stop, SIGTERM);
        sigaddset(&stop, SIGINT);
        sigaddset(&stop, SIGHUP);
        sigprocmask(SIG_BLOCK, &stop, NULL);
    }

    char err[1024];
    struct m2a_config *cfg = NULL;
    if (m2a_config_load(path, &cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s\n", err);
        return M2A_EXIT_CONFIG;
    }
    if (dkey) {
        int drc = explain_downlink(cfg, dkey, hv, nh);
        m2a_config_free(cfg);
        return drc;
    }
    if (!topic && !check)
        return m2a_app_run(cfg); /* takes cfg */
    size_t cfg_downlinks = cfg->ndownlinks;
    struct m2a_generation *g = NULL;
    if (m2a_generation_new(cfg, NULL, NULL, &g, err, sizeof(err)) != 0) { /* takes cfg */
        fprintf(stderr, "%s\n", err);
        return M2A_EXIT_CONFIG;
    }
    int rc = M2A_EXIT_OK;
    if (topic) {
        rc = explain(g, topic);
    } else {
        const struct m2a_routes *routes = m2a_generation_routes(g);
        printf("%s: OK (%zu routes, %zu subscriptions, %zu downlinks)\n", path,
               m2a_routes_count(routes), m2a_routes_nsubscriptions(routes), cfg_downlinks);
    }
    m2a_generation_unref(g);
    return rc;
}
