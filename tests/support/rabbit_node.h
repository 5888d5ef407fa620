/* rabbit_node.h - a private RabbitMQ node of a test's own, beside the
 * fixture's (scripts/test-rabbitmq.sh start DIR): a second, independent
 * node for the tests of amqp.hosts, or one with settings of its own
 * (M2A_RABBIT_EXTRA_CONF lines, e.g. "frame_max = 4096").
 *
 * Started once in a test program's main() (like tls.h's node) and shared
 * by its forked tests; killed and restarted by the recorded pid through the
 * script. Main-thread only, like harness.h. */
#ifndef M2A_TEST_RABBIT_NODE_H
#define M2A_TEST_RABBIT_NODE_H

struct th_rabbit_node {
    char *dir; /* M2A_TEST_STATE/rabbitmq-NAME */
    int amqp_port;
};

/* Starts a fresh node named by name (a word: it is in the directory name)
 * with extra_conf appended to its rabbitmq.conf (NULL: none). NULL on
 * failure (printed). */
struct th_rabbit_node *th_rabbit_node_start(const char *name, const char *extra_conf);
/* Runs the script's verb on the node: "kill" (SIGKILL), "restart" (same
 * ports and data), "stop_app", "start_app". 0 if the script succeeded. */
int th_rabbit_node_do(struct th_rabbit_node *n, const char *verb);
/* Stops the node and frees. NULL is a no-op. */
void th_rabbit_node_free(struct th_rabbit_node *n);

#endif
