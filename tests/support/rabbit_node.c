/* rabbit_node.c - a private RabbitMQ node for a test program (see
 * rabbit_node.h): the script does the work; this keeps its directory and
 * port. Main thread only. */
#include "rabbit_node.h"

#include <stdio.h>
#include <stdlib.h>

#include "harness.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/util.h"

int th_rabbit_node_do(struct th_rabbit_node *n, const char *verb)
{
    struct th_run_result r;
    uint64_t t0 = m2a_now_ms();
    int rc = th_rabbit_script(verb, n->dir, NULL, &r);
    fprintf(stderr, "rabbit_node: %s %s: exit %d in %.1f s\n%s", verb, n->dir, r.exit_code,
            (double)(m2a_now_ms() - t0) / 1000.0, rc ? r.err : "");
    th_run_result_free(&r);
    return rc;
}

struct th_rabbit_node *th_rabbit_node_start(const char *name, const char *extra_conf)
{
    struct th_rabbit_node *n = xcalloc(1, sizeof(*n));
    n->dir = xasprintf("%s/rabbitmq-%s", M2A_TEST_STATE, name);
    char *conf = NULL;
    int rc = 0;
    if (extra_conf) {
        conf = xasprintf("%s.conf", n->dir);
        rc = th_write_file(conf, extra_conf);
        setenv("M2A_RABBIT_EXTRA_CONF", conf, 1); /* copied into the node's dir */
    }
    if (rc == 0)
        rc = th_rabbit_node_do(n, "start");
    unsetenv("M2A_RABBIT_EXTRA_CONF");
    free(conf);
    char *port = rc == 0 ? th_rabbit_env_get(n->dir, "AMQP_PORT") : NULL;
    n->amqp_port = port ? atoi(port) : 0;
    free(port);
    if (rc != 0 || n->amqp_port <= 0) {
        fprintf(stderr, "rabbit_node: %s did not start (logs in %s/log)\n", name, n->dir);
        th_rabbit_node_free(n);
        return NULL;
    }
    return n;
}

void th_rabbit_node_free(struct th_rabbit_node *n)
{
    if (!n)
        return;
    th_rabbit_node_do(n, "stop");
    free(n->dir);
    free(n);
}
