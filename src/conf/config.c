/* config.c - loads the YAML configuration into an immutable struct m2a_config.
 *
 * The schema is a set of tables (struct opt), one per section, walked by one
 * generic function: each option names its key, type, offset into the C
 * struct, default (written in the file's own syntax and converted by the same
 * code as the file's values), bounds and a line of help. The same tables
 * drive defaults, parsing and m2a_config_free, so a new key is one line.
 * Rules that involve several keys (templates vs. the topic's wildcards,
 * routes vs. declared exchanges, password vs. password_file) live in small
 * per-section check functions.
 *
 * libyaml's document API builds the node tree. libyaml accepts duplicate
 * keys silently, so every mapping is checked for them here. Options are
 * processed in table order, not file order: amqp (and its exchanges) comes
 * before routes, so a route can be checked against the declared exchanges
 * wherever it appears in the file.
 *
 * Runs on whichever thread loads the config (main, at start and on reload);
 * no global state. */
#include "mqtt2amqp/config.h"

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
#include "mqtt2amqp/log.h"
#include "mqtt2amqp/policy.h"
#include "mqtt2amqp/routes.h"
#include "mqtt2amqp/topic.h"
#include "mqtt2amqp/util.h"

#define NO_OFF          ((size_t)-1)
#define MAX_OPTS        24
#define PATH_LEN        160
#define MSG_LEN         256
#define MAX_FILE_BYTES  (16u << 20)
#define MAX_SECRET_SIZE 65536

_Static_assert(sizeof(enum m2a_fsync_policy) == sizeof(int), "enums are stored through int");
_Static_assert(sizeof(enum m2a_overflow) == sizeof(int), "enums are stored through int");
_Static_assert(sizeof(enum m2a_unroutable) == sizeof(int), "enums are stored through int");

struct ctx {
    const char *name; /* file name for messages */
    const char *data; /* the input, so that every mark points inside it */
    size_t len;
    yaml_document_t *doc;
    struct m2a_config *cfg;
    char *err;
    size_t errlen;
};

enum opt_type {
    OPT_STR,         /* char * */
    OPT_INT,         /* int, within min..max */
    OPT_U32,         /* uint32_t, within min..max */
    OPT_BOOL,        /* bool: true or false, nothing else */
    OPT_SIZE,        /* uint64_t bytes: plain number or B/KiB/MiB/GiB/TiB */
    OPT_DURATION,    /* uint64_t milliseconds: number with ms/s/m/h/d (plain: seconds) */
    OPT_ENUM,        /* int: one name of a fixed list */
    OPT_SECRET_FILE, /* char * at off, read from the named file */
    OPT_MAP,         /* struct m2a_conf_kv[] at off, size_t count at count_off */
    OPT_ARGS,        /* struct m2a_conf_arg[] at off, size_t count at count_off */
    OPT_SECTION,     /* nested struct at off, described by sub */
    OPT_LIST,        /* array of sub structs at off, size_t count at count_off */
};

#define F_REQUIRED 1u /* the key must be present */
#define F_NONEMPTY 2u /* "" is refused */
#define F_NULLABLE 4u /* an empty value (YAML null) leaves the string NULL */
#define F_SECRET   8u /* the value never appears in a message */

struct choice {
    const char *name;
    int value;
};

struct section;

struct opt {
    const char *name;
    enum opt_type type;
    size_t off;       /* relative to the section's struct */
    size_t count_off; /* OPT_MAP, OPT_ARGS, OPT_LIST */
    const char *def;  /* default in the file's syntax; NULL: zero / NULL */
    int64_t min, max; /* OPT_INT, OPT_U32, OPT_SIZE */
    unsigned flags;
    const struct choice *choices;                          /* OPT_ENUM, ends with {NULL, 0} */
    int (*parse)(const char *s, int *v);                   /* OPT_ENUM: overrides choices' values */
    const struct section *sub;                             /* OPT_SECTION, OPT_LIST */
    int (*check)(const char *s, char *msg, size_t msglen); /* OPT_STR */
    const char *help;
};

typedef int (*section_check_fn)(struct ctx *c, const struct section *sec, yaml_node_t *map,
                                const char *path, yaml_node_t **found, void *base);

struct section {
    const struct opt *opts;
    size_t nopts;
    size_t size;        /* OPT_LIST element size */
    size_t mark_off;    /* NO_OFF, or where the mapping's position is stored */
    size_t present_off; /* NO_OFF, or a bool set when the section is present */
    section_check_fn check;
};

/* ---- messages ---------------------------------------------------------- */

static struct m2a_conf_mark at(const yaml_node_t *n)
{
    return (struct m2a_conf_mark){(int)n->start_mark.line + 1, (int)n->start_mark.column + 1};
}

/* libyaml puts an unexpected end of input, and an empty node at the end, on
 * a line of its own below the last one when the input does not end with a
 * line break (found by fuzz_config): point at the end of the last line
 * instead, counting lines
 * and columns the way libyaml does (breaks \r\n, \r, \n, NEL, LS, PS;
 * columns in characters). */
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

__attribute__((format(printf, 3, 4))) static int fail(struct ctx *c, struct m2a_conf_mark m,
                                                      const char *fmt, ...)
{
    m = clamp_to_end(m, c->data, c->len);
    int n = snprintf(c->err, c->errlen, "%s:%d:%d: ", c->name, m.line, m.column);
    if (n >= 0 && (size_t)n < c->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return M2A_ERR_CONFIG;
}

static const char *where(const char *path)
{
    return path[0] ? path : "top level";
}

static void join(char *dst, const char *path, const char *key)
{
    snprintf(dst, PATH_LEN, "%s%s%s", path, path[0] ? "." : "", key);
}

/* ---- nodes ------------------------------------------------------------- */

static yaml_node_t *node(struct ctx *c, int i)
{
    return yaml_document_get_node(c->doc, i);
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

static yaml_node_t *found_of(const struct section *sec, yaml_node_t **found, const char *name)
{
    for (size_t i = 0; i < sec->nopts; i++)
        if (!strcmp(sec->opts[i].name, name))
            return found[i];
    abort(); /* a check function names an option its table lacks */
}

/* The key of pair p must be a scalar not used by an earlier pair of map. */
static int check_key(struct ctx *c, yaml_node_t *map, yaml_node_pair_t *p, const char *path)
{
    yaml_node_t *k = node(c, p->key);
    if (k->type != YAML_SCALAR_NODE)
        return fail(c, at(k), "%s: keys must be scalars, found %s", where(path), kind(k));
    if (strlen(sval(k)) != k->data.scalar.length)
        return fail(c, at(k), "%s: key contains a NUL byte", where(path));
    for (yaml_node_pair_t *q = map->data.mapping.pairs.start; q < p; q++) {
        yaml_node_t *k2 = node(c, q->key);
        if (k2->type == YAML_SCALAR_NODE && !strcmp(sval(k2), sval(k)))
            return fail(c, at(k), "%s: duplicate key '%.64s' (first at line %d)", where(path),
                        sval(k), at(k2).line);
    }
    return 0;
}

/* ---- scalar conversion ------------------------------------------------- */

static void set_str(char **dst, const char *v)
{
    free(*dst);
    *dst = v ? xstrdup(v) : NULL;
}

static int parse_int64(const char *s, int64_t *out)
{
    bool neg = *s == '-';
    if (*s == '-' || *s == '+')
        s++;
    if (!isdigit((unsigned char)*s))
        return -1;
    uint64_t v = 0;
    for (; isdigit((unsigned char)*s); s++) {
        unsigned d = (unsigned)(*s - '0');
        if (v > ((uint64_t)INT64_MAX + 1 - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    if (*s || (!neg && v > (uint64_t)INT64_MAX))
        return -1;
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return 0;
}

static const struct {
    const char *suffix;
    int shift;
} size_units[] = {{"", 0}, {"B", 0}, {"KiB", 10}, {"MiB", 20}, {"GiB", 30}, {"TiB", 40}};

static int parse_size(const char *s, uint64_t *out)
{
    if (!isdigit((unsigned char)*s))
        return -1;
    uint64_t v = 0;
    for (; isdigit((unsigned char)*s); s++) {
        if (v > (UINT64_MAX - 9) / 10)
            return -1;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    if (*s == ' ' && s[1])
        s++;
    for (size_t i = 0; i < sizeof(size_units) / sizeof(size_units[0]); i++) {
        if (strcmp(s, size_units[i].suffix))
            continue;
        if (v > (UINT64_MAX >> size_units[i].shift))
            return -1;
        *out = v << size_units[i].shift;
        return 0;
    }
    return -1;
}

static void fmt_size(char *dst, size_t len, uint64_t v)
{
    int i = 5;
    while (i > 1 && (v == 0 || v % (1ull << size_units[i].shift)))
        i--;
    snprintf(dst, len, "%llu%s", (unsigned long long)(v >> size_units[i].shift),
             size_units[i].suffix);
}

static const struct {
    const char *suffix;
    uint64_t ms;
} duration_units[] = {{"", 1000},       {"ms", 1},          {"s", 1000},
                      {"m", 60 * 1000}, {"h", 3600 * 1000}, {"d", 86400 * 1000}};

/* "90s", "15m", "1h", "2d", "500ms"; a plain number is seconds. */
static int parse_duration(const char *s, uint64_t *out_ms)
{
    if (!isdigit((unsigned char)*s))
        return -1;
    uint64_t v = 0;
    for (; isdigit((unsigned char)*s); s++) {
        if (v > (UINT64_MAX - 9) / 10)
            return -1;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    if (*s == ' ' && s[1])
        s++;
    for (size_t i = 0; i < sizeof(duration_units) / sizeof(duration_units[0]); i++) {
        if (strcmp(s, duration_units[i].suffix))
            continue;
        if (v > UINT64_MAX / duration_units[i].ms)
            return -1;
        *out_ms = v * duration_units[i].ms;
        return 0;
    }
    return -1;
}

static void list_choices(char *dst, size_t len, const struct choice *ch)
{
    size_t pos = 0;
    dst[0] = '\0';
    for (; ch->name && pos < len; ch++)
        pos += (size_t)snprintf(dst + pos, len - pos, "%s%s", pos ? ", " : "", ch->name);
}

/* Converts text (already expanded) into the option's C value at dst. On
 * failure writes a sentence into msg. Also used for the table's defaults. */
static int convert(const struct opt *o, const char *text, char *dst, char *msg, size_t msglen)
{
    int64_t v = 0;
    uint64_t u = 0;
    char a[32], b[32], list[160];

    switch (o->type) {
    case OPT_STR:
        if ((o->flags & F_NONEMPTY) && !*text) {
            snprintf(msg, msglen, "must not be empty");
            return -1;
        }
        if (o->check && o->check(text, msg, msglen))
            return -1;
        set_str((char **)dst, text);
        return 0;
    case OPT_INT:
    case OPT_U32:
        if (parse_int64(text, &v)) {
            snprintf(msg, msglen, "'%.40s' is not an integer (%s)", text, o->help);
            return -1;
        }
        if (v < o->min || v > o->max) {
            snprintf(msg, msglen, "%lld is out of range %lld..%lld (%s)", (long long)v,
                     (long long)o->min, (long long)o->max, o->help);
            return -1;
        }
        if (o->type == OPT_INT)
            *(int *)dst = (int)v;
        else
            *(uint32_t *)dst = (uint32_t)v;
        return 0;
    case OPT_BOOL:
        if (strcmp(text, "true") && strcmp(text, "false")) {
            snprintf(msg, msglen, "'%.40s' is not a boolean: use true or false", text);
            return -1;
        }
        *(bool *)dst = text[0] == 't';
        return 0;
    case OPT_SIZE:
        if (parse_size(text, &u)) {
            snprintf(msg, msglen,
                     "'%.40s' is not a size: use a number of bytes with an optional B, KiB, "
                     "MiB, GiB or TiB suffix",
                     text);
            return -1;
        }
        if (u < (uint64_t)o->min || u > (uint64_t)o->max) {
            fmt_size(a, sizeof(a), (uint64_t)o->min);
            fmt_size(b, sizeof(b), (uint64_t)o->max);
            if (o->max == INT64_MAX)
                snprintf(msg, msglen, "%.40s is below the minimum %s (%s)", text, a, o->help);
            else
                snprintf(msg, msglen, "%.40s is out of range %s..%s (%s)", text, a, b, o->help);
            return -1;
        }
        *(uint64_t *)dst = u;
        return 0;
    case OPT_DURATION:
        if (parse_duration(text, &u)) {
            snprintf(msg, msglen,
                     "'%.40s' is not a duration: use a number with ms, s, m, h or d "
                     "(e.g. 90s, 1h; a plain number is seconds)",
                     text);
            return -1;
        }
        if (u < (uint64_t)o->min || u > (uint64_t)o->max) {
            snprintf(msg, msglen, "%.40s is out of range %" PRId64 "..%" PRId64 " ms (%s)", text,
                     o->min, o->max, o->help);
            return -1;
        }
        *(uint64_t *)dst = u;
        return 0;
    case OPT_ENUM:
        for (const struct choice *ch = o->choices; ch->name; ch++) {
            if (strcmp(text, ch->name))
                continue;
            int iv = ch->value;
            if (o->parse && o->parse(text, &iv))
                break;
            *(int *)dst = iv;
            return 0;
        }
        list_choices(list, sizeof(list), o->choices);
        snprintf(msg, msglen, "'%.40s' is not one of %s", text, list);
        return -1;
    default:
        abort(); /* not a scalar type */
    }
}

/* Reads a secret from path into *dst, without one trailing newline. */
static int read_secret(const char *path, char **dst, char *msg, size_t msglen)
{
    char *buf = xmalloc(MAX_SECRET_SIZE + 1);
    size_t len = 0;
    int rc = -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(msg, msglen, "cannot read '%.100s': %s", path, strerror(errno));
        goto out;
    }
    for (;;) {
        ssize_t n = read(fd, buf + len, MAX_SECRET_SIZE + 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(msg, msglen, "cannot read '%.100s': %s", path, strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len > MAX_SECRET_SIZE) {
            snprintf(msg, msglen, "'%.100s' is larger than %d bytes", path, MAX_SECRET_SIZE);
            goto out;
        }
    }
    if (len && buf[len - 1] == '\n')
        len -= 1 + (len > 1 && buf[len - 2] == '\r');
    buf[len] = '\0';
    if (len == 0 || strlen(buf) != len) {
        snprintf(msg, msglen, "'%.100s' %s", path, len ? "contains a NUL byte" : "is empty");
        goto out;
    }
    set_str(dst, buf);
    rc = 0;
out:
    if (fd >= 0)
        close(fd);
    /* the buffer held a secret: do not leave it in freed memory */
    explicit_bzero(buf, MAX_SECRET_SIZE + 1);
    free(buf);
    return rc;
}

/* ---- ${VAR} expansion ---------------------------------------------------- */

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
 * filters like "$SYS/#" need no escaping. */
static int expand(struct ctx *c, yaml_node_t *n, const char *path, char **out)
{
    const char *s = sval(n);
    size_t len = n->data.scalar.length;
    struct m2a_buf b = {0};
    if (strlen(s) != len)
        return fail(c, at(n), "%s: value contains a NUL byte", path);
    for (size_t i = 0; i < len;) {
        if (s[i] != '$' || (s[i + 1] != '$' && s[i + 1] != '{')) {
            m2a_buf_append_char(&b, s[i++]);
            continue;
        }
        if (s[i + 1] == '$') {
            m2a_buf_append_char(&b, '$');
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
            m2a_buf_free(&b);
            return fail(c, mark_in(n, i),
                        "%s: bad variable reference: use ${NAME} or ${NAME:-default}", path);
        }
        char name[128];
        snprintf(name, sizeof(name), "%.*s", (int)nlen, s + i + 2);
        const char *val = getenv(name);
        if (def && (!val || !*val))
            m2a_buf_append(&b, def, (size_t)(close - def));
        else if (val)
            m2a_buf_append_str(&b, val);
        else {
            m2a_buf_free(&b);
            return fail(c, mark_in(n, i),
                        "%s: environment variable %s is not set (write ${%s:-default} to give a "
                        "default)",
                        path, name, name);
        }
        i = (size_t)(close - s) + 1;
    }
    *out = xstrdup(m2a_buf_cstr(&b));
    m2a_buf_free(&b);
    return 0;
}

/* ---- the generic walker ---------------------------------------------------- */

static int walk_map(struct ctx *c, yaml_node_t *map, const char *path, const struct section *sec,
                    void *base, yaml_node_t **found_out);

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

static int unknown_key(struct ctx *c, yaml_node_t *k, const char *path, const struct section *sec)
{
    const char *key = sval(k);
    if (!strcmp(key, "<<"))
        return fail(c, at(k), "%s: merge keys (<<) are not supported", where(path));
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
        return fail(c, at(k), "%s: unknown key '%.64s' (did you mean '%s'?)", where(path), key,
                    best);
    return fail(c, at(k), "%s: unknown key '%.64s' (expected one of: %s)", where(path), key, list);
}

static int parse_scalar(struct ctx *c, const struct opt *o, yaml_node_t *v, const char *path,
                        char *base)
{
    static const char *const want[] = {
        [OPT_STR] = "a string",   [OPT_INT] = "an integer",
        [OPT_U32] = "an integer", [OPT_BOOL] = "a boolean",
        [OPT_SIZE] = "a size",    [OPT_DURATION] = "a duration",
        [OPT_ENUM] = "a name",    [OPT_SECRET_FILE] = "a file name",
    };
    char msg[MSG_LEN] = "", *text = NULL;
    if (v->type != YAML_SCALAR_NODE)
        return fail(c, at(v), "%s: expected %s, found %s", path, want[o->type], kind(v));
    if (is_null(v)) {
        if (o->type == OPT_STR && (o->flags & F_NULLABLE)) {
            set_str((char **)(base + o->off), NULL);
            return 0;
        }
        return fail(c, at(v), "%s: missing value (expected %s)", path, want[o->type]);
    }
    int rc = expand(c, v, path, &text);
    if (rc)
        return rc;
    if (o->type == OPT_SECRET_FILE)
        rc = read_secret(text, (char **)(base + o->off), msg, sizeof(msg));
    else
        rc = convert(o, text, base + o->off, msg, sizeof(msg));
    free(text);
    return rc ? fail(c, at(v), "%s: %s", path, msg) : 0;
}

static void apply_defaults(const struct section *sec, char *base)
{
    char msg[MSG_LEN];
    for (size_t i = 0; i < sec->nopts; i++) {
        const struct opt *o = &sec->opts[i];
        if (o->type == OPT_SECTION)
            apply_defaults(o->sub, base + o->off);
        else if (o->def && convert(o, o->def, base + o->off, msg, sizeof(msg)))
            abort(); /* a default that its own option refuses: fix the table */
    }
}

static int parse_list(struct ctx *c, const struct opt *o, yaml_node_t *v, const char *path,
                      char *base)
{
    if (is_null(v))
        return 0;
    if (v->type != YAML_SEQUENCE_NODE)
        return fail(c, at(v), "%s: expected a sequence, found %s", path, kind(v));
    const struct section *sub = o->sub;
    size_t n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
    char *arr = xcalloc(n, sub->size);
    /* Published at once so that m2a_config_free releases a partial list. */
    *(void **)(base + o->off) = arr;
    *(size_t *)(base + o->count_off) = n;
    for (size_t i = 0; i < n; i++)
        apply_defaults(sub, arr + i * sub->size);
    for (size_t i = 0; i < n; i++) {
        char item[PATH_LEN];
        /* A path cut short only shortens the message, never the check. */
        if (snprintf(item, sizeof(item), "%s[%zu]", path, i) < 0)
            item[0] = '\0';
        int rc = walk_map(c, node(c, v->data.sequence.items.start[i]), item, sub,
                          arr + i * sub->size, NULL);
        if (rc)
            return rc;
    }
    return 0;
}

/* The value of a header or an argument: a scalar, not null, expanded. */
static int entry_value(struct ctx *c, yaml_node_t *map, yaml_node_pair_t *p, const char *path,
                       yaml_node_t **val, char **key, char **text)
{
    int rc = check_key(c, map, p, path);
    if (rc)
        return rc;
    yaml_node_t *k = node(c, p->key);
    char sub[PATH_LEN];
    join(sub, path, sval(k));
    if (!*sval(k))
        return fail(c, at(k), "%s: empty key", path);
    *val = node(c, p->value);
    if ((*val)->type != YAML_SCALAR_NODE)
        return fail(c, at(*val), "%s: expected a scalar, found %s", sub, kind(*val));
    if (is_null(*val))
        return fail(c, at(*val), "%s: missing value", sub);
    rc = expand(c, *val, sub, text);
    if (rc)
        return rc;
    *key = xstrdup(sval(k));
    return 0;
}

static int parse_kv(struct ctx *c, const struct opt *o, yaml_node_t *v, const char *path,
                    char *base)
{
    if (is_null(v))
        return 0;
    if (v->type != YAML_MAPPING_NODE)
        return fail(c, at(v), "%s: expected a mapping, found %s", path, kind(v));
    size_t n = (size_t)(v->data.mapping.pairs.top - v->data.mapping.pairs.start);
    struct m2a_conf_kv *kv = xcalloc(n, sizeof(*kv));
    *(struct m2a_conf_kv **)(base + o->off) = kv;
    *(size_t *)(base + o->count_off) = n;
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *val;
        int rc = entry_value(c, v, v->data.mapping.pairs.start + i, path, &val, &kv[i].key,
                             &kv[i].value);
        if (rc)
            return rc;
        kv[i].mark = at(val);
    }
    return 0;
}

/* AMQP table values: a plain integer becomes a long, plain true/false a
 * boolean, anything else (any quoted scalar) a string, so '"5"' stays text. */
static int parse_args(struct ctx *c, const struct opt *o, yaml_node_t *v, const char *path,
                      char *base)
{
    if (is_null(v))
        return 0;
    if (v->type != YAML_MAPPING_NODE)
        return fail(c, at(v), "%s: expected a mapping, found %s", path, kind(v));
    size_t n = (size_t)(v->data.mapping.pairs.top - v->data.mapping.pairs.start);
    struct m2a_conf_arg *args = xcalloc(n, sizeof(*args));
    *(struct m2a_conf_arg **)(base + o->off) = args;
    *(size_t *)(base + o->count_off) = n;
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *val;
        char *text = NULL;
        int rc =
            entry_value(c, v, v->data.mapping.pairs.start + i, path, &val, &args[i].key, &text);
        if (rc)
            return rc;
        bool plain = val->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
        args[i].type = M2A_ARG_STRING;
        if (plain && !parse_int64(text, &args[i].num)) {
            args[i].type = M2A_ARG_INT;
        } else if (plain && (!strcmp(text, "true") || !strcmp(text, "false"))) {
            args[i].type = M2A_ARG_BOOL;
            args[i].flag = text[0] == 't';
        }
        if (args[i].type == M2A_ARG_STRING)
            args[i].str = text;
        else
            free(text);
    }
    return 0;
}

static int apply(struct ctx *c, const struct opt *o, yaml_node_t *v, const char *path, char *base)
{
    switch (o->type) {
    case OPT_SECTION:
        return walk_map(c, v, path, o->sub, base + o->off, NULL);
    case OPT_LIST:
        return parse_list(c, o, v, path, base);
    case OPT_MAP:
        return parse_kv(c, o, v, path, base);
    case OPT_ARGS:
        return parse_args(c, o, v, path, base);
    default:
        return parse_scalar(c, o, v, path, base);
    }
}

/* Checks map's keys (scalars, unique, known) in file order, then applies the
 * options in table order, then the section's own checks. found_out, if not
 * NULL, receives the value node of each option (NULL when absent). */
static int walk_map(struct ctx *c, yaml_node_t *map, const char *path, const struct section *sec,
                    void *base, yaml_node_t **found_out)
{
    yaml_node_t *found_local[MAX_OPTS] = {0};
    yaml_node_t **found = found_out ? found_out : found_local;
    char *b = base;
    int rc;

    if (sec->nopts > MAX_OPTS)
        abort();
    if (map->type != YAML_MAPPING_NODE && !is_null(map))
        return fail(c, at(map), "%s: expected a mapping, found %s", where(path), kind(map));
    if (sec->mark_off != NO_OFF)
        *(struct m2a_conf_mark *)(b + sec->mark_off) = at(map);
    if (sec->present_off != NO_OFF)
        *(bool *)(b + sec->present_off) = true;
    if (map->type == YAML_MAPPING_NODE) {
        for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
             p++) {
            if ((rc = check_key(c, map, p, path)))
                return rc;
            yaml_node_t *k = node(c, p->key);
            size_t i = 0;
            while (i < sec->nopts && strcmp(sec->opts[i].name, sval(k)))
                i++;
            if (i == sec->nopts)
                return unknown_key(c, k, path, sec);
            found[i] = node(c, p->value);
        }
    }
    for (size_t i = 0; i < sec->nopts; i++) {
        const struct opt *o = &sec->opts[i];
        char sub[PATH_LEN];
        if (!found[i]) {
            if (o->flags & F_REQUIRED)
                return fail(c, at(map), "%s: missing required key '%s'", where(path), o->name);
            continue;
        }
        join(sub, path, o->name);
        if ((rc = apply(c, o, found[i], sub, b)))
            return rc;
    }
    return sec->check ? sec->check(c, sec, map, path, found, base) : 0;
}

static void free_section(const struct section *sec, char *base)
{
    for (size_t i = 0; i < sec->nopts; i++) {
        const struct opt *o = &sec->opts[i];
        char *p = base + o->off;
        size_t n = o->count_off == NO_OFF ? 0 : *(size_t *)(base + o->count_off);
        switch (o->type) {
        case OPT_STR:
            free(*(char **)p);
            break;
        case OPT_SECTION:
            free_section(o->sub, p);
            break;
        case OPT_LIST:
            for (size_t j = 0; j < n; j++)
                free_section(o->sub, *(char **)p + j * o->sub->size);
            free(*(void **)p);
            break;
        case OPT_MAP:
            for (size_t j = 0; j < n; j++) {
                free((*(struct m2a_conf_kv **)p)[j].key);
                free((*(struct m2a_conf_kv **)p)[j].value);
            }
            free(*(void **)p);
            break;
        case OPT_ARGS:
            for (size_t j = 0; j < n; j++) {
                free((*(struct m2a_conf_arg **)p)[j].key);
                free((*(struct m2a_conf_arg **)p)[j].str);
            }
            free(*(void **)p);
            break;
        default: /* OPT_SECRET_FILE writes the password option's field */
            break;
        }
    }
}

/* ---- value checks ------------------------------------------------------- */

static int check_readable(const char *s, char *msg, size_t msglen)
{
    if (access(s, R_OK) == 0)
        return 0;
    snprintf(msg, msglen, "cannot read '%.100s': %s", s, strerror(errno));
    return -1;
}

/* "HOST:PORT" (an IPv6 address in brackets); the name is resolved when the
 * metrics server starts. */
static int check_listen(const char *s, char *msg, size_t msglen)
{
    const char *colon = strrchr(s, ':');
    char *end = NULL;
    long port = colon ? strtol(colon + 1, &end, 10) : 0;
    if (!colon || colon == s || !colon[1] || *end || port < 1 || port > 65535) {
        snprintf(msg, msglen, "'%.60s' is not HOST:PORT (e.g. 127.0.0.1:9464)", s);
        return -1;
    }
    return 0;
}

static int check_share_group(const char *s, char *msg, size_t msglen)
{
    if (!strpbrk(s, "/+#"))
        return 0;
    snprintf(msg, msglen, "'%.40s' must not contain '/', '+' or '#'", s);
    return -1;
}

static int check_exchange_type(const char *s, char *msg, size_t msglen)
{
    static const char *const types[] = {"direct", "fanout", "topic", "headers"};
    for (size_t i = 0; i < 4; i++)
        if (!strcmp(s, types[i]))
            return 0;
    if (!strncmp(s, "x-", 2) && s[2]) /* plugin types: x-delayed-message, ... */
        return 0;
    snprintf(msg, msglen, "'%.40s' is not direct, fanout, topic, headers or a plugin's x-... type",
             s);
    return -1;
}

static int check_not_reserved(const char *s, char *msg, size_t msglen)
{
    if (strncmp(s, "amq.", 4))
        return 0;
    snprintf(msg, msglen, "'%.60s': names starting with 'amq.' are reserved by RabbitMQ", s);
    return -1;
}

static int parse_log_level(const char *s, int *v)
{
    enum m2a_log_level l;
    if (m2a_log_level_parse(s, &l))
        return -1;
    *v = (int)l;
    return 0;
}

static int parse_log_format(const char *s, int *v)
{
    enum m2a_log_format f;
    if (m2a_log_format_parse(s, &f))
        return -1;
    *v = (int)f;
    return 0;
}

/* ---- section checks ------------------------------------------------------- */

static const char *const builtin_exchanges[] = {
    "", "amq.direct", "amq.topic", "amq.fanout", "amq.headers", "amq.match", "amq.rabbitmq.trace",
};

/* NULL if name is built in, else the declared exchange, else NULL with *ok
 * false. */
static const struct m2a_conf_exchange *find_exchange(struct ctx *c, const char *name, bool *ok)
{
    *ok = true;
    for (size_t i = 0; i < sizeof(builtin_exchanges) / sizeof(builtin_exchanges[0]); i++)
        if (!strcmp(name, builtin_exchanges[i]))
            return NULL;
    for (size_t i = 0; i < c->cfg->amqp.nexchanges; i++)
        if (c->cfg->amqp.exchanges[i].name && !strcmp(name, c->cfg->amqp.exchanges[i].name))
            return &c->cfg->amqp.exchanges[i];
    *ok = false;
    return NULL;
}

static int check_client(struct ctx *c, const struct section *sec, yaml_node_t *map,
                        const char *path, yaml_node_t **found, int min_ms, int max_ms)
{
    yaml_node_t *pw = found_of(sec, found, "password");
    yaml_node_t *pwf = found_of(sec, found, "password_file");
    if (pw && pwf)
        return fail(c, at(pwf), "%s: password and password_file are mutually exclusive", path);
    if (min_ms > max_ms) {
        yaml_node_t *n = found_of(sec, found, "reconnect_max_ms");
        if (!n)
            n = found_of(sec, found, "reconnect_min_ms");
        return fail(c, at(n ? n : map), "%s: reconnect_max_ms (%d) is below reconnect_min_ms (%d)",
                    path, max_ms, min_ms);
    }
    return 0;
}

static int mqtt_check(struct ctx *c, const struct section *sec, yaml_node_t *map, const char *path,
                      yaml_node_t **found, void *base)
{
    struct m2a_conf_mqtt *m = base;
    int rc = check_client(c, sec, map, path, found, m->reconnect_min_ms, m->reconnect_max_ms);
    if (rc)
        return rc;
    yaml_node_t *pw = found_of(sec, found, "password");
    if (!pw)
        pw = found_of(sec, found, "password_file");
    /* MQTT 3.1.1 forbids a password without a user name; MQTT 5 allows it */
    if (m->protocol == 311 && m->password && !m->username)
        return fail(c, at(pw ? pw : map), "%s: with protocol 311 a password needs a username",
                    path);
    return 0;
}

static int amqp_check(struct ctx *c, const struct section *sec, yaml_node_t *map, const char *path,
                      yaml_node_t **found, void *base)
{
    struct m2a_conf_amqp *a = base;
    return check_client(c, sec, map, path, found, a->reconnect_min_ms, a->reconnect_max_ms);
}

static int tls_check(struct ctx *c, const struct section *sec, yaml_node_t *map, const char *path,
                     yaml_node_t **found, void *base)
{
    struct m2a_conf_tls *t = base;
    (void)sec;
    (void)found;
    if (!t->cert_file != !t->key_file)
        return fail(c, at(map), "%s: cert_file and key_file go together", path);
    return 0;
}

/* drop_oldest frees space by discarding whole segments other than the one
 * being written: with room for fewer than two, it could never free any. */
static int overflow_check(struct ctx *c, const struct section *sec, yaml_node_t *map,
                          const char *path, yaml_node_t **found, const struct m2a_conf_spool *s)
{
    if (s->overflow != M2A_OVERFLOW_DROP_OLDEST || s->max_bytes / 2 >= s->segment_bytes)
        return 0;
    char a[32], b[32];
    yaml_node_t *n = found_of(sec, found, "overflow");
    fmt_size(a, sizeof(a), s->max_bytes);
    fmt_size(b, sizeof(b), s->segment_bytes);
    return fail(c, at(n ? n : map),
                "%s.overflow: drop_oldest discards whole segments, so max_bytes (%s) must be at "
                "least twice segment_bytes (%s)",
                path, a, b);
}

static int spool_check(struct ctx *c, const struct section *sec, yaml_node_t *map, const char *path,
                       yaml_node_t **found, void *base)
{
    struct m2a_conf_spool *s = base;
    if (s->max_bytes >= s->segment_bytes)
        return overflow_check(c, sec, map, path, found, s);
    char a[32], b[32];
    yaml_node_t *n = found_of(sec, found, "max_bytes");
    if (!n)
        n = found_of(sec, found, "segment_bytes");
    fmt_size(a, sizeof(a), s->max_bytes);
    fmt_size(b, sizeof(b), s->segment_bytes);
    return fail(c, at(n ? n : map), "%s: max_bytes (%s) is below segment_bytes (%s)", path, a, b);
}

static int exchange_check(struct ctx *c, const struct section *sec, yaml_node_t *map,
                          const char *path, yaml_node_t **found, void *base)
{
    struct m2a_conf_exchange *e = base;
    (void)map;
    for (struct m2a_conf_exchange *o = c->cfg->amqp.exchanges; o < e; o++)
        if (!strcmp(o->name, e->name))
            return fail(c, at(found_of(sec, found, "name")),
                        "%s.name: exchange '%.60s' is already declared at line %d", path, e->name,
                        o->mark.line);
    return 0;
}

static const struct m2a_conf_arg *find_arg(const struct m2a_conf_arg *args, size_t n,
                                           const char *key)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(args[i].key, key))
            return &args[i];
    return NULL;
}

static int queue_check(struct ctx *c, const struct section *sec, yaml_node_t *map, const char *path,
                       yaml_node_t **found, void *base)
{
    struct m2a_conf_queue *q = base;
    for (struct m2a_conf_queue *o = c->cfg->amqp.queues; o < q; o++)
        if (!strcmp(o->name, q->name))
            return fail(c, at(found_of(sec, found, "name")),
                        "%s.name: queue '%.60s' is already declared at line %d", path, q->name,
                        o->mark.line);
    /* RabbitMQ refuses these at declare time; say so before connecting. */
    const struct m2a_conf_arg *t = find_arg(q->args, q->nargs, "x-queue-type");
    if (t && t->type == M2A_ARG_STRING && !strcmp(t->str, "quorum") &&
        (!q->durable || q->exclusive)) {
        const char *key = q->durable ? "exclusive" : "durable";
        yaml_node_t *n = found_of(sec, found, key);
        return fail(c, at(n ? n : map), "%s.%s: a quorum queue must be durable and not exclusive",
                    path, key);
    }
    return 0;
}

static int binding_check(struct ctx *c, const struct section *sec, yaml_node_t *map,
                         const char *path, yaml_node_t **found, void *base)
{
    struct m2a_conf_binding *b = base;
    yaml_node_t *n = found_of(sec, found, "exchange");
    bool ok;
    (void)map;
    if (!b->exchange[0])
        return fail(c, at(n), "%s.exchange: a queue cannot be bound to the default exchange", path);
    find_exchange(c, b->exchange, &ok);
    if (!ok)
        return fail(c, at(n),
                    "%s.exchange: exchange '%.60s' is not declared in amqp.topology.exchanges "
                    "and is not built in",
                    path, b->exchange);
    return 0;
}

static int route_check(struct ctx *c, const struct section *sec, yaml_node_t *map, const char *path,
                       yaml_node_t **found, void *base)
{
    struct m2a_conf_route *r = base;
    char msg[MSG_LEN] = "";
    bool ok;
    (void)map;
    for (struct m2a_conf_route *o = c->cfg->routes; o < r; o++)
        if (!strcmp(o->name, r->name))
            return fail(c, at(found_of(sec, found, "name")),
                        "%s.name: route name '%.60s' is already used at line %d", path, r->name,
                        o->mark.line);
    if (m2a_topic_filter_validate(r->topic, msg, sizeof(msg)))
        return fail(c, at(found_of(sec, found, "topic")), "%s.topic: %s", path,
                    msg[0] ? msg : "invalid topic filter");
    int ncap = m2a_topic_filter_wildcards(r->topic);
    if (r->routing_key && m2a_routes_template_check(r->routing_key, ncap, msg, sizeof(msg)))
        return fail(c, at(found_of(sec, found, "routing_key")), "%s.routing_key: %s", path,
                    msg[0] ? msg : "invalid template");
    for (size_t i = 0; i < r->nheaders; i++)
        if (m2a_routes_template_check(r->headers[i].value, ncap, msg, sizeof(msg)))
            return fail(c, r->headers[i].mark, "%s.headers.%.60s: %s", path, r->headers[i].key,
                        msg[0] ? msg : "invalid template");
    const struct m2a_conf_exchange *e = find_exchange(c, r->exchange, &ok);
    yaml_node_t *n = found_of(sec, found, "exchange");
    if (!ok)
        return fail(c, at(n),
                    "%s.exchange: exchange '%.60s' is not declared in amqp.topology.exchanges "
                    "and is not built in",
                    path, r->exchange);
    if (e && e->internal)
        return fail(c, at(n), "%s.exchange: exchange '%.60s' is internal: nobody can publish to it",
                    path, r->exchange);
    /* The default says dead_letter too, but means "dropped" without the
     * section; only asking for it explicitly needs the section. */
    yaml_node_t *u = found_of(sec, found, "unroutable");
    if (u && r->unroutable == M2A_UNROUTABLE_DEAD_LETTER && !c->cfg->dead_letter.enabled)
        return fail(c, at(u),
                    "%s.unroutable: dead_letter needs a top-level dead_letter section naming "
                    "the exchange",
                    path);
    return 0;
}

/* The dead-letter exchange is checked like a route's: it must exist and
 * take publishes. */
static int dead_letter_check(struct ctx *c, const struct section *sec, yaml_node_t *map,
                             const char *path, yaml_node_t **found, void *base)
{
    struct m2a_conf_dead_letter *d = base;
    bool ok;
    (void)map;
    const struct m2a_conf_exchange *e = find_exchange(c, d->exchange, &ok);
    yaml_node_t *n = found_of(sec, found, "exchange");
    if (!ok)
        return fail(c, at(n),
                    "%s.exchange: exchange '%.60s' is not declared in amqp.topology.exchanges "
                    "and is not built in",
                    path, d->exchange);
    if (e && e->internal)
        return fail(c, at(n), "%s.exchange: exchange '%.60s' is internal: nobody can publish to it",
                    path, d->exchange);
    return 0;
}

static int top_check(struct ctx *c, const struct section *sec, yaml_node_t *map, const char *path,
                     yaml_node_t **found, void *base)
{
    yaml_node_t *routes = found_of(sec, found, "routes");
    (void)path;
    (void)base;
    if (!c->cfg->nroutes)
        return fail(c, at(routes ? routes : map), "no routes: nothing to bridge");
    return 0;
}

/* ---- the schema ------------------------------------------------------------ */

#define STR(st, k, f, d, fl, h)                                                                    \
    {                                                                                              \
        .name = k, .type = OPT_STR, .off = offsetof(st, f), .count_off = NO_OFF, .def = d,         \
        .flags = fl, .help = h                                                                     \
    }
#define STRC(st, k, f, d, fl, chk, h)                                                              \
    {                                                                                              \
        .name = k, .type = OPT_STR, .off = offsetof(st, f), .count_off = NO_OFF, .def = d,         \
        .flags = fl, .check = chk, .help = h                                                       \
    }
#define INT(st, k, f, d, lo, hi, h)                                                                \
    {                                                                                              \
        .name = k, .type = OPT_INT, .off = offsetof(st, f), .count_off = NO_OFF, .def = d,         \
        .min = lo, .max = hi, .help = h                                                            \
    }
#define BOOL(st, k, f, d, h)                                                                       \
    {                                                                                              \
        .name = k, .type = OPT_BOOL, .off = offsetof(st, f), .count_off = NO_OFF, .def = d,        \
        .help = h                                                                                  \
    }
#define SIZE(st, k, f, d, lo, hi, h)                                                               \
    {                                                                                              \
        .name = k, .type = OPT_SIZE, .off = offsetof(st, f), .count_off = NO_OFF, .def = d,        \
        .min = lo, .max = hi, .help = h                                                            \
    }
#define DURATION(st, k, f, d, lo, hi, h)                                                           \
    {                                                                                              \
        .name = k, .type = OPT_DURATION, .off = offsetof(st, f), .count_off = NO_OFF, .def = d,    \
        .min = lo, .max = hi, .help = h                                                            \
    }
#define ENUM(st, k, f, d, ch, fn, h)                                                               \
    {                                                                                              \
        .name = k, .type = OPT_ENUM, .off = offsetof(st, f), .count_off = NO_OFF, .def = d,        \
        .choices = ch, .parse = fn, .help = h                                                      \
    }
#define SECRET_FILE(st, k, f, h)                                                                   \
    {                                                                                              \
        .name = k, .type = OPT_SECRET_FILE, .off = offsetof(st, f), .count_off = NO_OFF, .help = h \
    }
#define SECTION(st, k, f, s, h)                                                                    \
    {                                                                                              \
        .name = k, .type = OPT_SECTION, .off = offsetof(st, f), .count_off = NO_OFF, .sub = &s,    \
        .help = h                                                                                  \
    }
#define LIST(st, k, f, n, s, h)                                                                    \
    {                                                                                              \
        .name = k, .type = OPT_LIST, .off = offsetof(st, f), .count_off = offsetof(st, n),         \
        .sub = &s, .help = h                                                                       \
    }
#define ARGS(st, k, f, n, h)                                                                       \
    {                                                                                              \
        .name = k, .type = OPT_ARGS, .off = offsetof(st, f), .count_off = offsetof(st, n),         \
        .help = h                                                                                  \
    }
#define MAP(st, k, f, n, h)                                                                        \
    {                                                                                              \
        .name = k, .type = OPT_MAP, .off = offsetof(st, f), .count_off = offsetof(st, n),          \
        .help = h                                                                                  \
    }
#define NOPTS(a) (sizeof(a) / sizeof((a)[0]))

#define MS_MAX 3600000
#define KiB    ((int64_t)1 << 10)
#define GiB    ((int64_t)1 << 30)
#define DAY_MS ((int64_t)86400 * 1000)
#define RO     (F_NULLABLE | F_NONEMPTY) /* optional, but not "" when given */

static const struct choice protocols[] = {{"311", 311}, {"5", 5}, {NULL, 0}};
static const struct choice mqtt_headers[] = {{"all", M2A_MQTT_HEADERS_ALL},
                                             {"topic", M2A_MQTT_HEADERS_TOPIC},
                                             {"none", M2A_MQTT_HEADERS_NONE},
                                             {NULL, 0}};
static const struct choice fsyncs[] = {{"batch", M2A_FSYNC_BATCH},
                                       {"interval", M2A_FSYNC_INTERVAL},
                                       {"never", M2A_FSYNC_NEVER},
                                       {NULL, 0}};
static const struct choice overflows[] = {
    {"block", M2A_OVERFLOW_BLOCK}, {"drop_oldest", M2A_OVERFLOW_DROP_OLDEST}, {NULL, 0}};
static const struct choice unroutables[] = {{"dead_letter", M2A_UNROUTABLE_DEAD_LETTER},
                                            {"drop", M2A_UNROUTABLE_DROP},
                                            {"retry", M2A_UNROUTABLE_RETRY},
                                            {NULL, 0}};
static const struct choice levels[] = {
    {"error", 0}, {"warn", 0}, {"info", 0}, {"debug", 0}, {NULL, 0}};
static const struct choice formats[] = {{"text", 0}, {"json", 0}, {NULL, 0}};

#define T struct m2a_conf_tls
static const struct opt tls_opts[] = {
    STRC(T, "ca_file", ca_file, NULL, RO, check_readable, "CA certificates, PEM"),
    STRC(T, "cert_file", cert_file, NULL, RO, check_readable, "client certificate, PEM"),
    STRC(T, "key_file", key_file, NULL, RO, check_readable, "client private key, PEM"),
    BOOL(T, "verify_hostname", verify_hostname, "true", "check the server certificate's name"),
};
static const struct section tls_section = {tls_opts, NOPTS(tls_opts),      0,
                                           NO_OFF,   offsetof(T, enabled), tls_check};
#undef T

#define T struct m2a_conf_mqtt
static const struct opt mqtt_opts[] = {
    STR(T, "host", host, "127.0.0.1", F_NONEMPTY, "MQTT broker host"),
    INT(T, "port", port, "1883", 1, 65535, "MQTT broker TCP port"),
    STR(T, "client_id", client_id, "mqtt2amqp", F_NONEMPTY, "fixed client id of the session"),
    BOOL(T, "clean_session", clean_session, "false", "false keeps a persistent session"),
    INT(T, "keepalive", keepalive, "30", 5, 65535, "seconds between MQTT pings"),
    ENUM(T, "protocol", protocol, "5", protocols, NULL, "MQTT version: 311 or 5"),
    STR(T, "username", username, NULL, F_NULLABLE, "MQTT user name"),
    STR(T, "password", password, NULL, F_NULLABLE | F_SECRET, "MQTT password"),
    SECRET_FILE(T, "password_file", password, "file holding the MQTT password"),
    INT(T, "receive_maximum", receive_maximum, "65535", 1, 65535,
        "MQTT 5 in-flight messages the broker may send"),
    {.name = "session_expiry",
     .type = OPT_U32,
     .off = offsetof(T, session_expiry),
     .count_off = NO_OFF,
     .def = "604800",
     .min = 0,
     .max = UINT32_MAX,
     .help = "MQTT 5 session expiry interval, seconds"},
    STRC(T, "share_group", share_group, NULL, RO, check_share_group,
         "subscribe as $share/GROUP/filter"),
    INT(T, "reconnect_min_ms", reconnect_min_ms, "100", 1, MS_MAX, "first reconnect delay, ms"),
    INT(T, "reconnect_max_ms", reconnect_max_ms, "30000", 1, MS_MAX, "longest reconnect delay, ms"),
    SECTION(T, "tls", tls, tls_section, "TLS to the MQTT broker"),
};
static const struct section mqtt_section = {mqtt_opts, NOPTS(mqtt_opts), 0,
                                            NO_OFF,    NO_OFF,           mqtt_check};
#undef T

#define T struct m2a_conf_exchange
static const struct opt exchange_opts[] = {
    STRC(T, "name", name, NULL, F_REQUIRED | F_NONEMPTY, check_not_reserved, "exchange name"),
    STRC(T, "type", type, "topic", F_NONEMPTY, check_exchange_type, "exchange type"),
    BOOL(T, "durable", durable, "true", "survives a broker restart"),
    BOOL(T, "auto_delete", auto_delete, "false", "deleted when its last binding goes"),
    BOOL(T, "internal", internal, "false", "only other exchanges may publish to it"),
    ARGS(T, "arguments", args, nargs, "x-arguments"),
};
static const struct section exchange_section = {
    exchange_opts, NOPTS(exchange_opts), sizeof(T), offsetof(T, mark), NO_OFF, exchange_check};
#undef T

#define T struct m2a_conf_binding
static const struct opt binding_opts[] = {
    STR(T, "exchange", exchange, NULL, F_REQUIRED, "source exchange"),
    STR(T, "routing_key", routing_key, "#", 0, "binding key"),
    ARGS(T, "arguments", args, nargs, "binding arguments (headers exchanges)"),
};
static const struct section binding_section = {
    binding_opts, NOPTS(binding_opts), sizeof(T), offsetof(T, mark), NO_OFF, binding_check};
#undef T

#define T struct m2a_conf_queue
static const struct opt queue_opts[] = {
    STRC(T, "name", name, NULL, F_REQUIRED | F_NONEMPTY, check_not_reserved, "queue name"),
    BOOL(T, "durable", durable, "true", "survives a broker restart"),
    BOOL(T, "exclusive", exclusive, "false", "used by one connection only"),
    BOOL(T, "auto_delete", auto_delete, "false", "deleted when its last consumer goes"),
    ARGS(T, "arguments", args, nargs, "x-arguments, e.g. x-queue-type: quorum"),
    LIST(T, "bindings", bindings, nbindings, binding_section, "what the queue receives"),
};
static const struct section queue_section = {
    queue_opts, NOPTS(queue_opts), sizeof(T), offsetof(T, mark), NO_OFF, queue_check};
#undef T

#define T struct m2a_conf_amqp
/* Exchanges come before queues: bindings are checked against them. */
static const struct opt topology_opts[] = {
    LIST(T, "exchanges", exchanges, nexchanges, exchange_section, "exchanges to declare"),
    LIST(T, "queues", queues, nqueues, queue_section, "queues to declare and bind"),
};
static const struct section topology_section = {
    topology_opts, NOPTS(topology_opts), 0, NO_OFF, NO_OFF, NULL};

static const struct opt amqp_opts[] = {
    STR(T, "host", host, "127.0.0.1", F_NONEMPTY, "RabbitMQ host"),
    INT(T, "port", port, "5672", 1, 65535, "RabbitMQ TCP port"),
    STR(T, "vhost", vhost, "/", F_NONEMPTY, "virtual host"),
    STR(T, "username", username, "guest", F_NONEMPTY, "AMQP user name"),
    STR(T, "password", password, "guest", F_SECRET, "AMQP password"),
    SECRET_FILE(T, "password_file", password, "file holding the AMQP password"),
    INT(T, "heartbeat", heartbeat, "30", 0, 3600, "AMQP heartbeat, seconds, 0 disables"),
    INT(T, "confirm_window", confirm_window, "1000", 1, 65535,
        "most unconfirmed publishes in flight"),
    INT(T, "reconnect_min_ms", reconnect_min_ms, "100", 1, MS_MAX, "first reconnect delay, ms"),
    INT(T, "reconnect_max_ms", reconnect_max_ms, "30000", 1, MS_MAX, "longest reconnect delay, ms"),
    ENUM(T, "mqtt_headers", mqtt_headers, "all", mqtt_headers, NULL,
         "x-mqtt-* headers on each message: all, topic or none"),
    SECTION(T, "tls", tls, tls_section, "TLS to RabbitMQ"),
    /* offset 0: the topology's lists live in struct m2a_conf_amqp itself */
    {.name = "topology",
     .type = OPT_SECTION,
     .off = 0,
     .count_off = NO_OFF,
     .sub = &topology_section,
     .help = "exchanges and queues declared at connect"},
};
static const struct section amqp_section = {amqp_opts, NOPTS(amqp_opts), 0,
                                            NO_OFF,    NO_OFF,           amqp_check};
#undef T

#define T struct m2a_conf_spool
static const struct opt spool_opts[] = {
    STR(T, "dir", dir, "/var/lib/mqtt2amqp", F_NONEMPTY, "spool directory"),
    SIZE(T, "max_bytes", max_bytes, "1GiB", 64 * KiB, INT64_MAX, "spool size limit"),
    SIZE(T, "segment_bytes", segment_bytes, "64MiB", 64 * KiB, GiB, "segment file size"),
    ENUM(T, "fsync", fsync, "batch", fsyncs, NULL, "when appends are fsynced"),
    ENUM(T, "overflow", overflow, "block", overflows, NULL, "when full: block or drop_oldest"),
    DURATION(T, "max_age", max_age_ms, "0", 0, 10 * DAY_MS * 365,
             "records older than this are dead-lettered, 0 never"),
};
static const struct section spool_section = {spool_opts, NOPTS(spool_opts), 0, NO_OFF,
                                             NO_OFF,     spool_check};
#undef T

#define T struct m2a_conf_dead_letter
static const struct opt dead_letter_opts[] = {
    STR(T, "exchange", exchange, NULL, F_REQUIRED, "dead-letter exchange, \"\" for the default"),
    STRC(T, "routing_key", routing_key, "{route}", 0, m2a_policy_key_check,
         "template of {route} and {reason}"),
    INT(T, "max_retries", max_retries, "10", 0, 1000000,
        "re-publishes after a nack before dead-lettering"),
};
static const struct section dead_letter_section = {
    dead_letter_opts,  NOPTS(dead_letter_opts), 0,
    offsetof(T, mark), offsetof(T, enabled),    dead_letter_check};
#undef T

#define T struct m2a_conf_route
static const struct opt route_opts[] = {
    STR(T, "name", name, NULL, F_REQUIRED | F_NONEMPTY, "unique route name"),
    STR(T, "topic", topic, NULL, F_REQUIRED | F_NONEMPTY, "MQTT topic filter"),
    STR(T, "exchange", exchange, NULL, F_REQUIRED, "target exchange, \"\" for the default"),
    STR(T, "routing_key", routing_key, NULL, RO, "routing key template"),
    BOOL(T, "persistent", persistent, "true", "delivery mode 2"),
    STR(T, "content_type", content_type, NULL, RO, "AMQP content_type property"),
    MAP(T, "headers", headers, nheaders, "AMQP headers, values are templates"),
    BOOL(T, "continue", cont, "false", "keep matching later routes"),
    ENUM(T, "unroutable", unroutable, "dead_letter", unroutables, NULL,
         "on basic.return: dead_letter, drop or retry"),
};
static const struct section route_section = {
    route_opts, NOPTS(route_opts), sizeof(T), offsetof(T, mark), NO_OFF, route_check};
#undef T

#define T struct m2a_conf_log
static const struct opt log_opts[] = {
    ENUM(T, "level", level, "info", levels, parse_log_level, "error, warn, info or debug"),
    ENUM(T, "format", format, "text", formats, parse_log_format, "text or json"),
    INT(T, "stats_interval", stats_interval, "30", 0, 86400, "seconds between stats lines, 0 off"),
};
static const struct section log_section = {log_opts, NOPTS(log_opts), 0, NO_OFF, NO_OFF, NULL};
#undef T

#define T struct m2a_conf_metrics
static const struct opt metrics_opts[] = {
    STRC(T, "listen", listen, "127.0.0.1:9464", F_NONEMPTY, check_listen,
         "HOST:PORT of /metrics, /healthz and /readyz"),
};
static const struct section metrics_section = {metrics_opts, NOPTS(metrics_opts),  0,
                                               NO_OFF,       offsetof(T, enabled), NULL};
#undef T

#define T struct m2a_config
/* amqp before routes: routes are checked against the declared exchanges. */
static const struct opt top_opts[] = {
    SECTION(T, "mqtt", mqtt, mqtt_section, "the MQTT side"),
    SECTION(T, "amqp", amqp, amqp_section, "the RabbitMQ side"),
    SECTION(T, "spool", spool, spool_section, "the on-disk retry queue"),
    SECTION(T, "dead_letter", dead_letter, dead_letter_section, "undeliverable messages"),
    LIST(T, "routes", routes, nroutes, route_section, "MQTT filter -> exchange mappings"),
    SECTION(T, "log", log, log_section, "logging"),
    SECTION(T, "metrics", metrics, metrics_section, "Prometheus metrics and health endpoints"),
    INT(T, "shutdown_timeout", shutdown_timeout, "10", 0, 3600,
        "seconds to drain the spool on shutdown"),
};
static const struct section top_section = {top_opts, NOPTS(top_opts), 0, NO_OFF, NO_OFF, top_check};
#undef T

/* ---- loading --------------------------------------------------------------- */

static int yaml_fail(struct ctx *c, const yaml_parser_t *p, const char *data, size_t len)
{
    struct m2a_conf_mark m = {(int)p->problem_mark.line + 1, (int)p->problem_mark.column + 1};
    const char *problem = p->problem ? p->problem : "cannot parse";
    if (p->error == YAML_MEMORY_ERROR)
        return fail(c, (struct m2a_conf_mark){1, 1}, "out of memory while parsing");
    if (p->error == YAML_READER_ERROR) {
        /* the reader reports a byte offset, not a mark */
        m = (struct m2a_conf_mark){1, 1};
        for (size_t i = 0; i < p->problem_offset && i < len; i++) {
            m.column++;
            if (data[i] == '\n')
                m = (struct m2a_conf_mark){m.line + 1, 1};
        }
        return fail(c, m, "invalid YAML: %s", problem);
    }
    if (p->context) {
        struct m2a_conf_mark cm = {(int)p->context_mark.line + 1, (int)p->context_mark.column + 1};
        cm = clamp_to_end(cm, data, len);
        return fail(c, m, "invalid YAML: %s (%s at line %d, column %d)", problem, p->context,
                    cm.line, cm.column);
    }
    return fail(c, m, "invalid YAML: %s", problem);
}

int m2a_config_load_buffer(const char *name, const char *data, size_t len, struct m2a_config **out,
                           char *err, size_t errlen)
{
    char scratch[1];
    struct ctx c = {.name = name,
                    .data = data,
                    .len = len,
                    .err = err && errlen ? err : scratch,
                    .errlen = err && errlen ? errlen : sizeof(scratch)};
    yaml_parser_t parser;
    yaml_document_t doc, extra;
    bool have_doc = false, have_extra = false;
    int rc;

    c.err[0] = '\0';
    *out = NULL;
    struct m2a_config *cfg = xcalloc(1, sizeof(*cfg));
    cfg->path = xstrdup(name);
    apply_defaults(&top_section, (char *)cfg);
    c.cfg = cfg;
    c.doc = &doc;

    if (!yaml_parser_initialize(&parser))
        abort(); /* only fails on out of memory */
    yaml_parser_set_input_string(&parser, (const unsigned char *)data, len);
    if (!yaml_parser_load(&parser, &doc)) {
        rc = yaml_fail(&c, &parser, data, len);
        goto out;
    }
    have_doc = true;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root) {
        rc = fail(&c, (struct m2a_conf_mark){1, 1},
                  "the document is empty: no routes: "
                  "nothing to bridge");
        goto out;
    }
    if (!yaml_parser_load(&parser, &extra)) {
        rc = yaml_fail(&c, &parser, data, len);
        goto out;
    }
    have_extra = true;
    if (yaml_document_get_root_node(&extra)) {
        rc = fail(&c,
                  (struct m2a_conf_mark){(int)extra.start_mark.line + 1,
                                         (int)extra.start_mark.column + 1},
                  "only one YAML document is allowed");
        goto out;
    }
    rc = walk_map(&c, root, "", &top_section, cfg, NULL);
out:
    if (have_extra)
        yaml_document_delete(&extra);
    if (have_doc)
        yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    if (rc)
        m2a_config_free(cfg);
    else
        *out = cfg;
    return rc;
}

int m2a_config_load(const char *path, struct m2a_config **out, char *err, size_t errlen)
{
    char scratch[1];
    char *e = err && errlen ? err : scratch;
    size_t elen = err && errlen ? errlen : sizeof(scratch);
    struct m2a_buf buf = {0};
    int rc = M2A_ERR_IO;

    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(e, elen, "%s: cannot open: %s", path, strerror(errno));
        return M2A_ERR_IO;
    }
    for (;;) {
        m2a_buf_reserve(&buf, 65536);
        ssize_t n = read(fd, buf.data + buf.len, buf.cap - buf.len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(e, elen, "%s: cannot read: %s", path, strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        buf.len += (size_t)n;
        if (buf.len > MAX_FILE_BYTES) {
            snprintf(e, elen, "%s:1:1: file is larger than %u MiB", path, MAX_FILE_BYTES >> 20);
            rc = M2A_ERR_CONFIG;
            goto out;
        }
    }
    rc = m2a_config_load_buffer(path, (const char *)buf.data, buf.len, out, err, errlen);
out:
    close(fd);
    m2a_buf_free(&buf);
    return rc;
}

void m2a_config_free(struct m2a_config *cfg)
{
    if (!cfg)
        return;
    if (cfg->mqtt.password) /* secrets do not linger in freed memory */
        explicit_bzero(cfg->mqtt.password, strlen(cfg->mqtt.password));
    if (cfg->amqp.password)
        explicit_bzero(cfg->amqp.password, strlen(cfg->amqp.password));
    free_section(&top_section, (char *)cfg);
    free(cfg->path);
    free(cfg);
}
