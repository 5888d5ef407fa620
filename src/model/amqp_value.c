/* amqp_value.c - an AMQP field value as text; see amqp_value.h.
 *
 * Pure: no state, any thread. */
#include "mqtt2amqp/amqp_value.h"

#include <inttypes.h>
#include <stdio.h>

bool m2a_amqp_value_text(const amqp_field_value_t *v, unsigned flags, struct m2a_buf *out)
{
    char t[64];
    switch (v->kind) {
    case AMQP_FIELD_KIND_BYTES:
        if (!(flags & M2A_AMQP_VALUE_BYTES))
            return false;
        /* fall through */
    case AMQP_FIELD_KIND_UTF8:
        m2a_buf_append(out, v->value.bytes.bytes, v->value.bytes.len);
        return true;
    case AMQP_FIELD_KIND_BOOLEAN:
        snprintf(t, sizeof(t), "%s", v->value.boolean ? "true" : "false");
        break;
    case AMQP_FIELD_KIND_I8:
        snprintf(t, sizeof(t), "%d", v->value.i8);
        break;
    case AMQP_FIELD_KIND_U8:
        snprintf(t, sizeof(t), "%u", v->value.u8);
        break;
    case AMQP_FIELD_KIND_I16:
        snprintf(t, sizeof(t), "%d", v->value.i16);
        break;
    case AMQP_FIELD_KIND_U16:
        snprintf(t, sizeof(t), "%u", v->value.u16);
        break;
    case AMQP_FIELD_KIND_I32:
        snprintf(t, sizeof(t), "%" PRId32, v->value.i32);
        break;
    case AMQP_FIELD_KIND_U32:
        snprintf(t, sizeof(t), "%" PRIu32, v->value.u32);
        break;
    case AMQP_FIELD_KIND_I64:
        snprintf(t, sizeof(t), "%" PRId64, v->value.i64);
        break;
    case AMQP_FIELD_KIND_U64:
    case AMQP_FIELD_KIND_TIMESTAMP:
        snprintf(t, sizeof(t), "%" PRIu64, v->value.u64);
        break;
    case AMQP_FIELD_KIND_F32:
        snprintf(t, sizeof(t), "%.9g", (double)v->value.f32);
        break;
    case AMQP_FIELD_KIND_F64:
        snprintf(t, sizeof(t), "%.17g", v->value.f64);
        break;
    case AMQP_FIELD_KIND_VOID:
        t[0] = '\0';
        break;
    default: /* arrays, tables, decimals */
        return false;
    }
    m2a_buf_append_str(out, t);
    return true;
}
