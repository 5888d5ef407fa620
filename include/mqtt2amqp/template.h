/* template.h - the lexer of the two template languages (a route's routing
 * key and header values, a downlink's topic): text with {placeholders} in
 * it, "{{" and "}}" for a literal brace. It splits a template into pieces in
 * order and refuses unbalanced braces; what a placeholder means, and what
 * literal text may hold, is the caller's.
 *
 * Pure: no state, any thread. */
#ifndef MQTT2AMQP_TEMPLATE_H
#define MQTT2AMQP_TEMPLATE_H

#include <stddef.h>

enum m2a_template_piece {
    M2A_TEMPLATE_TEXT,        /* literal bytes; an escaped brace is a 1-byte piece */
    M2A_TEMPLATE_PLACEHOLDER, /* the name between '{' and '}' (may be empty) */
};

/* One piece: s[0..n) (pointing into the template), found at offset `at`.
 * Returns 0 to go on, or an m2a_err after filling err, which ends the scan
 * with that value. */
typedef int (*m2a_template_piece_fn)(void *ud, enum m2a_template_piece kind, const char *s,
                                     size_t n, size_t at, char *err, size_t errlen);

/* Scans tmpl (NUL-terminated), calling fn per piece. Returns 0, fn's
 * error, or M2A_ERR_TEMPLATE with a sentence in err for a '}' that closes
 * nothing or a '{' that is not closed. */
int m2a_template_scan(const char *tmpl, m2a_template_piece_fn fn, void *ud, char *err,
                      size_t errlen);

#endif
