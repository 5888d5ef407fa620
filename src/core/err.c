/* err.c - names for enum m2a_err, and the one way to fill an error buffer. */
#include "mqtt2amqp/err.h"

#include <stdarg.h>
#include <stdio.h>

const char *m2a_strerror(int code)
{
    switch ((enum m2a_err)code) {
    case M2A_OK:
        return "success";
    case M2A_ERR_ARG:
        return "invalid argument";
    case M2A_ERR_IO:
        return "input/output error";
    case M2A_ERR_CONFIG:
        return "invalid configuration";
    case M2A_ERR_TOPIC:
        return "invalid topic or topic filter";
    case M2A_ERR_TEMPLATE:
        return "template cannot be expanded";
    case M2A_ERR_KEY_TOO_LONG:
        return "routing key longer than 255 bytes";
    case M2A_ERR_CORRUPT:
        return "data failed verification";
    case M2A_ERR_FULL:
        return "spool is full";
    case M2A_ERR_NOSPACE:
        return "no space left on device";
    case M2A_ERR_MQTT:
        return "MQTT error";
    case M2A_ERR_AMQP:
        return "AMQP error";
    case M2A_ERR_TIMEOUT:
        return "timed out";
    case M2A_ERR_AGAIN:
        return "nothing available yet";
    case M2A_ERR_CLOSED:
        return "connection closed";
    case M2A_ERR__LAST:
        break;
    }
    return "unknown error";
}

void m2a_err_setf(char *err, size_t len, const char *fmt, ...)
{
    if (!err || !len)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, len, fmt, ap);
    va_end(ap);
}
