/* tls.c - client SSL_CTX set-up for both sides and the recorded reason of a
 * refused broker certificate; see tls.h.
 *
 * Threads: m2a_tls_ctx_new/setup run on whichever thread builds the
 * connection (the MQTT thread at start, the AMQP thread per connect). The
 * verify callback runs inside the handshake, on the thread that connects;
 * what it records is thread-local, so the two sides never see each other's
 * failure. */
#include "mqtt2amqp/tls.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "mqtt2amqp/err.h"

#define NAME_LEN 256

/* The first failure seen by verify_cb on this thread since the last reset. */
struct failure {
    bool set;
    int err;
    int depth;
    char subject[NAME_LEN];  /* of the certificate that failed */
    char names[NAME_LEN];    /* its subjectAltName entries (DNS, IP) */
    char expected[NAME_LEN]; /* the host name or address it had to match */
};

static _Thread_local struct failure last;

/* OpenSSL's reason for the last error on this thread's queue, then clears
 * the queue so the next failure starts clean. */
static const char *ssl_reason(char *buf, size_t len)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    snprintf(buf, len, "%s", r ? r : "unknown OpenSSL error");
    ERR_clear_error();
    return buf;
}

static bool is_ip_literal(const char *host)
{
    unsigned char addr[16];
    return inet_pton(AF_INET, host, addr) == 1 || inet_pton(AF_INET6, host, addr) == 1;
}

/* "DNS:localhost, IP:127.0.0.1" from the certificate's subjectAltName. */
static void alt_names(X509 *cert, char *out, size_t len)
{
    out[0] = '\0';
    GENERAL_NAMES *gens = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    if (!gens) {
        snprintf(out, len, "none");
        return;
    }
    size_t used = 0;
    for (int i = 0; i < sk_GENERAL_NAME_num(gens) && used + 1 < len; i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
        char ip[INET6_ADDRSTRLEN] = "";
        const char *kind = NULL, *val = NULL;
        int vlen = 0;
        if (g->type == GEN_DNS) {
            kind = "DNS";
            val = (const char *)ASN1_STRING_get0_data(g->d.dNSName);
            vlen = ASN1_STRING_length(g->d.dNSName);
        } else if (g->type == GEN_IPADD) {
            int n = ASN1_STRING_length(g->d.iPAddress);
            const unsigned char *p = ASN1_STRING_get0_data(g->d.iPAddress);
            if (inet_ntop(n == 4 ? AF_INET : AF_INET6, p, ip, sizeof(ip)) && (n == 4 || n == 16)) {
                kind = "IP";
                val = ip;
                vlen = (int)strlen(ip);
            }
        }
        if (!kind)
            continue;
        int w = snprintf(out + used, len - used, "%s%s:%.*s", used ? ", " : "", kind, vlen, val);
        if (w < 0)
            break;
        used += (size_t)w < len - used ? (size_t)w : len - used - 1;
    }
    GENERAL_NAMES_free(gens);
    if (!out[0])
        snprintf(out, len, "none");
}

/* Records the first failure and lets OpenSSL's verdict stand. */
static int verify_cb(int ok, X509_STORE_CTX *x)
{
    if (ok || last.set)
        return ok;
    last.set = true;
    last.err = X509_STORE_CTX_get_error(x);
    last.depth = X509_STORE_CTX_get_error_depth(x);
    X509 *cert = X509_STORE_CTX_get_current_cert(x);
    if (cert) {
        X509_NAME_oneline(X509_get_subject_name(cert), last.subject, sizeof(last.subject));
        alt_names(cert, last.names, sizeof(last.names));
    } else {
        snprintf(last.subject, sizeof(last.subject), "?");
        snprintf(last.names, sizeof(last.names), "?");
    }
    X509_VERIFY_PARAM *vp = X509_STORE_CTX_get0_param(x);
    const char *h = X509_VERIFY_PARAM_get0_host(vp, 0);
    char *ip = X509_VERIFY_PARAM_get1_ip_asc(vp);
    snprintf(last.expected, sizeof(last.expected), "%s", h ? h : ip ? ip : "?");
    OPENSSL_free(ip);
    return ok;
}

void m2a_tls_failure_reset(void)
{
    memset(&last, 0, sizeof(last));
}

bool m2a_tls_failure(char *buf, size_t len)
{
    if (!last.set)
        return false;
    const char *why = X509_verify_cert_error_string(last.err);
    switch (last.err) {
    case X509_V_ERR_HOSTNAME_MISMATCH:
    case X509_V_ERR_IP_ADDRESS_MISMATCH:
        snprintf(buf, len,
                 "TLS: the broker's certificate does not match the host '%s' (%s; certificate %s "
                 "names %s): connect by a name the certificate holds, or set "
                 "tls.verify_hostname: false",
                 last.expected, why, last.subject, last.names);
        break;
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_CERT_SIGNATURE_FAILURE:
        snprintf(buf, len,
                 "TLS: the broker's certificate is not signed by a trusted CA (%s; certificate %s "
                 "at depth %d): check that tls.ca_file holds the CA that issued it",
                 why, last.subject, last.depth);
        break;
    case X509_V_ERR_CERT_HAS_EXPIRED:
    case X509_V_ERR_CERT_NOT_YET_VALID:
        snprintf(buf, len,
                 "TLS: the broker's certificate is not valid now (%s; certificate %s at depth "
                 "%d): check its dates and this machine's clock",
                 why, last.subject, last.depth);
        break;
    default:
        snprintf(buf, len,
                 "TLS: the broker's certificate was refused: %s (X509 error %d; certificate %s "
                 "at depth %d)",
                 why, last.err, last.subject, last.depth);
        break;
    }
    return true;
}

int m2a_tls_ctx_setup(SSL_CTX *ctx, const struct m2a_conf_tls *t, const char *host, char *err,
                      size_t errlen)
{
    char why[256];
    ERR_clear_error();
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (t->ca_file) {
        if (SSL_CTX_load_verify_locations(ctx, t->ca_file, NULL) != 1) {
            snprintf(err, errlen, "cannot load tls.ca_file %s: %s", t->ca_file,
                     ssl_reason(why, sizeof(why)));
            return M2A_ERR_CONFIG;
        }
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        snprintf(err, errlen, "cannot load the system's CA store: %s",
                 ssl_reason(why, sizeof(why)));
        return M2A_ERR_CONFIG;
    }
    if (t->cert_file) {
        if (SSL_CTX_use_certificate_chain_file(ctx, t->cert_file) != 1) {
            snprintf(err, errlen, "cannot load tls.cert_file %s: %s", t->cert_file,
                     ssl_reason(why, sizeof(why)));
            return M2A_ERR_CONFIG;
        }
        if (SSL_CTX_use_PrivateKey_file(ctx, t->key_file, SSL_FILETYPE_PEM) != 1) {
            snprintf(err, errlen, "cannot load tls.key_file %s: %s", t->key_file,
                     ssl_reason(why, sizeof(why)));
            return M2A_ERR_CONFIG;
        }
        if (SSL_CTX_check_private_key(ctx) != 1) {
            snprintf(err, errlen, "tls.key_file %s does not belong to tls.cert_file %s: %s",
                     t->key_file, t->cert_file, ssl_reason(why, sizeof(why)));
            return M2A_ERR_CONFIG;
        }
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, verify_cb);
    if (t->verify_hostname) {
        /* On the context, so every SSL made from it inherits the check; OpenSSL
         * then fails the handshake itself, before any MQTT or AMQP byte. */
        X509_VERIFY_PARAM *vp = SSL_CTX_get0_param(ctx);
        int ok;
        if (is_ip_literal(host)) {
            ok = X509_VERIFY_PARAM_set1_ip_asc(vp, host);
        } else {
            X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
            ok = X509_VERIFY_PARAM_set1_host(vp, host, 0);
        }
        if (ok != 1) {
            snprintf(err, errlen, "cannot set the host name to verify (%s): %s", host,
                     ssl_reason(why, sizeof(why)));
            return M2A_ERR_CONFIG;
        }
    }
    return 0;
}

SSL_CTX *m2a_tls_ctx_new(const struct m2a_conf_tls *t, const char *host, char *err, size_t errlen)
{
    char why[256];
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        snprintf(err, errlen, "cannot create a TLS context: %s", ssl_reason(why, sizeof(why)));
        return NULL;
    }
    if (m2a_tls_ctx_setup(ctx, t, host, err, errlen) != 0) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}
