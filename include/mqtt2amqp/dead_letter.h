/* dead_letter.h - the dead-letter copy of a message that cannot be delivered
 * where its route sends it.
 *
 * A dead letter is an ordinary envelope: the configured dead_letter exchange
 * and routing key, the original topic, body and properties, the route's
 * headers, plus headers saying why and where it was going:
 *   x-death-reason          returned | routing_error | max_retries | expired |
 *                           too_large | unpublishable
 *   x-original-route        the route's name
 *   x-original-exchange     the route's exchange
 *   x-original-routing-key  the routing key it was published with (absent
 *                           when mapping failed to produce one)
 *   x-original-body-bytes   too_large only: the body is not carried
 * (x-mqtt-topic is added to every publish by amqp_out from the envelope.)
 * Because it is an envelope, it travels like any message: through the spool
 * on the MQTT side, through the confirm window on the AMQP side.
 *
 * Pure functions over a caller-owned scratch; no shared state. */
#ifndef MQTT2AMQP_DEAD_LETTER_H
#define MQTT2AMQP_DEAD_LETTER_H

#include <stdbool.h>
#include <stddef.h>

#include "mqtt2amqp/config.h"
#include "mqtt2amqp/envelope.h"

enum m2a_dl_reason {
    M2A_DL_RETURNED,      /* basic.return: no queue bound for the routing key */
    M2A_DL_ROUTING_ERROR, /* the routing key template failed (longer than 255 bytes) */
    M2A_DL_MAX_RETRIES,   /* nacked more than dead_letter.max_retries times */
    M2A_DL_EXPIRED,       /* older than spool.max_age when read from the spool */
    M2A_DL_TOO_LARGE,     /* larger than the spool can hold: sent without its body */
    M2A_DL_UNPUBLISHABLE, /* the record cannot be published (headers over one AMQP frame) */
};

/* The header value for reason ("returned", ...); never NULL. */
const char *m2a_dl_reason_name(enum m2a_dl_reason reason);

/* 0 if tmpl is a valid dead-letter routing key template: text with
 * "{route}" and "{reason}" placeholders, "{{" and "}}" for literal braces.
 * Otherwise M2A_ERR_TEMPLATE with a sentence in err. */
int m2a_dl_key_check(const char *tmpl, char *err, size_t errlen);

/* True if env is already a dead letter (carries x-death-reason): a dead
 * letter is never dead-lettered again. */
bool m2a_dl_is_dead_letter(const struct m2a_envelope *env);

struct m2a_dl_scratch;
struct m2a_dl_scratch *m2a_dl_scratch_new(void);
void m2a_dl_scratch_free(struct m2a_dl_scratch *s);

/* Fills out with the dead letter of orig for reason. dl must be enabled.
 * keep_headers false leaves the route's own headers out (for a record whose
 * headers are what made it unpublishable). A routing key over 255 bytes is
 * cut to 255. out's strings point into orig and into s: valid until the next
 * build with s or until orig's storage goes. */
void m2a_dl_build(const struct m2a_conf_dead_letter *dl, const struct m2a_envelope *orig,
                  enum m2a_dl_reason reason, bool keep_headers, struct m2a_dl_scratch *s,
                  struct m2a_envelope *out);

#endif
