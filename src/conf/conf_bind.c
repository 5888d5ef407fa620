/* conf_bind.c - the generic YAML binder: walks a table of options (see
 * conf_bind.h) over a libyaml document and fills the C struct it describes.
 *
 * Owns everything between the bytes of the file and the typed values: the
 * document (libyaml's document API builds the node tree; libyaml accepts
 * duplicate keys silently, so every mapping is checked for them here),
 * unknown keys with a suggestion, the conversion of scalars (also of the
 * tables' defaults, written in the file's syntax), ${VAR} expansion, secret
 * files, the uniqueness of a key across the items of a list, and the
 * "FILE:LINE:COLUMN:" of every message. What the keys mean, and the rules
 * that span several keys, belong to the schema (config.c), which this file
 * knows nothing about.
 *
 * Runs on whichever thread loads a file (the main thread, at start and on
 * reload); no global state besides the environment it reads. */
#include "mqtt2amqp/conf_bind.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <yaml.h>

#include "mqtt2amqp/err.h"
#include "mqtt2amqp/util.h"

#define MAX_OPTS        24 /* per section */
#define PATH_LEN        160
#define MSG_LEN         256
#define MAX_FILE_BYTES  (16u << 20)
#define MAX_SECRET_SIZE 65536

/* One m2a_bind_parse. */
struct bind {
    const char *name; /* file name for messages */
    const char *data; /* the input, so that every mark points inside it */
    size_t len;
    yaml_document_t *doc;
    void *root;
    char *err;
    size_t errlen;
};

/* A mapping being walked, as its section's check sees it. */
struct m2a_bind_scope {
    struct bind *b;
    const struct m2a_bind_section *sec;
    yaml_node_t *map;
    const char *path;
    yaml_node_t **found; /* the value of each option, NULL when absent */
};

/* The list a mapping is an item of, for unique options. */
struct item {
    char *first; /* the list's array */
    size_t index;
};

/* ---- messages ------------------------------------------------------------- */

static struct m2a_conf_mark at(const yaml_node_t *n)
{
    return (struct m2a_conf_mark){(int)n->start_mark.line + 1, (int)n->start_mark.column + 1};
}

/* libyaml puts an unexpected end of input, and an empty node at the end, on
 * a line of its own below the last one when the input does not end with a
 * line break (found by fuzz_config): point at the end of the last line
 * instead, counting lines and columns the way libyaml does (breaks \r\n,
 * \r, \n, NEL, LS, PS; columns in characters). */
static struct m2a_conf_mark clamp_to_end(struct m2a_conf_mark m, const char *data, size_t len)
{
    struct m2a_conf_mark end = {1, 1};
    const unsigned char *s = (const unsigned char *)data;
    for (size_t i = 0; i < len; i++) {
        bool brk =
            s[i] == '\n' || (s[i] == '\r' && (i + 1 == len || s[i + 1] != '\n')) ||
            (s[i] == 0x85 && i >= 1 && s[i - 1] == 0xC2) ||
            ((s[i] == 0xA8 || s[i] == 0xA9) && i >= 2 && s[i - 1] == 0x80 && s[i - 2] == 0xE2);
        if (brk)
            end = (struct m2a_conf_mark){end.line + 1, 1};
        else if ((s[i] & 0xC0) != 0x80 && s[i] != '\r')
            end.column++;
    }
    bool beyond = m.line > end.line || (m.line == end.line && m.column > end.column);
    return beyond ? end : m;
}

static int vfail(struct bind *b, struct m2a_conf_mark m, const char *prefix, const char *fmt,
                 va_list ap)
{
    m = clamp_to_end(m, b->data, b->len);
    int n = snprintf(b->err, b->errlen, "%s:%d:%d: %s", b->name, m.line, m.column, prefix);
    if (n >= 0 && (size_t)n < b->errlen)
        vsnprintf(b->err + n, b->errlen - (size_t)n, fmt, ap);
    return M2A_ERR_CONFIG;
}

__attribute__((format(printf, 3, 4))) static int fail(struct bind *b, struct m2a_conf_mark m,
                                                      const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = vfail(b, m, "", fmt, ap);
    va_end(ap);
    return rc;
}

static const char *where(const char *path)
{
    return path[0] ? path : "top level";
}

/* dst (PATH_LEN bytes, not path) = "path.key"; a longer path is cut: it
 * only names the key in messages. */
static void join(char *dst, const char *path, const char *key)
{
    struct m2a_buf b = {0};
    m2a_buf_append_str(&b, path);
    if (path[0])
        m2a_buf_append_char(&b, '.');
    m2a_buf_append_str(&b, key);
    size_t n = b.len < PATH_LEN ? b.len : PATH_LEN - 1;
    memcpy(dst, b.data, n);
    dst[n] = '\0';
    m2a_buf_free(&b);
}

/* "'abc'" or "'abcd...'" for a value quoted in a message. */
static const char *quote(char *dst, size_t len, const char *s)
{
    snprintf(dst, len, "'%.40s%s'", s, strlen(s) > 40 ? "..." : "");
    return dst;
}

/* ---- nodes ------------------------------------------------------------------ */

static yaml_node_t *node(struct bind *b, int i)
{
    return yaml_document_get_node(b->doc, i);
}

static const char *sval(const yaml_node_t *n)
{
    return (const char *)n->data.scalar.value;
}

static bool is_null(const yaml_node_t *n)
{
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *s = sval(n);
    return !*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL");
}

static const char *kind(const yaml_node_t *n)
{
    switch (n->type) {
    case YAML_MAPPING_NODE:
        return "a mapping";
    case YAML_SEQUENCE_NODE:
        return "a sequence";
    default:
        return "a scalar";
    }
}

static size_t seq_len(const yaml_node_t *n)
{
    return (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
}

static size_t map_len(const yaml_node_t *n)
{
    return (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
}

/* The key of pair p must be a scalar not used by an earlier pair of map. */
static int check_key(struct bind *b, yaml_node_t *map, yaml_node_pair_t *p, const char *path)
{
    yaml_node_t *k = node(b, p->key);
    if (k->type != YAML_SCALAR_NODE)
        return fail(b, at(k), "%s: keys must be scalars, found %s", where(path), kind(k));
    if (strlen(sval(k)) != k->data.scalar.length)
        return fail(b, at(k), "%s: key contains a NUL byte", where(path));
    for (yaml_node_pair_t *q = map->data.mapping.pairs.start; q < p; q++) {
        yaml_node_t *k2 = node(b, q->key);
        if (k2->type == YAML_SCALAR_NODE && !strcmp(sval(k2), sval(k)))
            return fail(b, at(k), "%s: duplicate key '%.64s' (first at line %d)", where(path),
                        sval(k), at(k2).line);
    }
    return 0;
}

/* ---- scalar conversion ------------------------------------------------------ */

static void set_str(char **dst, const char *v)
{
    free(*dst);
    *dst = v ? xstrdup(v) : NULL;
}

/* Decimal digits at *s into *v, advancing *s: -1 if there are none or the
 * number does not fit. */
static int parse_digits(const char **s, uint64_t *v)
{
    const char *p = *s;
    if (!isdigit((unsigned char)*p))
        return -1;
    for (*v = 0; isdigit((unsigned char)*p); p++) {
        unsigned d = (unsigned)(*p - '0');
        if (*v > (UINT64_MAX - d) / 10)
            return -1;
        *v = *v * 10 + d;
    }
    *s = p;
    return 0;
}

static int parse_int64(const char *s, int64_t *out)
{
    bool neg = *s == '-';
    uint64_t v;
    if (*s == '-' || *s == '+')
        s++;
    if (parse_digits(&s, &v) || *s || v > (uint64_t)INT64_MAX + neg)
        return -1;
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return 0;
}

struct unit {
    const char *suffix;
    uint64_t factor;
};

static const struct unit size_units[] = {{"", 1},
                                         {"B", 1},
                                         {"KiB", 1ull << 10},
                                         {"MiB", 1ull << 20},
                                         {"GiB", 1ull << 30},
                                         {"TiB", 1ull << 40}};
/* "90s", "15m", "1h", "2d", "500ms"; a plain number is seconds. */
static const struct unit duration_units[] = {
    {"", 1000}, {"ms", 1}, {"s", 1000}, {"m", 60 * 1000}, {"h", 3600 * 1000}, {"d", 86400 * 1000}};
#define NUNITS 6

/* A number, then optionally one space and a unit of units[0..NUNITS). */
static int parse_units(const char *s, const struct unit *units, uint64_t *out)
{
    uint64_t v;
    if (parse_digits(&s, &v))
        return -1;
    if (*s == ' ' && s[1])
        s++;
    for (size_t i = 0; i < NUNITS; i++) {
        if (strcmp(s, units[i].suffix))
            continue;
        if (v > UINT64_MAX / units[i].factor)
            return -1;
        *out = v * units[i].factor;
        return 0;
    }
    return -1;
}

void m2a_bind_format_size(char *dst, size_t len, uint64_t v)
{
    int i = NUNITS - 1;
    while (i > 1 && (v == 0 || v % size_units[i].factor))
        i--;
    snprintf(dst, len, "%llu%s", (unsigned long long)(v / size_units[i].factor),
             size_units[i].suffix);
}

static void list_choices(char *dst, size_t len, const struct m2a_bind_choice *ch)
{
    size_t pos = 0;
    dst[0] = '\0';
    for (; ch->name && pos < len; ch++)
        pos += (size_t)snprintf(dst + pos, len - pos, "%s%s", pos ? ", " : "", ch->name);
}

/* A string of len bytes against the option's .max; the value is quoted in
 * the message unless it is secret. */
static int check_length(const struct m2a_bind_opt *o, const char *what, size_t len, char *msg,
                        size_t msglen)
{
    char q[64] = "it";
    if (o->max <= 0 || len <= (uint64_t)o->max)
        return 0;
    if (!(o->flags & M2A_BIND_SECRET))
        quote(q, sizeof(q), what);
    snprintf(msg, msglen, "%s is %zu bytes long, more than the %" PRId64 " allowed (%s)", q, len,
             o->max, o->help);
    return -1;
}

static int convert_str(const struct m2a_bind_opt *o, const char *text, char **dst, char *msg,
                       size_t msglen)
{
    if ((o->flags & M2A_BIND_NONEMPTY) && !*text) {
        snprintf(msg, msglen, "must not be empty");
        return -1;
    }
    if (check_length(o, text, strlen(text), msg, msglen) ||
        (o->check && o->check(text, msg, msglen)))
        return -1;
    set_str(dst, text);
    return 0;
}

/* SIZE and DURATION: a number with a unit, within min..max. */
static int convert_units(const struct m2a_bind_opt *o, const char *text, uint64_t *dst, char *msg,
                         size_t msglen)
{
    bool size = o->type == M2A_BIND_T_SIZE;
    char lo[32], hi[32];
    uint64_t u;
    if (parse_units(text, size ? size_units : duration_units, &u)) {
        snprintf(msg, msglen, "'%.40s' is not a %s", text,
                 size ? "size: use a number of bytes with an optional B, KiB, MiB, GiB or TiB "
                        "suffix"
                      : "duration: use a number with ms, s, m, h or d (e.g. 90s, 1h; a plain "
                        "number is seconds)");
        return -1;
    }
    if (u >= (uint64_t)o->min && u <= (uint64_t)o->max) {
        *dst = u;
        return 0;
    }
    if (!size) {
        snprintf(msg, msglen, "%.40s is out of range %" PRId64 "..%" PRId64 " ms (%s)", text,
                 o->min, o->max, o->help);
        return -1;
    }
    m2a_bind_format_size(lo, sizeof(lo), (uint64_t)o->min);
    m2a_bind_format_size(hi, sizeof(hi), (uint64_t)o->max);
    if (o->max == INT64_MAX && u < (uint64_t)o->min)
        snprintf(msg, msglen, "%.40s is below the minimum %s (%s)", text, lo, o->help);
    else
        snprintf(msg, msglen, "%.40s is out of range %s..%s (%s)", text, lo, hi, o->help);
    return -1;
}

static int convert_enum(const struct m2a_bind_opt *o, const char *text, int *dst, char *msg,
                        size_t msglen)
{
    char list[160];
    for (const struct m2a_bind_choice *ch = o->choices; ch->name; ch++) {
        if (strcmp(text, ch->name))
            continue;
        int v = ch->value;
        if (o->parse && o->parse(text, &v))
            break;
        *dst = v;
        return 0;
    }
    list_choices(list, sizeof(list), o->choices);
    snprintf(msg, msglen, "'%.40s' is not one of %s", text, list);
    return -1;
}

/* Converts text (already expanded) into the option's C value at dst. On
 * failure writes a sentence into msg. Also used for the table's defaults. */
static int convert(const struct m2a_bind_opt *o, const char *text, char *dst, char *msg,
                   size_t msglen)
{
    int64_t v = 0;

    switch (o->type) {
    case M2A_BIND_T_STR:
    case M2A_BIND_T_STRS:
        return convert_str(o, text, (char **)dst, msg, msglen);
    case M2A_BIND_T_INT:
    case M2A_BIND_T_U32:
        if (parse_int64(text, &v)) {
            snprintf(msg, msglen, "'%.40s' is not an integer (%s)", text, o->help);
            return -1;
        }
        if (v < o->min || v > o->max) {
            snprintf(msg, msglen, "%lld is out of range %lld..%lld (%s)", (long long)v,
                     (long long)o->min, (long long)o->max, o->help);
            return -1;
        }
        if (o->type == M2A_BIND_T_INT)
            *(int *)dst = (int)v;
        else
            *(uint32_t *)dst = (uint32_t)v;
        return 0;
    case M2A_BIND_T_BOOL:
        if (strcmp(text, "true") && strcmp(text, "false")) {
            snprintf(msg, msglen, "'%.40s' is not a boolean: use true or false", text);
            return -1;
        }
        *(bool *)dst = text[0] == 't';
        return 0;
    case M2A_BIND_T_SIZE:
    case M2A_BIND_T_DURATION:
        return convert_units(o, text, (uint64_t *)dst, msg, msglen);
    case M2A_BIND_T_ENUM:
        return convert_enum(o, text, (int *)dst, msg, msglen);
    default:
        abort(); /* not a scalar type */
    }
}

/* Reads path into b, to its end or to max + 1 bytes: 0; 1 when the file
 * holds more than max bytes; -1 when it cannot be opened, -2 when it
 * cannot be read (errno says why). b grows to max + 2 bytes at most, so a
 * buffer reserved for that beforehand is never moved (nor a secret copied). */
static int read_path(const char *path, struct m2a_buf *b, size_t max)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = 0;
    for (;;) {
        size_t room = max + 1 - b->len;
        m2a_buf_reserve(b, room < 65536 ? room : 65536);
        ssize_t n =
            read(fd, b->data + b->len, b->cap - b->len - 1 < room ? b->cap - b->len - 1 : room);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rc = n < 0 ? -2 : 0;
            break;
        }
        b->len += (size_t)n;
        if (b->len > max) {
            rc = 1;
            break;
        }
    }
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

/* Reads a secret from path into *dst, without one trailing newline. */
static int read_secret(const struct m2a_bind_opt *o, const char *path, char **dst, char *msg,
                       size_t msglen)
{
    struct m2a_buf b = {0};
    m2a_buf_reserve(&b, MAX_SECRET_SIZE + 1);
    int rc = read_path(path, &b, MAX_SECRET_SIZE);
    bool ok = false;
    size_t len = b.len;
    if (rc == 0 && len && b.data[len - 1] == '\n')
        len -= 1 + (len > 1 && b.data[len - 2] == '\r');
    b.data[len] = '\0';
    if (rc < 0)
        snprintf(msg, msglen, "cannot read '%.100s': %s", path, strerror(errno));
    else if (rc > 0)
        snprintf(msg, msglen, "'%.100s' is larger than %d bytes", path, MAX_SECRET_SIZE);
    else if (len == 0 || strlen((char *)b.data) != len)
        snprintf(msg, msglen, "'%.100s' %s", path, len ? "contains a NUL byte" : "is empty");
    else if (o->max > 0 && len > (uint64_t)o->max)
        snprintf(msg, msglen, "'%.100s' holds %zu bytes, more than the %" PRId64 " allowed (%s)",
                 path, len, o->max, o->help);
    else
        ok = true;
    if (ok)
        set_str(dst, (char *)b.data);
    /* the buffer held a secret: do not leave it in freed memory */
    explicit_bzero(b.data, b.cap);
    m2a_buf_free(&b);
    return ok ? 0 : -1;
}

/* ---- ${VAR} expansion --------------------------------------------------------- */

static struct m2a_conf_mark mark_in(const yaml_node_t *n, size_t offset)
{
    struct m2a_conf_mark m = at(n);
    /* Only in a one-line plain scalar do value offsets equal file columns. */
    if (n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE && n->start_mark.line == n->end_mark.line)
        m.column += (int)offset;
    return m;
}

/* Expands ${VAR}, ${VAR:-default} (default when VAR is unset or empty) and
 * "$$" in scalar n into a new string. Any other '$' is literal, so topic
 * filters like "$SYS/#" need no escaping. HOSTNAME, when not in the
 * environment, is gethostname()'s answer (for client_id: ${HOSTNAME}). */
static int expand(struct bind *b, yaml_node_t *n, const char *path, char **out)
{
    const char *s = sval(n);
    size_t len = n->data.scalar.length;
    struct m2a_buf buf = {0};
    if (strlen(s) != len)
        return fail(b, at(n), "%s: value contains a NUL byte", path);
    for (size_t i = 0; i < len;) {
        if (s[i] != '$' || (s[i + 1] != '$' && s[i + 1] != '{')) {
            m2a_buf_append_char(&buf, s[i++]);
            continue;
        }
        if (s[i + 1] == '$') {
            m2a_buf_append_char(&buf, '$');
            i += 2;
            continue;
        }
        size_t j = i + 2;
        while (isalnum((unsigned char)s[j]) || s[j] == '_')
            j++;
        size_t nlen = j - (i + 2);
        const char *def = NULL, *close = NULL;
        if (s[j] == ':' && s[j + 1] == '-') {
            def = s + j + 2;
            close = strchr(def, '}');
        } else if (s[j] == '}') {
            close = s + j;
        }
        if (!nlen || isdigit((unsigned char)s[i + 2]) || !close) {
            m2a_buf_free(&buf);
            return fail(b, mark_in(n, i),
                        "%s: bad variable reference: use ${NAME} or ${NAME:-default}", path);
        }
        char name[128], host[256];
        snprintf(name, sizeof(name), "%.*s", (int)nlen, s + i + 2);
        const char *val = getenv(name);
        /* Shells set HOSTNAME without exporting it, and systemd services
         * do not get it: for that one name, the kernel's host name. */
        if (!val && strcmp(name, "HOSTNAME") == 0 && gethostname(host, sizeof(host)) == 0) {
            host[sizeof(host) - 1] = '\0';
            val = host;
        }
        if (def && (!val || !*val))
            m2a_buf_append(&buf, def, (size_t)(close - def));
        else if (val)
            m2a_buf_append_str(&buf, val);
        else {
            m2a_buf_free(&buf);
            return fail(b, mark_in(n, i),
                        "%s: environment variable %s is not set (write ${%s:-default} to give a "
                        "default)",
                        path, name, name);
        }
        i = (size_t)(close - s) + 1;
    }
    *out = xstrdup(m2a_buf_cstr(&buf));
    m2a_buf_free(&buf);
    return 0;
}

/* ---- unknown keys ---------------------------------------------------------------- */

/* Optimal string alignment distance: edits plus adjacent transpositions,
 * so "ampq" suggests "amqp". */
static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), d[33][33];
    if (la > 32 || lb > 32)
        return 99;
    for (size_t i = 0; i <= la; i++)
        d[i][0] = i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = j;
    for (size_t i = 1; i <= la; i++) {
        for (size_t j = 1; j <= lb; j++) {
            size_t best = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            if (d[i - 1][j] + 1 < best)
                best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best)
                best = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    }
    return d[la][lb];
}

static int unknown_key(struct bind *b, yaml_node_t *k, const char *path,
                       const struct m2a_bind_section *sec)
{
    const char *key = sval(k);
    if (!strcmp(key, "<<"))
        return fail(b, at(k), "%s: merge keys (<<) are not supported", where(path));
    const char *best = NULL;
    size_t best_d = 3;
    char list[256] = "";
    size_t pos = 0;
    for (size_t i = 0; i < sec->nopts; i++) {
        const char *name = sec->opts[i].name;
        size_t d = edit_distance(key, name);
        if (d < best_d && d < strlen(key)) {
            best = name;
            best_d = d;
        }
        if (pos < sizeof(list))
            pos += (size_t)snprintf(list + pos, sizeof(list) - pos, "%s%s", pos ? ", " : "", name);
    }
    if (best)
        return fail(b, at(k), "%s: unknown key '%.64s' (did you mean '%s'?)", where(path), key,
                    best);
    return fail(b, at(k), "%s: unknown key '%.64s' (expected one of: %s)", where(path), key, list);
}

/* ---- the walker ------------------------------------------------------------------- */

static int walk_map(struct bind *b, yaml_node_t *map, const char *path,
                    const struct m2a_bind_section *sec, char *base, const struct item *item);

static const char *const want[] = {
    [M2A_BIND_T_STR] = "a string",   [M2A_BIND_T_INT] = "an integer",
    [M2A_BIND_T_U32] = "an integer", [M2A_BIND_T_BOOL] = "a boolean",
    [M2A_BIND_T_SIZE] = "a size",    [M2A_BIND_T_DURATION] = "a duration",
    [M2A_BIND_T_ENUM] = "a name",    [M2A_BIND_T_SECRET_FILE] = "a file name",
    [M2A_BIND_T_STRS] = "a string",
};

/* One scalar value v of option o into dst. */
static int parse_scalar(struct bind *b, const struct m2a_bind_opt *o, yaml_node_t *v,
                        const char *path, char *dst)
{
    char msg[MSG_LEN] = "", *text = NULL;
    if (v->type != YAML_SCALAR_NODE)
        return fail(b, at(v), "%s: expected %s, found %s", path, want[o->type], kind(v));
    if (is_null(v)) {
        if (o->type == M2A_BIND_T_STR && (o->flags & M2A_BIND_NULLABLE)) {
            set_str((char **)dst, NULL);
            return 0;
        }
        return fail(b, at(v), "%s: missing value (expected %s)", path, want[o->type]);
    }
    int rc = expand(b, v, path, &text);
    if (rc)
        return rc;
    if (o->type == M2A_BIND_T_SECRET_FILE)
        rc = read_secret(o, text, (char **)dst, msg, sizeof(msg));
    else
        rc = convert(o, text, dst, msg, sizeof(msg));
    free(text);
    return rc ? fail(b, at(v), "%s: %s", path, msg) : 0;
}

static void apply_defaults(const struct m2a_bind_section *sec, char *base)
{
    char msg[MSG_LEN];
    for (size_t i = 0; i < sec->nopts; i++) {
        const struct m2a_bind_opt *o = &sec->opts[i];
        if (o->type == M2A_BIND_T_SECTION)
            apply_defaults(o->sub, base + o->off);
        else if (o->def && convert(o, o->def, base + o->off, msg, sizeof(msg)))
            abort(); /* a default that its own option refuses: fix the table */
    }
}

/* The size of one element of a STRS, MAP, ARGS or LIST option. */
static size_t elem_size(const struct m2a_bind_opt *o)
{
    switch (o->type) {
    case M2A_BIND_T_STRS:
        return sizeof(char *);
    case M2A_BIND_T_MAP:
        return sizeof(struct m2a_conf_kv);
    case M2A_BIND_T_ARGS:
        return sizeof(struct m2a_conf_arg);
    default:
        return o->sub->size;
    }
}

/* Item i of a LIST (a mapping) or STRS (a scalar) sequence v into arr. */
static int parse_item(struct bind *b, const struct m2a_bind_opt *o, yaml_node_t *v, size_t i,
                      const char *path, char *arr)
{
    char item_path[PATH_LEN];
    char *dst = arr + i * elem_size(o);
    yaml_node_t *e = node(b, v->data.sequence.items.start[i]);
    /* A path cut short only shortens the message, never the check. */
    if (snprintf(item_path, sizeof(item_path), "%s[%zu]", path, i) < 0)
        item_path[0] = '\0';
    if (o->type == M2A_BIND_T_STRS)
        return parse_scalar(b, o, e, item_path, dst);
    struct item it = {arr, i};
    apply_defaults(o->sub, dst);
    return walk_map(b, e, item_path, o->sub, dst, &it);
}

/* AMQP table values: a plain integer becomes a long, plain true/false a
 * boolean, anything else (any quoted scalar) a string, so '"5"' stays text. */
static void type_arg(struct m2a_conf_arg *a, const yaml_node_t *val, char *text)
{
    bool plain = val->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
    a->type = M2A_ARG_STRING;
    if (plain && !parse_int64(text, &a->num)) {
        a->type = M2A_ARG_INT;
    } else if (plain && (!strcmp(text, "true") || !strcmp(text, "false"))) {
        a->type = M2A_ARG_BOOL;
        a->flag = text[0] == 't';
    }
    if (a->type == M2A_ARG_STRING)
        a->str = text;
    else
        free(text);
}

/* Entry i of a MAP or ARGS mapping v into arr: the key non-empty and within
 * .max, the value a scalar, not null, expanded. */
static int parse_entry(struct bind *b, const struct m2a_bind_opt *o, yaml_node_t *v, size_t i,
                       const char *path, char *arr)
{
    char msg[MSG_LEN], sub[PATH_LEN], *text = NULL;
    yaml_node_pair_t *p = v->data.mapping.pairs.start + i;
    int rc = check_key(b, v, p, path);
    if (rc)
        return rc;
    yaml_node_t *k = node(b, p->key), *val = node(b, p->value);
    join(sub, path, sval(k));
    if (!*sval(k))
        return fail(b, at(k), "%s: empty key", path);
    if (check_length(o, sval(k), strlen(sval(k)), msg, sizeof(msg)))
        return fail(b, at(k), "%s: key %s", path, msg);
    if (val->type != YAML_SCALAR_NODE)
        return fail(b, at(val), "%s: expected a scalar, found %s", sub, kind(val));
    if (is_null(val))
        return fail(b, at(val), "%s: missing value", sub);
    if ((rc = expand(b, val, sub, &text)))
        return rc;
    if (o->type == M2A_BIND_T_MAP) {
        ((struct m2a_conf_kv *)arr)[i] = (struct m2a_conf_kv){xstrdup(sval(k)), text, at(val)};
        return 0;
    }
    ((struct m2a_conf_arg *)arr)[i].key = xstrdup(sval(k));
    type_arg((struct m2a_conf_arg *)arr + i, val, text);
    return 0;
}

/* STRS and LIST (sequences), MAP and ARGS (mappings): the array is
 * published before its elements are parsed, so that m2a_bind_free
 * releases a partial one. Null leaves it NULL. */
static int parse_elements(struct bind *b, const struct m2a_bind_opt *o, yaml_node_t *v,
                          const char *path, char *base)
{
    bool seq = o->type == M2A_BIND_T_STRS || o->type == M2A_BIND_T_LIST;
    if (is_null(v))
        return 0;
    if (v->type != (seq ? YAML_SEQUENCE_NODE : YAML_MAPPING_NODE))
        return fail(b, at(v), "%s: expected %s, found %s", path, seq ? "a sequence" : "a mapping",
                    kind(v));
    size_t n = seq ? seq_len(v) : map_len(v);
    char *arr = xcalloc(n ? n : 1, elem_size(o));
    *(void **)(base + o->off) = arr;
    *(size_t *)(base + o->count_off) = n;
    for (size_t i = 0; i < n; i++) {
        int rc = seq ? parse_item(b, o, v, i, path, arr) : parse_entry(b, o, v, i, path, arr);
        if (rc)
            return rc;
    }
    return 0;
}

static int apply(struct bind *b, const struct m2a_bind_opt *o, yaml_node_t *v, const char *path,
                 char *base)
{
    switch (o->type) {
    case M2A_BIND_T_SECTION:
        return walk_map(b, v, path, o->sub, base + o->off, NULL);
    case M2A_BIND_T_LIST:
    case M2A_BIND_T_STRS:
    case M2A_BIND_T_MAP:
    case M2A_BIND_T_ARGS:
        return parse_elements(b, o, v, path, base);
    default:
        return parse_scalar(b, o, v, path, base + o->off);
    }
}

/* A unique option's value against the same option of the earlier items. */
static int check_unique(const struct m2a_bind_scope *s, const struct m2a_bind_opt *o, char *base,
                        const struct item *item)
{
    const struct m2a_bind_section *sec = s->sec;
    const char *v = *(char **)(base + o->off);
    if (!item || !sec->mark || o->type != M2A_BIND_T_STR)
        abort(); /* unique needs a string option in a list item with a mark: fix the table */
    for (size_t j = 0; v && j < item->index; j++) {
        char *other = item->first + j * sec->size;
        const char *ov = *(char **)(other + o->off);
        if (!ov || strcmp(ov, v))
            continue;
        const struct m2a_conf_mark *m = (const void *)(other + sec->mark - 1);
        return m2a_bind_fail_key(s, o->name, "%s '%.60s' is already %s at line %d", o->unique, v,
                                 o->unique_verb ? o->unique_verb : "used", m->line);
    }
    return 0;
}

/* Checks map's keys (scalars, unique, known) in file order, then applies the
 * options in table order, then the unique options and the section's own
 * check. item: the list map is an item of, or NULL. */
static int walk_map(struct bind *b, yaml_node_t *map, const char *path,
                    const struct m2a_bind_section *sec, char *base, const struct item *item)
{
    yaml_node_t *found[MAX_OPTS] = {0};
    struct m2a_bind_scope s = {b, sec, map, path, found};
    int rc;

    if (sec->nopts > MAX_OPTS)
        abort();
    if (map->type != YAML_MAPPING_NODE && !is_null(map))
        return fail(b, at(map), "%s: expected a mapping, found %s", where(path), kind(map));
    if (sec->mark)
        *(struct m2a_conf_mark *)(base + sec->mark - 1) = at(map);
    if (sec->present)
        *(bool *)(base + sec->present - 1) = true;
    for (size_t p = 0; map->type == YAML_MAPPING_NODE && p < map_len(map); p++) {
        yaml_node_pair_t *pair = map->data.mapping.pairs.start + p;
        if ((rc = check_key(b, map, pair, path)))
            return rc;
        yaml_node_t *k = node(b, pair->key);
        size_t i = 0;
        while (i < sec->nopts && strcmp(sec->opts[i].name, sval(k)))
            i++;
        if (i == sec->nopts)
            return unknown_key(b, k, path, sec);
        found[i] = node(b, pair->value);
    }
    for (size_t i = 0; i < sec->nopts; i++) {
        const struct m2a_bind_opt *o = &sec->opts[i];
        char sub[PATH_LEN];
        if (!found[i]) {
            if (o->flags & M2A_BIND_REQUIRED)
                return fail(b, at(map), "%s: missing required key '%s'", where(path), o->name);
            continue;
        }
        join(sub, path, o->name);
        if ((rc = apply(b, o, found[i], sub, base)))
            return rc;
    }
    for (size_t i = 0; i < sec->nopts; i++)
        if (sec->opts[i].unique && (rc = check_unique(&s, &sec->opts[i], base, item)))
            return rc;
    return sec->check ? sec->check(&s, base) : 0;
}

static void free_strings(char **v, size_t n, bool secret)
{
    for (size_t j = 0; j < n; j++) {
        if (secret && v[j]) /* secrets do not linger in freed memory */
            explicit_bzero(v[j], strlen(v[j]));
        free(v[j]);
    }
}

static bool is_array(enum m2a_bind_type t)
{
    return t == M2A_BIND_T_STRS || t == M2A_BIND_T_MAP || t == M2A_BIND_T_ARGS ||
           t == M2A_BIND_T_LIST;
}

void m2a_bind_free(const struct m2a_bind_section *sec, void *base_)
{
    char *base = base_;
    for (size_t i = 0; i < sec->nopts; i++) {
        const struct m2a_bind_opt *o = &sec->opts[i];
        char *p = base + o->off;
        bool secret = o->flags & M2A_BIND_SECRET;
        if (o->type == M2A_BIND_T_STR)
            free_strings((char **)p, 1, secret);
        else if (o->type == M2A_BIND_T_SECTION)
            m2a_bind_free(o->sub, p);
        if (!is_array(o->type)) /* scalars; SECRET_FILE writes another option's string */
            continue;
        char *arr = *(char **)p;
        size_t n = *(size_t *)(base + o->count_off);
        struct m2a_conf_kv *kv = (struct m2a_conf_kv *)arr;
        struct m2a_conf_arg *args = (struct m2a_conf_arg *)arr;
        if (o->type == M2A_BIND_T_STRS)
            free_strings((char **)arr, n, secret);
        for (size_t j = 0; o->type == M2A_BIND_T_LIST && j < n; j++)
            m2a_bind_free(o->sub, arr + j * o->sub->size);
        for (size_t j = 0; o->type == M2A_BIND_T_MAP && j < n; j++) {
            free(kv[j].key);
            free(kv[j].value);
        }
        for (size_t j = 0; o->type == M2A_BIND_T_ARGS && j < n; j++) {
            free(args[j].key);
            free(args[j].str);
        }
        free(arr);
    }
}

/* ---- scopes ------------------------------------------------------------------------- */

const char *m2a_bind_path(const struct m2a_bind_scope *s)
{
    return s->path;
}

void *m2a_bind_root(const struct m2a_bind_scope *s)
{
    return s->b->root;
}

static yaml_node_t *found_of(const struct m2a_bind_scope *s, const char *key)
{
    for (size_t i = 0; i < s->sec->nopts; i++)
        if (!strcmp(s->sec->opts[i].name, key))
            return s->found[i];
    abort(); /* a check function names an option its table lacks */
}

bool m2a_bind_has(const struct m2a_bind_scope *s, const char *key)
{
    return found_of(s, key) != NULL;
}

struct m2a_conf_mark m2a_bind_at(const struct m2a_bind_scope *s, const char *key, ...)
{
    yaml_node_t *n = NULL;
    va_list ap;
    va_start(ap, key);
    for (; key && !n; key = va_arg(ap, const char *))
        n = found_of(s, key);
    va_end(ap);
    return at(n ? n : s->map);
}

int m2a_bind_fail(const struct m2a_bind_scope *s, struct m2a_conf_mark m, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = vfail(s->b, m, "", fmt, ap);
    va_end(ap);
    return rc;
}

int m2a_bind_fail_key(const struct m2a_bind_scope *s, const char *key, const char *fmt, ...)
{
    char prefix[PATH_LEN + 2];
    join(prefix, s->path, key);
    strcat(prefix, ": ");
    va_list ap;
    va_start(ap, fmt);
    int rc = vfail(s->b, m2a_bind_at(s, key, NULL), prefix, fmt, ap);
    va_end(ap);
    return rc;
}

/* ---- loading ------------------------------------------------------------------------ */

static int yaml_fail(struct bind *b, const yaml_parser_t *p)
{
    struct m2a_conf_mark m = {(int)p->problem_mark.line + 1, (int)p->problem_mark.column + 1};
    const char *problem = p->problem ? p->problem : "cannot parse";
    if (p->error == YAML_MEMORY_ERROR)
        return fail(b, (struct m2a_conf_mark){1, 1}, "out of memory while parsing");
    if (p->error == YAML_READER_ERROR) {
        /* the reader reports a byte offset, not a mark */
        m = (struct m2a_conf_mark){1, 1};
        for (size_t i = 0; i < p->problem_offset && i < b->len; i++) {
            m.column++;
            if (b->data[i] == '\n')
                m = (struct m2a_conf_mark){m.line + 1, 1};
        }
        return fail(b, m, "invalid YAML: %s", problem);
    }
    if (p->context) {
        struct m2a_conf_mark cm = {(int)p->context_mark.line + 1, (int)p->context_mark.column + 1};
        cm = clamp_to_end(cm, b->data, b->len);
        return fail(b, m, "invalid YAML: %s (%s at line %d, column %d)", problem, p->context,
                    cm.line, cm.column);
    }
    return fail(b, m, "invalid YAML: %s", problem);
}

int m2a_bind_parse(const struct m2a_bind_section *top, void *base, void *root, const char *name,
                   const char *data, size_t len, char *err, size_t errlen)
{
    char scratch[1];
    yaml_document_t doc, extra;
    struct bind b = {.name = name,
                     .data = data,
                     .len = len,
                     .doc = &doc,
                     .root = root,
                     .err = err && errlen ? err : scratch,
                     .errlen = err && errlen ? errlen : sizeof(scratch)};
    yaml_parser_t parser;
    bool have_doc = false, have_extra = false;
    int rc;

    b.err[0] = '\0';
    apply_defaults(top, base);
    if (!yaml_parser_initialize(&parser))
        abort(); /* only fails on out of memory */
    yaml_parser_set_input_string(&parser, (const unsigned char *)data, len);
    if (!yaml_parser_load(&parser, &doc)) {
        rc = yaml_fail(&b, &parser);
        goto out;
    }
    have_doc = true;
    yaml_node_t *top_node = yaml_document_get_root_node(&doc);
    if (!top_node) {
        rc = fail(&b, (struct m2a_conf_mark){1, 1}, "the document is empty");
        goto out;
    }
    if (!yaml_parser_load(&parser, &extra)) {
        rc = yaml_fail(&b, &parser);
        goto out;
    }
    have_extra = true;
    if (yaml_document_get_root_node(&extra)) {
        rc = fail(&b,
                  (struct m2a_conf_mark){(int)extra.start_mark.line + 1,
                                         (int)extra.start_mark.column + 1},
                  "only one YAML document is allowed");
        goto out;
    }
    rc = walk_map(&b, top_node, "", top, base, NULL);
out:
    if (have_extra)
        yaml_document_delete(&extra);
    if (have_doc)
        yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    return rc;
}

int m2a_bind_read_file(const char *path, char **data, size_t *len, char *err, size_t errlen)
{
    char scratch[1];
    char *e = err && errlen ? err : scratch;
    size_t elen = err && errlen ? errlen : sizeof(scratch);
    struct m2a_buf buf = {0};

    *data = NULL;
    *len = 0;
    int rc = read_path(path, &buf, MAX_FILE_BYTES);
    if (rc < 0)
        snprintf(e, elen, "%s: cannot %s: %s", path, rc == -1 ? "open" : "read", strerror(errno));
    else if (rc > 0)
        snprintf(e, elen, "%s:1:1: file is larger than %u MiB", path, MAX_FILE_BYTES >> 20);
    if (rc) {
        m2a_buf_free(&buf);
        return rc < 0 ? M2A_ERR_IO : M2A_ERR_CONFIG;
    }
    m2a_buf_cstr(&buf);
    *len = buf.len;
    *data = (char *)buf.data;
    return 0;
}
