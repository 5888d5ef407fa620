/* dead_letter.c - builds the dead-letter envelope of an undeliverable
 * message (see dead_letter.h for the headers it carries).
 *
 * Used by the MQTT thread (routing errors, messages too large for the
 * spool) and by the AMQP thread (returns, nacks past max_retries, expired
 * and unpublishable records), each with its own scratch. Dead-lettering is
 * rare, so the routing key template is interpreted on every build rather
 * than compiled. */
#include "mqtt2amqp/dead_letter.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt2amqp/err.h"
#include "mqtt2amqp/util.h"

#define NEXTRA 5 /* x-death-reason, x-original-{route,exchange,routing-key,body-bytes} */

static const char *const reason_names[] = {
    [M2A_DL_RETURNED] = "returned",       [M2A_DL_ROUTING_ERROR] = "routing_error",
    [M2A_DL_MAX_RETRIES] = "max_retries", [M2A_DL_EXPIRED] = "expired",
    [M2A_DL_TOO_LARGE] = "too_large",     [M2A_DL_UNPUBLISHABLE] = "unpublishable",
};

struct m2a_dl_scratch {
    struct m2a_buf key;
    char size[24];
    struct m2a_header *headers;
    size_t headers_cap;
};

const char *m2a_dl_reason_name(enum m2a_dl_reason reason)
{
    if ((size_t)reason < sizeof(reason_names) / sizeof(reason_names[0]) && reason_names[reason])
        return reason_names[reason];
    return "unknown";
}

static bool is_placeholder(const char *p, const char *name, size_t *len)
{
    size_t n = strlen(name);
    if (p[0] != '{' || strncmp(p + 1, name, n) != 0 || p[1 + n] != '}')
        return false;
    *len = n + 2;
    return true;
}

/* Expands tmpl into out (when out is not NULL); M2A_ERR_TEMPLATE at the first
 * thing that is neither text, a known placeholder nor an escaped brace. */
static int expand(const char *tmpl, const char *route, size_t route_len, const char *reason,
                  struct m2a_buf *out, char *err, size_t errlen)
{
    for (const char *p = tmpl; *p;) {
        size_t n;
        if ((p[0] == '{' && p[1] == '{') || (p[0] == '}' && p[1] == '}')) {
            if (out)
                m2a_buf_append_char(out, p[0]);
            p += 2;
        } else if (is_placeholder(p, "route", &n)) {
            if (out)
                m2a_buf_append(out, route, route_len);
            p += n;
        } else if (is_placeholder(p, "reason", &n)) {
            if (out)
                m2a_buf_append_str(out, reason);
            p += n;
        } else if (*p == '{' || *p == '}') {
            if (err && errlen)
                snprintf(err, errlen,
                         "'%.40s': only {route} and {reason} may be used (and {{, }} for braces)",
                         p);
            return M2A_ERR_TEMPLATE;
        } else {
            if (out)
                m2a_buf_append_char(out, *p);
            p++;
        }
    }
    return 0;
}

int m2a_dl_key_check(const char *tmpl, char *err, size_t errlen)
{
    if (!tmpl) {
        if (err && errlen)
            snprintf(err, errlen, "template is missing");
        return M2A_ERR_TEMPLATE;
    }
    return expand(tmpl, "", 0, "", NULL, err, errlen);
}

bool m2a_dl_is_dead_letter(const struct m2a_envelope *env)
{
    static const char key[] = "x-death-reason";
    for (size_t i = 0; i < env->nheaders; i++)
        if (env->headers[i].key.len == sizeof(key) - 1 &&
            memcmp(env->headers[i].key.ptr, key, sizeof(key) - 1) == 0)
            return true;
    return false;
}

struct m2a_dl_scratch *m2a_dl_scratch_new(void)
{
    return xcalloc(1, sizeof(struct m2a_dl_scratch));
}

void m2a_dl_scratch_free(struct m2a_dl_scratch *s)
{
    if (!s)
        return;
    m2a_buf_free(&s->key);
    free(s->headers);
    free(s);
}

static struct m2a_str cstr(const char *s)
{
    return (struct m2a_str){s, strlen(s)};
}

/* A route header that would shadow one of ours is left out: the reader of
 * a dead letter must be able to trust x-death-reason and x-original-*. */
static bool ours(struct m2a_str key)
{
    static const char *const names[] = {"x-death-reason", "x-original-route", "x-original-exchange",
                                        "x-original-routing-key", "x-original-body-bytes"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (key.len == strlen(names[i]) && memcmp(key.ptr, names[i], key.len) == 0)
            return true;
    return false;
}

void m2a_dl_build(const struct m2a_conf_dead_letter *dl, const struct m2a_envelope *orig,
                  enum m2a_dl_reason reason, bool keep_headers, struct m2a_dl_scratch *s,
                  struct m2a_envelope *out)
{
    const char *why = m2a_dl_reason_name(reason);
    m2a_buf_reset(&s->key);
    /* The template was checked when the config was loaded. */
    (void)expand(dl->routing_key ? dl->routing_key : "{route}", orig->route.ptr, orig->route.len,
                 why, &s->key, NULL, 0);
    if (s->key.len > M2A_MAX_ROUTING_KEY)
        s->key.len = M2A_MAX_ROUTING_KEY; /* a dead letter must always be publishable */
    m2a_buf_cstr(&s->key);

    size_t want = (keep_headers ? orig->nheaders : 0) + NEXTRA;
    if (want > s->headers_cap) {
        s->headers = xrealloc(s->headers, want * sizeof(*s->headers));
        s->headers_cap = want;
    }
    size_t n = 0;
    for (size_t i = 0; keep_headers && i < orig->nheaders; i++)
        if (!ours(orig->headers[i].key))
            s->headers[n++] = orig->headers[i];
    s->headers[n++] = (struct m2a_header){cstr("x-death-reason"), cstr(why)};
    s->headers[n++] = (struct m2a_header){cstr("x-original-route"), orig->route};
    s->headers[n++] = (struct m2a_header){cstr("x-original-exchange"), orig->exchange};
    /* After a routing error the key is a useless fragment of an over-long one. */
    if (reason != M2A_DL_ROUTING_ERROR)
        s->headers[n++] = (struct m2a_header){cstr("x-original-routing-key"), orig->routing_key};
    if (reason == M2A_DL_TOO_LARGE) {
        snprintf(s->size, sizeof(s->size), "%zu", orig->body.len);
        s->headers[n++] = (struct m2a_header){cstr("x-original-body-bytes"), cstr(s->size)};
    }

    *out = *orig;
    out->exchange = cstr(dl->exchange ? dl->exchange : "");
    out->routing_key = (struct m2a_str){(const char *)s->key.data, s->key.len};
    out->nheaders = n;
    out->headers = s->headers;
    if (reason == M2A_DL_TOO_LARGE)
        out->body = (struct m2a_str){"", 0};
}
