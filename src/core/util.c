/* util.c - allocation that aborts on out-of-memory, time, byte buffers,
 * thread start. */
#include "mqtt2amqp/util.h"

#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void m2a_oom(size_t n)
{
    char msg[96];
    int len = snprintf(msg, sizeof(msg), "mqtt2amqp: out of memory allocating %zu bytes\n", n);
    if (len > 0)
        (void)!write(2, msg, (size_t)len);
    abort();
}

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        m2a_oom(n);
    return p;
}

void *xcalloc(size_t nmemb, size_t size)
{
    void *p = calloc(nmemb ? nmemb : 1, size ? size : 1);
    if (!p)
        m2a_oom(nmemb * size);
    return p;
}

void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        m2a_oom(n);
    return q;
}

char *xstrdup(const char *s)
{
    return xstrndup(s, strlen(s));
}

char *xstrndup(const char *s, size_t n)
{
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        abort();
    char *p = xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}

static uint64_t clock_us(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

uint64_t m2a_now_ms(void)
{
    return clock_us(CLOCK_MONOTONIC) / 1000u;
}

uint64_t m2a_now_us(void)
{
    return clock_us(CLOCK_MONOTONIC);
}

uint64_t m2a_wall_s(void)
{
    return clock_us(CLOCK_REALTIME) / 1000000u;
}

uint64_t m2a_wall_ms(void)
{
    return clock_us(CLOCK_REALTIME) / 1000u;
}

void m2a_buf_reserve(struct m2a_buf *b, size_t extra)
{
    size_t need = b->len + extra + 1; /* room for m2a_buf_cstr's NUL */
    if (need <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    b->data = xrealloc(b->data, cap);
    b->cap = cap;
}

void m2a_buf_append(struct m2a_buf *b, const void *p, size_t n)
{
    m2a_buf_reserve(b, n);
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
}

void m2a_buf_append_str(struct m2a_buf *b, const char *s)
{
    m2a_buf_append(b, s, strlen(s));
}

void m2a_buf_append_char(struct m2a_buf *b, char c)
{
    m2a_buf_reserve(b, 1);
    b->data[b->len++] = (unsigned char)c;
}

const char *m2a_buf_cstr(struct m2a_buf *b)
{
    m2a_buf_reserve(b, 0);
    b->data[b->len] = '\0';
    return (const char *)b->data;
}

void m2a_buf_reset(struct m2a_buf *b)
{
    b->len = 0;
}

void m2a_buf_free(struct m2a_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

int m2a_thread_start(pthread_t *t, void *(*fn)(void *), void *arg)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(t, NULL, fn, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}
