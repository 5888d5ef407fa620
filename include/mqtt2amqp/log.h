/* log.h - the bridge's log lines on stderr, text or JSON (one object a line).
 *
 * Thread-safe: each line is formatted into a local buffer and written with
 * one write(2). M2A_LOG checks the level before evaluating its arguments.
 * Secrets must never be passed here; configuration values that are secret
 * are only ever printed as "***". */
#ifndef MQTT2AMQP_LOG_H
#define MQTT2AMQP_LOG_H

enum m2a_log_level { M2A_LOG_ERROR = 0, M2A_LOG_WARN = 1, M2A_LOG_INFO = 2, M2A_LOG_DEBUG = 3 };
enum m2a_log_format { M2A_LOG_TEXT = 0, M2A_LOG_JSON = 1 };

/* Set at start and on reload; readers use relaxed atomics. */
void m2a_log_set_level(enum m2a_log_level level);
void m2a_log_set_format(enum m2a_log_format format);
enum m2a_log_level m2a_log_get_level(void);
/* Send log lines to fd instead of stderr (2). For tests. */
void m2a_log_set_fd(int fd);

/* Parse "error", "warn", "info", "debug" / "text", "json". Returns 0 or -1. */
int m2a_log_level_parse(const char *s, enum m2a_log_level *out);
int m2a_log_format_parse(const char *s, enum m2a_log_format *out);

/* component: short subsystem name ("mqtt", "amqp", "spool", "bridge"). */
void m2a_log_write(enum m2a_log_level level, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define M2A_LOG(level, component, ...)                                                             \
    do {                                                                                           \
        if ((int)(level) <= (int)m2a_log_get_level())                                              \
            m2a_log_write((level), (component), __VA_ARGS__);                                      \
    } while (0)

#define m2a_error(c, ...) M2A_LOG(M2A_LOG_ERROR, c, __VA_ARGS__)
#define m2a_warn(c, ...)  M2A_LOG(M2A_LOG_WARN, c, __VA_ARGS__)
#define m2a_info(c, ...)  M2A_LOG(M2A_LOG_INFO, c, __VA_ARGS__)
#define m2a_debug(c, ...) M2A_LOG(M2A_LOG_DEBUG, c, __VA_ARGS__)

#endif
