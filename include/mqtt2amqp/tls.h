/* tls.h - TLS client set-up shared by the MQTT and AMQP sides, and the
 * reason a broker's certificate was refused.
 *
 * Both client libraries use OpenSSL underneath, but neither says why a
 * handshake failed beyond "certificate verify failed". So both sides hand
 * this module the OpenSSL SSL_CTX their connection will use (libmosquitto:
 * one we create and pass as MOSQ_OPT_SSL_CTX; rabbitmq-c: the one inside
 * its TLS socket). m2a_tls_ctx_setup() loads the CA, the client certificate
 * and key, asks OpenSSL itself to check the host name (DNS name, or IP
 * address when the host is a literal, which neither library's own check
 * handles), and installs a verify callback that records the first failure
 * (X509 error, depth, subject) in thread-local storage: the handshake runs
 * on the thread that connects, which reads it back with
 * m2a_tls_failure() after the connect failed.
 *
 * Low level: does not log; fills the caller's buffers. */
#ifndef MQTT2AMQP_TLS_H
#define MQTT2AMQP_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include <openssl/ssl.h>

#include "mqtt2amqp/config.h"

/* A fresh client context (TLS 1.2 or later) set up by m2a_tls_ctx_setup.
 * NULL with a sentence in err. Free with SSL_CTX_free. */
SSL_CTX *m2a_tls_ctx_new(const struct m2a_conf_tls *t, const char *host, char *err, size_t errlen);

/* Configures an existing client context: CA file (or the system store when
 * none is given), client certificate and key (both or neither: config.c
 * guarantees it), peer
 * verification with the recording callback, and, when t->verify_hostname,
 * the name host must match. Returns 0, or M2A_ERR_CONFIG with a sentence
 * naming the file and OpenSSL's reason in err. */
int m2a_tls_ctx_setup(SSL_CTX *ctx, const struct m2a_conf_tls *t, const char *host, char *err,
                      size_t errlen);

/* Forgets the failure recorded on this thread; call before connecting. */
void m2a_tls_failure_reset(void);

/* If a certificate check failed on this thread since the last reset, writes
 * a sentence saying what was wrong and what to check ("the broker's
 * certificate does not match host '127.0.0.2' ...", "... not signed by a CA
 * in tls.ca_file ...") and returns true. */
bool m2a_tls_failure(char *buf, size_t len);

#endif
