/* amqp_pub.h - an AMQP publisher of numbered messages for the downlink
 * tests (issue 11): its own connection (librabbitmq-c, guest/guest on
 * 127.0.0.1), publisher confirms with a window, so a test knows how many
 * messages RabbitMQ took. Main-thread use, or a thread of its own. */
#ifndef M2A_TEST_AMQP_PUB_H
#define M2A_TEST_AMQP_PUB_H

struct th_apub {
    int port;
    const char *exchange;
    /* seq s is published with routing key key_fmt % (s % ndev), e.g.
     * "dev%ld.cmd" (one %ld) */
    const char *key_fmt;
    long ndev;
    long first, count; /* seqs first .. first+count-1 */
    int window;        /* unconfirmed at most; 0: 500 */
    int timeout_ms;    /* the whole run */
};

/* Publishes "seq=<n>" bodies (persistent); returns how many RabbitMQ
 * confirmed (basic.ack), fewer if the connection failed or the time ran
 * out, negative if it never connected (printed). */
long th_apub_run(const struct th_apub *p);

#endif
