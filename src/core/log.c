/* log.c - formats log lines (text or JSON) and writes each with one write(2).
 *
 * Level and format are process-wide atomics set at start and on reload; any
 * thread may log. A line longer than the buffer is cut, never split. */
#include "mqtt2amqp/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LOG_LINE_MAX 2048

static _Atomic int log_level = M2A_LOG_INFO;
static _Atomic int log_format = M2A_LOG_TEXT;
static _Atomic int log_fd = 2;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void m2a_log_set_level(enum m2a_log_level level)
{
    atomic_store_explicit(&log_level, (int)level, memory_order_relaxed);
}

void m2a_log_set_format(enum m2a_log_format format)
{
    atomic_store_explicit(&log_format, (int)format, memory_order_relaxed);
}

enum m2a_log_level m2a_log_get_level(void)
{
    return (enum m2a_log_level)atomic_load_explicit(&log_level, memory_order_relaxed);
}

void m2a_log_set_fd(int fd)
{
    atomic_store_explicit(&log_fd, fd, memory_order_relaxed);
}

int m2a_log_level_parse(const char *s, enum m2a_log_level *out)
{
    for (int i = 0; i < 4; i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (enum m2a_log_level)i;
            return 0;
        }
    }
    return -1;
}

int m2a_log_format_parse(const char *s, enum m2a_log_format *out)
{
    if (strcmp(s, "text") == 0)
        *out = M2A_LOG_TEXT;
    else if (strcmp(s, "json") == 0)
        *out = M2A_LOG_JSON;
    else
        return -1;
    return 0;
}

/* Appends s to line[*pos..cap) with JSON string escaping. */
static void json_escape(char *line, size_t *pos, size_t cap, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    for (; *s && *pos + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            line[(*pos)++] = '\\';
            line[(*pos)++] = (char)c;
        } else if (c == '\n') {
            line[(*pos)++] = '\\';
            line[(*pos)++] = 'n';
        } else if (c < 0x20) {
            memcpy(line + *pos, "\\u00", 4);
            line[*pos + 4] = hex[c >> 4];
            line[*pos + 5] = hex[c & 15];
            *pos += 6;
        } else {
            line[(*pos)++] = (char)c;
        }
    }
}

static size_t format_time(char *dst, size_t cap)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(dst, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    int m = snprintf(dst + n, cap - n, ".%03ldZ", ts.tv_nsec / 1000000L);
    return n + (m > 0 ? (size_t)m : 0);
}

void m2a_log_write(enum m2a_log_level level, const char *component, const char *fmt, ...)
{
    char msg[LOG_LINE_MAX], ts[40], line[LOG_LINE_MAX * 2];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    format_time(ts, sizeof(ts));
    const char *lname = level_names[(int)level & 3];

    size_t pos;
    if (atomic_load_explicit(&log_format, memory_order_relaxed) == M2A_LOG_JSON) {
        int n = snprintf(line, sizeof(line), "{\"ts\":\"%s\",\"level\":\"%s\",\"component\":\"", ts,
                         lname);
        pos = (size_t)n;
        json_escape(line, &pos, sizeof(line) - 16, component);
        memcpy(line + pos, "\",\"msg\":\"", 9);
        pos += 9;
        json_escape(line, &pos, sizeof(line) - 8, msg);
        memcpy(line + pos, "\"}\n", 3);
        pos += 3;
    } else {
        int n = snprintf(line, sizeof(line), "%s %-5s %s: %s\n", ts, lname, component, msg);
        pos = n < 0 ? 0 : ((size_t)n >= sizeof(line) ? sizeof(line) - 1 : (size_t)n);
        if ((size_t)n >= sizeof(line))
            line[pos - 1] = '\n';
    }
    (void)!write(atomic_load_explicit(&log_fd, memory_order_relaxed), line, pos);
}
