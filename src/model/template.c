/* template.c - the lexer shared by route templates (routes.c) and downlink
 * topic templates (downlink_topic.c): pieces of text and {placeholders},
 * with "{{" and "}}" as literal braces; see template.h.
 *
 * Pure: no state, any thread. */
#include "mqtt2amqp/template.h"

#include <string.h>

#include "mqtt2amqp/err.h"

int m2a_template_scan(const char *s, m2a_template_piece_fn fn, void *ud, char *err, size_t errlen)
{
    int rc;
    for (size_t i = 0; s[i];) {
        if ((s[i] == '{' || s[i] == '}') && s[i + 1] == s[i]) {
            if ((rc = fn(ud, M2A_TEMPLATE_TEXT, s + i, 1, i, err, errlen)) != 0)
                return rc;
            i += 2;
            continue;
        }
        if (s[i] == '}') {
            m2a_err_setf(err, errlen,
                         "template \"%.80s\": '}' at offset %zu closes nothing (write \"}}\" for a "
                         "literal brace)",
                         s, i);
            return M2A_ERR_TEMPLATE;
        }
        if (s[i] != '{') {
            size_t n = strcspn(s + i, "{}");
            if ((rc = fn(ud, M2A_TEMPLATE_TEXT, s + i, n, i, err, errlen)) != 0)
                return rc;
            i += n;
            continue;
        }
        const char *name = s + i + 1;
        size_t n = strcspn(name, "{}");
        if (name[n] != '}') {
            m2a_err_setf(err, errlen,
                         name[n] ? "template \"%.80s\": '{' at offset %zu is followed by another "
                                   "'{' before its '}' (write \"{{\" for a literal brace)"
                                 : "template \"%.80s\": '{' at offset %zu is not closed (write "
                                   "\"{{\" for a literal brace)",
                         s, i);
            return M2A_ERR_TEMPLATE;
        }
        if ((rc = fn(ud, M2A_TEMPLATE_PLACEHOLDER, name, n, i, err, errlen)) != 0)
            return rc;
        i += n + 2;
    }
    return 0;
}
