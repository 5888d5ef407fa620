/* tls.c - TLS test fixtures; see tls.h. Runs on the test's main thread;
 * the openssl CLI and the test-rabbitmq.sh script run to completion
 * through th_run, Mosquitto through th_proc_spawn (killed with the test). */
#include "tls.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mqtt2amqp/err.h"
#include "mqtt2amqp/util.h"

#define OPENSSL_TIMEOUT_MS 30000

/* Runs `sh -c cmd` in dir; 0 if it exited 0 (its output printed if not). */
static int sh_in(const char *dir, const char *cmd)
{
    char *script = xasprintf("cd '%s' && %s", dir, cmd);
    const char *argv[] = {"sh", "-c", script, NULL};
    struct th_run_result r;
    int rc = th_run(argv, NULL, OPENSSL_TIMEOUT_MS, &r);
    if (rc == 0 && r.exit_code != 0)
        rc = M2A_ERR_IO;
    if (rc != 0)
        fprintf(stderr, "tls: '%s' failed (exit %d):\n%s%s", cmd, r.exit_code, r.out, r.err);
    th_run_result_free(&r);
    free(script);
    return rc;
}

struct th_certs *th_certs_new(void)
{
    struct th_certs *c = xcalloc(1, sizeof(*c));
    c->dir = th_tmpdir_new("certs");
    const char *key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    char *cmds[] = {
        xasprintf("openssl req -x509 %s -keyout ca.key -out ca.pem -days 2 "
                  "-subj '/CN=m2a test CA'",
                  key),
        xasprintf("openssl req -x509 %s -keyout other-ca.key -out other-ca.pem -days 2 "
                  "-subj '/CN=m2a unrelated CA'",
                  key),
        xasprintf("openssl req %s -keyout server.key -out server.csr -subj '/CN=localhost'", key),
        xstrdup("printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n"
                "extendedKeyUsage=serverAuth\\n' > server.ext && "
                "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
                "-out server.pem -days 2 -extfile server.ext"),
        xasprintf("openssl req %s -keyout client.key -out client.csr -subj '/CN=mqtt2amqp'", key),
        xstrdup("printf 'basicConstraints=CA:FALSE\\nextendedKeyUsage=clientAuth\\n' > client.ext "
                "&& openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
                "-out client.pem -days 2 -extfile client.ext"),
        /* the brokers run as us and read the keys themselves */
        xstrdup("chmod 644 *.key"),
    };
    int rc = 0;
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
        if (rc == 0)
            rc = sh_in(c->dir, cmds[i]);
        free(cmds[i]);
    }
    c->ca = xasprintf("%s/ca.pem", c->dir);
    c->other_ca = xasprintf("%s/other-ca.pem", c->dir);
    c->server = xasprintf("%s/server.pem", c->dir);
    c->server_key = xasprintf("%s/server.key", c->dir);
    c->client = xasprintf("%s/client.pem", c->dir);
    c->client_key = xasprintf("%s/client.key", c->dir);
    if (rc != 0) {
        th_certs_free(c);
        return NULL;
    }
    return c;
}

void th_certs_free(struct th_certs *c)
{
    if (!c)
        return;
    th_tmpdir_remove("certificates", c->dir);
    free(c->dir);
    free(c->ca);
    free(c->other_ca);
    free(c->server);
    free(c->server_key);
    free(c->client);
    free(c->client_key);
    free(c);
}

/* ---- Mosquitto ----------------------------------------------------------- */

static char *tls_listener(const struct th_certs *c, const char *addr, int port)
{
    return xasprintf("listener %d %s\ncafile %s\ncertfile %s\nkeyfile %s\n"
                     "require_certificate true\n",
                     port, addr, c->ca, c->server, c->server_key);
}

struct th_mosq *th_mosq_start_tls(const struct th_certs *c, int *tls_port)
{
    *tls_port = th_free_port();
    char *l1 = tls_listener(c, "127.0.0.1", *tls_port);
    char *l2 = tls_listener(c, "127.0.0.2", *tls_port);
    char *extra = xasprintf("%s%s", l1, l2);
    /* The shipped config (its queue limits, as in production) plus the TLS
     * listeners; its allow_anonymous is global (per_listener_settings is
     * off), so it covers them too. */
    struct th_mosq *m = th_mosq_start_with(TH_MOSQ_SHIPPED, extra, *tls_port);
    if (!m)
        fprintf(stderr, "tls: mosquitto with TLS listeners did not start\n");
    free(l1);
    free(l2);
    free(extra);
    return m;
}

/* ---- RabbitMQ ------------------------------------------------------------- */

static int rabbit_script(const char *verb, const char *dir)
{
    struct th_run_result r;
    int rc = th_rabbit_script(verb, dir, NULL, &r);
    fprintf(stderr, "tls: rabbitmq %s %s: exit %d\n%s", verb, dir, r.exit_code, r.err);
    th_run_result_free(&r);
    return rc;
}

struct th_rabbit_tls *th_rabbit_tls_start(const struct th_certs *c)
{
    struct th_rabbit_tls *r = xcalloc(1, sizeof(*r));
    r->dir = xstrdup(M2A_TEST_STATE "/rabbitmq-tls");
    r->tls_port = th_free_port();
    char *extra_path = xasprintf("%s/rabbitmq-tls.conf", c->dir);
    char *extra = xasprintf("listeners.ssl.1 = 127.0.0.1:%d\n"
                            "listeners.ssl.2 = 127.0.0.2:%d\n"
                            "ssl_options.cacertfile = %s\n"
                            "ssl_options.certfile = %s\n"
                            "ssl_options.keyfile = %s\n"
                            "ssl_options.verify = verify_peer\n"
                            "ssl_options.fail_if_no_peer_cert = true\n",
                            r->tls_port, r->tls_port, c->ca, c->server, c->server_key);
    int rc = th_write_file(extra_path, extra);
    free(extra);
    if (rc == 0) {
        /* the script copies the file into its dir: certificates stay where they are */
        setenv("M2A_RABBIT_EXTRA_CONF", extra_path, 1);
        rc = rabbit_script("start", r->dir);
        unsetenv("M2A_RABBIT_EXTRA_CONF");
    }
    free(extra_path);
    char *port = rc == 0 ? th_rabbit_env_get(r->dir, "AMQP_PORT") : NULL;
    r->amqp_port = port ? atoi(port) : 0;
    free(port);
    if (rc != 0 || r->amqp_port <= 0 || !th_port_open(r->tls_port)) {
        fprintf(stderr, "tls: RabbitMQ with a TLS listener did not start (logs in %s/log)\n",
                r->dir);
        th_rabbit_tls_stop(r);
        return NULL;
    }
    return r;
}

void th_rabbit_tls_stop(struct th_rabbit_tls *r)
{
    if (!r)
        return;
    rabbit_script("stop", r->dir);
    free(r->dir);
    free(r);
}
