/* err.h - error codes shared by every mqtt2amqp module.
 *
 * Functions return 0 on success or a negative enum m2a_err. Low-level
 * modules never log: they return a code and, where useful, fill a caller's
 * error buffer with a human sentence. m2a_strerror() names every code; a
 * unit test walks them all. */
#ifndef MQTT2AMQP_ERR_H
#define MQTT2AMQP_ERR_H

enum m2a_err {
    M2A_OK = 0,
    M2A_ERR_ARG = -1,          /* invalid argument */
    M2A_ERR_IO = -2,           /* system call failed (see errno) */
    M2A_ERR_CONFIG = -3,       /* invalid configuration */
    M2A_ERR_TOPIC = -4,        /* invalid MQTT topic or topic filter */
    M2A_ERR_TEMPLATE = -5,     /* template refers to a capture that does not exist */
    M2A_ERR_KEY_TOO_LONG = -6, /* routing key longer than 255 bytes */
    M2A_ERR_CORRUPT = -7,      /* spool data failed verification */
    M2A_ERR_FULL = -8,         /* spool reached max_bytes */
    M2A_ERR_NOSPACE = -9,      /* disk full (ENOSPC) */
    M2A_ERR_MQTT = -10,        /* MQTT client library error */
    M2A_ERR_AMQP = -11,        /* AMQP client library or broker error */
    M2A_ERR_TIMEOUT = -12,     /* deadline passed */
    M2A_ERR_AGAIN = -13,       /* nothing available now, try later */
    M2A_ERR_CLOSED = -14,      /* connection or resource closed */
    M2A_ERR__LAST = -15        /* sentinel: one below the last code */
};

/* Returns a static, never-NULL description of code (0 or an enum m2a_err).
 * Unknown codes give "unknown error". */
const char *m2a_strerror(int code);

#include <stddef.h>

/* printf into the caller's error buffer err (len bytes, cut to fit); does
 * nothing when err is NULL or len 0. */
void m2a_err_setf(char *err, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
