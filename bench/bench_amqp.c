/* bench_amqp.c - connecting the AMQP bench programs (see bench_amqp.h). */
#include "bench_amqp.h"

#include <stdio.h>

#include <amqp_tcp_socket.h>

#include "bench_common.h"

bool bench_amqp_target_opt(struct bench_amqp_target *t, int c, const char *arg)
{
    switch (c) {
    case 'H':
        t->host = arg;
        return true;
    case 'p':
        t->port = (int)bench_parse_ll("-p", arg, 1, 65535);
        return true;
    case 'u':
        t->user = arg;
        return true;
    case 'P':
        t->pass = arg;
        return true;
    case 'v':
        t->vhost = arg;
        return true;
    default:
        return false;
    }
}

bool bench_amqp_rpc_ok(amqp_connection_state_t conn, const char *prog, const char *what)
{
    amqp_rpc_reply_t r = amqp_get_rpc_reply(conn);
    if (r.reply_type == AMQP_RESPONSE_NORMAL)
        return true;
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION)
        fprintf(stderr, "%s: %s: %s\n", prog, what, amqp_error_string2(r.library_error));
    else
        fprintf(stderr, "%s: %s: refused by the broker (method 0x%08x)\n", prog, what,
                (unsigned)r.reply.id);
    return false;
}

amqp_connection_state_t bench_amqp_open(const struct bench_amqp_target *t, uint16_t channel,
                                        const char *prog, bool quiet)
{
    amqp_connection_state_t conn = amqp_new_connection();
    amqp_socket_t *sock = amqp_tcp_socket_new(conn);
    if (!sock || amqp_socket_open(sock, t->host, t->port) != AMQP_STATUS_OK) {
        if (!quiet)
            fprintf(stderr, "%s: cannot connect to %s:%d\n", prog, t->host, t->port);
        goto fail;
    }
    amqp_rpc_reply_t r = amqp_login(conn, t->vhost, 0, AMQP_DEFAULT_FRAME_SIZE, 0,
                                    AMQP_SASL_METHOD_PLAIN, t->user, t->pass);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        if (!quiet)
            fprintf(stderr, "%s: login failed\n", prog);
        goto fail;
    }
    amqp_channel_open(conn, channel);
    if (!bench_amqp_rpc_ok(conn, prog, "channel.open"))
        goto fail;
    return conn;
fail:
    amqp_destroy_connection(conn);
    return NULL;
}
