/* tls.h - TLS test fixtures: certificates made with the openssl CLI, a
 * Mosquitto with TLS listeners, and a private RabbitMQ node with TLS
 * listeners (the shared fixture node has none).
 *
 * Two loopback addresses serve every TLS port: 127.0.0.1, which the server
 * certificate names (with DNS "localhost"), and 127.0.0.2, which it does
 * not: connecting to 127.0.0.2 is the "wrong host name" case. Both brokers
 * require a client certificate signed by the test CA.
 *
 * Main-thread only, like harness.h. Processes are killed by pid. */
#ifndef M2A_TEST_TLS_H
#define M2A_TEST_TLS_H

#include "harness.h"

struct th_certs {
    char *dir;
    char *ca;     /* the test CA (PEM), "CN=m2a test CA" */
    char *server; /* CN=localhost, SAN DNS:localhost, IP:127.0.0.1; signed by ca */
    char *server_key;
    char *client; /* CN=mqtt2amqp, clientAuth; signed by ca */
    char *client_key;
    char *other_ca; /* an unrelated CA: signed nothing here */
};

/* Generates everything in a fresh temp dir (EC P-256 keys, 2 days). NULL
 * on failure (openssl's output printed). */
struct th_certs *th_certs_new(void);
void th_certs_free(struct th_certs *c);

/* Mosquitto with a plain listener on 127.0.0.1:m->port (for the test's
 * publisher) and TLS listeners on 127.0.0.1:*tls_port and
 * 127.0.0.2:*tls_port. Waits until they accept. NULL on failure. Free with
 * th_mosq_free. */
struct th_mosq *th_mosq_start_tls(const struct th_certs *c, int *tls_port);

/* A private RabbitMQ node (scripts/test-rabbitmq.sh start DIR with a
 * M2A_RABBIT_EXTRA_CONF) with TLS listeners on 127.0.0.1:tls_port and
 * 127.0.0.2:tls_port besides its plain amqp_port. */
struct th_rabbit_tls {
    char *dir;
    int amqp_port;
    int tls_port;
};
struct th_rabbit_tls *th_rabbit_tls_start(const struct th_certs *c);
/* Stops the node (by its recorded pid) and frees. NULL is a no-op. */
void th_rabbit_tls_stop(struct th_rabbit_tls *r);

#endif
