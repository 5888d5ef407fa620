/* util.h - allocation that cannot fail, small string and time helpers,
 * thread start.
 *
 * Out of memory aborts through m2a_oom() (like redis zmalloc): recovery
 * comes from the spool on restart, not from untested NOMEM branches. */
#ifndef MQTT2AMQP_UTIL_H
#define MQTT2AMQP_UTIL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

void *xmalloc(size_t n);
void *xcalloc(size_t nmemb, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
/* printf into a freshly allocated string; caller frees. */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Monotonic clock in milliseconds / microseconds. */
uint64_t m2a_now_ms(void);
uint64_t m2a_now_us(void);
/* Wall clock, seconds / milliseconds since the epoch. */
uint64_t m2a_wall_s(void);
uint64_t m2a_wall_ms(void);

/* Starts a thread running fn(arg) with every signal blocked: signals
 * belong to the main thread. Returns pthread_create's result. */
int m2a_thread_start(pthread_t *t, void *(*fn)(void *), void *arg);

/* Growable byte buffer. Zero-initialise ({0}) before first use. */
struct m2a_buf {
    unsigned char *data;
    size_t len;
    size_t cap;
};
void m2a_buf_reserve(struct m2a_buf *b, size_t extra);
void m2a_buf_append(struct m2a_buf *b, const void *p, size_t n);
void m2a_buf_append_str(struct m2a_buf *b, const char *s);
void m2a_buf_append_char(struct m2a_buf *b, char c);
/* NUL-terminates without counting the NUL in len. */
const char *m2a_buf_cstr(struct m2a_buf *b);
void m2a_buf_reset(struct m2a_buf *b);
void m2a_buf_free(struct m2a_buf *b);

#endif
