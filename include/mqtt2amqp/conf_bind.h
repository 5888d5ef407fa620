/* conf_bind.h - the generic YAML binder: fills a C struct from a YAML file
 * through a table of options.
 *
 * A schema is a tree of sections; a section is an array of options (struct
 * m2a_bind_opt), each naming its key, its type, where its value lives in
 * the section's struct, a default written in the file's own syntax (and
 * converted by the same code as the file's values), bounds, and a line of
 * help. The same tables drive defaults, parsing and freeing, so a new key is
 * one table line, and a new list of sections is one line plus its table.
 * Rules that span several keys are a section's check function, which sees
 * the filled struct and can point at any key of its mapping.
 *
 * The binder owns the YAML side: libyaml's document API, unknown keys (with
 * "did you mean"), duplicate keys, wrong types, bounds, ${VAR} and
 * ${VAR:-default} expansion in every string, secrets read from files, and
 * every error as "FILE:LINE:COLUMN: PATH: message" (1-based). It knows
 * nothing of any particular schema: mqtt2amqp's keys are in config.c.
 *
 * Options are applied in table order, not file order, so a check can rely on
 * an earlier option (or section) being filled wherever it appears in the
 * file. Runs on the caller's thread; no global state. */
#ifndef MQTT2AMQP_CONF_BIND_H
#define MQTT2AMQP_CONF_BIND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A position in the file, 1-based, for messages after loading. */
struct m2a_conf_mark {
    int line;
    int column;
};

enum m2a_arg_type { M2A_ARG_STRING, M2A_ARG_INT, M2A_ARG_BOOL };

/* An AMQP table entry (M2A_BIND_ARGS): a plain integer is an int, plain
 * true/false a bool, anything else (and anything quoted) a string. */
struct m2a_conf_arg {
    char *key;
    enum m2a_arg_type type;
    char *str;   /* M2A_ARG_STRING */
    int64_t num; /* M2A_ARG_INT */
    bool flag;   /* M2A_ARG_BOOL */
};

/* A string-to-string mapping entry (M2A_BIND_MAP). */
struct m2a_conf_kv {
    char *key;
    char *value;
    struct m2a_conf_mark mark; /* where the value is */
};

enum m2a_bind_type {
    M2A_BIND_T_STR,         /* char *; .max: most bytes (0: no limit) */
    M2A_BIND_T_INT,         /* int, within .min .. .max */
    M2A_BIND_T_U32,         /* uint32_t, within .min .. .max */
    M2A_BIND_T_BOOL,        /* bool: true or false, nothing else */
    M2A_BIND_T_SIZE,        /* uint64_t bytes: a number with an optional B/KiB/MiB/GiB/TiB */
    M2A_BIND_T_DURATION,    /* uint64_t ms: a number with ms/s/m/h/d (plain: seconds) */
    M2A_BIND_T_ENUM,        /* an enum (int-sized): one name of .choices */
    M2A_BIND_T_SECRET_FILE, /* char * at .off (another option's field), read from the named file;
                               .max: most bytes of the secret */
    M2A_BIND_T_STRS,        /* char *[] at .off, size_t count at .count_off: a sequence of
                               strings, each checked like M2A_BIND_T_STR */
    M2A_BIND_T_MAP,         /* struct m2a_conf_kv[]; .max: most bytes of a key */
    M2A_BIND_T_ARGS,        /* struct m2a_conf_arg[]; .max: most bytes of a key */
    M2A_BIND_T_SECTION,     /* a nested mapping: struct at .off described by .sub */
    M2A_BIND_T_LIST,        /* a sequence of mappings: .sub structs at .off, count at .count_off */
};

#define M2A_BIND_REQUIRED 1u /* the key must be present */
#define M2A_BIND_NONEMPTY 2u /* "" is refused */
#define M2A_BIND_NULLABLE 4u /* an empty value (YAML null) leaves the string NULL */
#define M2A_BIND_SECRET   8u /* never in a message; zeroed before it is freed */

struct m2a_bind_choice {
    const char *name;
    int value;
};

struct m2a_bind_section;
struct m2a_bind_scope;

struct m2a_bind_opt {
    const char *name;
    enum m2a_bind_type type;
    size_t off;       /* of the value, in the section's struct */
    size_t count_off; /* STRS, MAP, ARGS, LIST: of the size_t count */
    const char *def;  /* default in the file's syntax; NULL: zero / NULL */
    int64_t min, max; /* see the types */
    unsigned flags;
    const struct m2a_bind_choice *choices; /* ENUM: ends with {NULL, 0} */
    /* ENUM: the value of a name in choices, when another module owns the
     * mapping (choices then only list the names). 0 or -1. */
    int (*parse)(const char *s, int *v);
    const struct m2a_bind_section *sub; /* SECTION, LIST */
    /* STR, STRS: a rule on the (expanded) value: 0, or -1 with a sentence in msg. */
    int (*check)(const char *s, char *msg, size_t msglen);
    /* STR in the section of a LIST's items (M2A_BIND_ITEMS): the value must
     * differ from the same option's value in every earlier item ("<unique>
     * 'x' is already <verb> at line N", the line of the earlier item). */
    const char *unique;
    const char *unique_verb; /* default "used" */
    const char *help;
};

/* A section's own rules, run after its options are filled: 0, or the
 * return value of m2a_bind_fail*. base is the section's struct. */
typedef int (*m2a_bind_check_fn)(const struct m2a_bind_scope *s, void *base);

struct m2a_bind_section {
    const struct m2a_bind_opt *opts;
    size_t nopts;
    size_t size;    /* LIST: the size of one item */
    size_t mark;    /* 0, or M2A_BIND_MARK(): where the mapping's position is stored */
    size_t present; /* 0, or M2A_BIND_PRESENT(): a bool set when the key is in the file */
    m2a_bind_check_fn check;
};

/* ---- table lines -----------------------------------------------------------
 * M2A_BIND_X(STRUCT, "key", field, ..., "help" [, .designated = extras]):
 * each checks at compile time that the field has the type the binder
 * writes. Extras are any other option fields: .max, .check, .unique... */

#define M2A_BIND_FIELD_(st, f, T) _Generic(((st *)0)->f, T : offsetof(st, f))
#define M2A_BIND_COUNT_(st, n)    M2A_BIND_FIELD_(st, n, size_t)

#define M2A_BIND_STR(st, k, f, d, fl, ...)                                                         \
    {                                                                                              \
        .name = k, .type = M2A_BIND_T_STR, .off = M2A_BIND_FIELD_(st, f, char *), .def = d,        \
        .flags = fl, .help = __VA_ARGS__                                                           \
    }
#define M2A_BIND_INT(st, k, f, d, lo, hi, ...)                                                     \
    {                                                                                              \
        .name = k, .type = M2A_BIND_T_INT, .off = M2A_BIND_FIELD_(st, f, int), .def = d,           \
        .min = lo, .max = hi, .help = __VA_ARGS__                                                  \
    }
#define M2A_BIND_U32(st, k, f, d, lo, hi, ...)                                                     \
    {                                                                                              \
        .name = k, .type = M2A_BIND_T_U32, .off = M2A_BIND_FIELD_(st, f, uint32_t), .def = d,      \
        .min = lo, .max = hi, .help = __VA_ARGS__                                                  \
    }
#define M2A_BIND_BOOL(st, k, f, d, ...)                                                            \
    {                                                                                              \
        .name = k, .type = M2A_BIND_T_BOOL, .off = M2A_BIND_FIELD_(st, f, bool), .def = d,         \
        .help = __VA_ARGS__                                                                        \
    }
#define M2A_BIND_SIZE(st, k, f, d, lo, hi, ...)                                                    \
    {                                                                                              \
        .name = k, .type = M2A_BIND_T_SIZE, .off = M2A_BIND_FIELD_(st, f, uint64_t), .def = d,     \
        .min = lo, .max = hi, .help = __VA_ARGS__                                                  \
    }
#define M2A_BIND_DURATION(st, k, f, d, lo, hi, ...)                                                \
    {                                                                                              \
        .name = k, .type = M2A_BIND_T_DURATION, .off = M2A_BIND_FIELD_(st, f, uint64_t), .def = d, \
        .min = lo, .max = hi, .help = __VA_ARGS__                                                  \
    }
/* Any enum the compiler stores as an int or an unsigned int (every enum
 * whose values fit an int, on the compilers we build with). */
#define M2A_BIND_ENUM(st, k, f, d, ch, ...)                                                        \
    {                                                                                              \
        .name = k, .type = M2A_BIND_T_ENUM,                                                        \
        .off = _Generic(((st *)0)->f, int                                                          \
                        : offsetof(st, f), unsigned                                                \
                        : offsetof(st, f)),                                                        \
        .def = d, .choices = ch, .help = __VA_ARGS__                                               \
    }
#define M2A_BIND_SECRET_FILE(st, k, f, ...)                                                        \
    {                                                                                              \
        .name = k, .type = M2A_BIND_T_SECRET_FILE, .off = M2A_BIND_FIELD_(st, f, char *),          \
        .help = __VA_ARGS__                                                                        \
    }
#define M2A_BIND_STRS(st, k, f, n, fl, ...)                                                        \
    {                                                                                              \
        .name = k, .type = M2A_BIND_T_STRS, .off = M2A_BIND_FIELD_(st, f, char **),                \
        .count_off = M2A_BIND_COUNT_(st, n), .flags = fl, .help = __VA_ARGS__                      \
    }
#define M2A_BIND_MAP(st, k, f, n, ...)                                                             \
    {                                                                                              \
        .name = k, .type = M2A_BIND_T_MAP, .off = M2A_BIND_FIELD_(st, f, struct m2a_conf_kv *),    \
        .count_off = M2A_BIND_COUNT_(st, n), .help = __VA_ARGS__                                   \
    }
#define M2A_BIND_ARGS(st, k, f, n, ...)                                                            \
    {                                                                                              \
        .name = k, .type = M2A_BIND_T_ARGS, .off = M2A_BIND_FIELD_(st, f, struct m2a_conf_arg *),  \
        .count_off = M2A_BIND_COUNT_(st, n), .help = __VA_ARGS__                                   \
    }
#define M2A_BIND_SECTION(st, k, f, s, ...)                                                         \
    {                                                                                              \
        .name = k, .type = M2A_BIND_T_SECTION, .off = offsetof(st, f), .sub = &(s),                \
        .help = __VA_ARGS__                                                                        \
    }
/* A nested mapping whose keys fill the enclosing struct itself. */
#define M2A_BIND_INLINE(k, s, ...)                                                                 \
    {                                                                                              \
        .name = k, .type = M2A_BIND_T_SECTION, .off = 0, .sub = &(s), .help = __VA_ARGS__          \
    }
#define M2A_BIND_LIST(st, k, f, n, s, ...)                                                         \
    {                                                                                              \
        .name = k, .type = M2A_BIND_T_LIST, .off = offsetof(st, f),                                \
        .count_off = M2A_BIND_COUNT_(st, n), .sub = &(s), .help = __VA_ARGS__                      \
    }

/* .choices of an ENUM option: M2A_BIND_CHOICES({"a", A}, {"b", B}). */
#define M2A_BIND_CHOICES(...) ((const struct m2a_bind_choice[]){__VA_ARGS__, {NULL, 0}})

/* For struct m2a_bind_section: .opts and .nopts of an array of options. */
#define M2A_BIND_OPTS(a) .opts = (a), .nopts = sizeof(a) / sizeof((a)[0])
/* For the section of a LIST's items: its options, the item's size, and the
 * struct m2a_conf_mark field that receives each item's position. */
#define M2A_BIND_ITEMS(st, a, f) M2A_BIND_OPTS(a), .size = sizeof(st), .mark = M2A_BIND_MARK(st, f)
/* Stored plus one, so that 0 means none. */
#define M2A_BIND_MARK(st, f)    (M2A_BIND_FIELD_(st, f, struct m2a_conf_mark) + 1)
#define M2A_BIND_PRESENT(st, f) (M2A_BIND_FIELD_(st, f, bool) + 1)

/* ---- loading ---------------------------------------------------------------- */

/* Sets every option of top to its default, then fills base from the YAML
 * document in data[0..len) (one document; its root a mapping). name is the
 * file name in messages; root is handed to check functions (see
 * m2a_bind_root), normally base. Returns 0, or M2A_ERR_CONFIG with
 * "name:line:column: message" in err (always NUL-terminated when errlen >
 * 0). On failure base may be partly filled: release it with m2a_bind_free
 * either way. */
int m2a_bind_parse(const struct m2a_bind_section *top, void *base, void *root, const char *name,
                   const char *data, size_t len, char *err, size_t errlen);

/* Reads path (at most 16 MiB) into *data (NUL-terminated, the caller
 * frees) and *len. Returns 0; M2A_ERR_IO when it cannot be opened or read
 * ("path: cannot open: reason"); M2A_ERR_CONFIG when it is too large
 * ("path:1:1: ..."). */
int m2a_bind_read_file(const char *path, char **data, size_t *len, char *err, size_t errlen);

/* Frees what m2a_bind_parse stored in base (not base itself); zeroes
 * secrets first. */
void m2a_bind_free(const struct m2a_bind_section *top, void *base);

/* "64KiB", "1GiB", "100B": v in the largest unit that divides it. */
void m2a_bind_format_size(char *dst, size_t len, uint64_t v);

/* ---- for check functions ------------------------------------------------------ */

/* The section's path ("mqtt.tls", "routes[2]"; "" at the top level). */
const char *m2a_bind_path(const struct m2a_bind_scope *s);

/* The root passed to m2a_bind_parse: the whole struct being filled. */
void *m2a_bind_root(const struct m2a_bind_scope *s);

/* Whether key is in this section's mapping in the file. */
bool m2a_bind_has(const struct m2a_bind_scope *s, const char *key);

/* Where the first of the keys (a NULL-terminated list) that is present in
 * the file has its value; the section's own position when none is. */
struct m2a_conf_mark m2a_bind_at(const struct m2a_bind_scope *s, const char *key, ...);

/* Writes "FILE:LINE:COLUMN: message" for m and returns M2A_ERR_CONFIG. */
int m2a_bind_fail(const struct m2a_bind_scope *s, struct m2a_conf_mark m, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The same at key's value (the section's position when absent), the
 * message prefixed with "PATH.KEY: ". */
int m2a_bind_fail_key(const struct m2a_bind_scope *s, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
