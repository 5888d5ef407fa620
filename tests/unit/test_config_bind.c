/* test_config_bind.c - the generic YAML binder (conf_bind.c) alone, through
 * a small schema of its own: every option type, defaults in the file's
 * syntax, a list of strings, a list of sections with a unique key, what a
 * section check sees, and the exact "t.yaml:LINE:COLUMN:" of each error.
 * mqtt2amqp's own schema is tested in test_config*.c. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mqtt2amqp/conf_bind.h"
#include "mqtt2amqp/err.h"
#include "check_main.h"

enum color { RED = 1, GREEN = 2 };

struct item {
    char *name;
    int weight;
    struct m2a_conf_mark mark;
};

struct sub {
    bool present;
    char *word;
    int lo, hi;
};

struct toy {
    char *str;
    int num;
    uint32_t big;
    bool flag;
    uint64_t size;
    uint64_t wait_ms;
    enum color color;
    char *secret;
    char **hosts;
    size_t nhosts;
    struct m2a_conf_kv *labels;
    size_t nlabels;
    struct m2a_conf_arg *args;
    size_t nargs;
    struct sub sub;
    struct item *items;
    size_t nitems;
    int inner; /* filled through an inline section */
};

static int check_no_space(const char *s, char *msg, size_t msglen)
{
    if (!strchr(s, ' '))
        return 0;
    snprintf(msg, msglen, "'%s' has a space", s);
    return -1;
}

/* What a check sees: its path, the root, which keys are present, where. */
static char seen_path[64];
static void *seen_root;

static int sub_check(const struct m2a_bind_scope *s, void *base)
{
    struct sub *sb = base;
    snprintf(seen_path, sizeof(seen_path), "%s", m2a_bind_path(s));
    seen_root = m2a_bind_root(s);
    if (sb->lo > sb->hi)
        return m2a_bind_fail(s, m2a_bind_at(s, "hi", "lo", NULL), "%s: hi (%d) is below lo (%d)",
                             m2a_bind_path(s), sb->hi, sb->lo);
    if (m2a_bind_has(s, "word") && !strcmp(sb->word, "forbidden"))
        return m2a_bind_fail_key(s, "word", "is forbidden");
    return 0;
}

static const struct m2a_bind_choice colors[] = {{"red", RED}, {"green", GREEN}, {NULL, 0}};

#define T struct sub
static const struct m2a_bind_opt sub_opts[] = {
    M2A_BIND_STR(T, "word", word, "hello", M2A_BIND_NONEMPTY, "a word", .max = 9),
    M2A_BIND_INT(T, "lo", lo, "1", 0, 100, "low"),
    M2A_BIND_INT(T, "hi", hi, "10", 0, 100, "high"),
};
static const struct m2a_bind_section sub_section = {
    M2A_BIND_OPTS(sub_opts), .present = M2A_BIND_PRESENT(T, present), .check = sub_check};
#undef T

#define T struct item
static const struct m2a_bind_opt item_opts[] = {
    M2A_BIND_STR(T, "name", name, NULL, M2A_BIND_REQUIRED, "item name", .unique = "item"),
    M2A_BIND_INT(T, "weight", weight, "5", 1, 9, "weight"),
};
static const struct m2a_bind_section item_section = {M2A_BIND_OPTS(item_opts), .size = sizeof(T),
                                                     .mark = M2A_BIND_MARK(T, mark)};
#undef T

#define T struct toy
static const struct m2a_bind_opt inner_opts[] = {
    M2A_BIND_INT(T, "inner", inner, "7", 0, 9, "inner number"),
};
static const struct m2a_bind_section inner_section = {M2A_BIND_OPTS(inner_opts)};

static const struct m2a_bind_opt toy_opts[] = {
    M2A_BIND_STR(T, "str", str, "def", M2A_BIND_NULLABLE, "a string"),
    M2A_BIND_INT(T, "num", num, "-3", -5, 5, "a number"),
    M2A_BIND_U32(T, "big", big, "4000000000", 0, UINT32_MAX, "a big one"),
    M2A_BIND_BOOL(T, "flag", flag, "true", "a flag"),
    M2A_BIND_SIZE(T, "size", size, "2MiB", 1024, 1ll << 40, "a size"),
    M2A_BIND_DURATION(T, "wait", wait_ms, "90s", 0, 86400000, "a wait"),
    M2A_BIND_ENUM(T, "color", color, "green", colors, "a color"),
    M2A_BIND_STR(T, "secret", secret, NULL, M2A_BIND_NULLABLE | M2A_BIND_SECRET, "a secret",
                 .max = 4),
    M2A_BIND_SECRET_FILE(T, "secret_file", secret, "a secret's file", .max = 4),
    M2A_BIND_STRS(T, "hosts", hosts, nhosts, M2A_BIND_NONEMPTY, "host names", .max = 16,
                  .check = check_no_space),
    M2A_BIND_MAP(T, "labels", labels, nlabels, "labels", .max = 3),
    M2A_BIND_ARGS(T, "args", args, nargs, "arguments"),
    M2A_BIND_SECTION(T, "sub", sub, sub_section, "a section"),
    M2A_BIND_LIST(T, "items", items, nitems, item_section, "items"),
    M2A_BIND_INLINE("inline", inner_section, "keys of the toy itself"),
};
static const struct m2a_bind_section toy_section = {M2A_BIND_OPTS(toy_opts)};
#undef T

static char err[512];

static int parse(const char *yaml, struct toy *t)
{
    memset(t, 0, sizeof(*t));
    return m2a_bind_parse(&toy_section, t, t, "t.yaml", yaml, strlen(yaml), err, sizeof(err));
}

static void refuse(const char *yaml, const char *want)
{
    struct toy t;
    ck_assert_int_eq(parse(yaml, &t), M2A_ERR_CONFIG);
    m2a_bind_free(&toy_section, &t);
    ck_assert_str_eq(err, want);
}

START_TEST(defaults_are_written_in_the_files_syntax)
{
    struct toy t;
    ck_assert_int_eq(parse("{}\n", &t), 0);
    ck_assert_str_eq(t.str, "def");
    ck_assert_int_eq(t.num, -3);
    ck_assert_uint_eq(t.big, 4000000000u);
    ck_assert(t.flag);
    ck_assert_uint_eq(t.size, 2u << 20);
    ck_assert_uint_eq(t.wait_ms, 90000);
    ck_assert_int_eq(t.color, GREEN);
    ck_assert_ptr_null(t.secret);
    ck_assert_uint_eq(t.nhosts, 0);
    ck_assert(!t.sub.present);
    ck_assert_str_eq(t.sub.word, "hello");
    ck_assert_int_eq(t.inner, 7);
    m2a_bind_free(&toy_section, &t);
}
END_TEST

START_TEST(every_type_is_bound)
{
    struct toy t;
    setenv("M2A_T_WORD", "hey", 1);
    int rc = parse("str: ~\n"
                   "num: 5\n"
                   "big: 4294967295\n"
                   "flag: false\n"
                   "size: 1 GiB\n"
                   "wait: 500ms\n"
                   "color: red\n"
                   "secret: abcd\n"
                   "hosts: [a, '${M2A_T_WORD}']\n"
                   "labels: {k: v}\n"
                   "args: {n: 1, b: true, s: '1'}\n"
                   "sub: {word: '${M2A_T_WORD}', lo: 2, hi: 2}\n"
                   "items:\n"
                   "  - name: a\n"
                   "  - {name: b, weight: 9}\n"
                   "inline: {inner: 1}\n",
                   &t);
    ck_assert_msg(rc == 0, "%s", err);
    ck_assert_ptr_null(t.str);
    ck_assert_int_eq(t.num, 5);
    ck_assert_uint_eq(t.big, UINT32_MAX);
    ck_assert(!t.flag);
    ck_assert_uint_eq(t.size, 1u << 30);
    ck_assert_uint_eq(t.wait_ms, 500);
    ck_assert_int_eq(t.color, RED);
    ck_assert_str_eq(t.secret, "abcd");
    ck_assert_uint_eq(t.nhosts, 2);
    ck_assert_str_eq(t.hosts[0], "a");
    ck_assert_str_eq(t.hosts[1], "hey");
    ck_assert_uint_eq(t.nlabels, 1);
    ck_assert_str_eq(t.labels[0].value, "v");
    ck_assert_int_eq(t.labels[0].mark.line, 10);
    ck_assert_int_eq(t.labels[0].mark.column, 13);
    ck_assert_uint_eq(t.nargs, 3);
    ck_assert_int_eq(t.args[0].type, M2A_ARG_INT);
    ck_assert_int_eq(t.args[1].type, M2A_ARG_BOOL);
    ck_assert_int_eq(t.args[2].type, M2A_ARG_STRING);
    ck_assert(t.sub.present);
    ck_assert_str_eq(t.sub.word, "hey");
    ck_assert_str_eq(seen_path, "sub");
    ck_assert_ptr_eq(seen_root, &t);
    ck_assert_uint_eq(t.nitems, 2);
    ck_assert_str_eq(t.items[0].name, "a");
    ck_assert_int_eq(t.items[0].weight, 5);
    ck_assert_int_eq(t.items[1].weight, 9);
    ck_assert_int_eq(t.items[1].mark.line, 15);
    ck_assert_int_eq(t.items[1].mark.column, 5);
    ck_assert_int_eq(t.inner, 1);
    m2a_bind_free(&toy_section, &t);
    unsetenv("M2A_T_WORD");
}
END_TEST

START_TEST(a_list_of_strings_checks_each_item_at_its_position)
{
    refuse("hosts:\n  - a\n  - 'b c'\n", "t.yaml:3:5: hosts[1]: 'b c' has a space");
    refuse("hosts: [a, '']\n", "t.yaml:1:12: hosts[1]: must not be empty");
    refuse("hosts: [a, ~]\n", "t.yaml:1:12: hosts[1]: missing value (expected a string)");
    refuse("hosts: [a, [b]]\n", "t.yaml:1:12: hosts[1]: expected a string, found a sequence");
    refuse("hosts: a\n", "t.yaml:1:8: hosts: expected a sequence, found a scalar");
    refuse("hosts: [aaaaaaaaaaaaaaaaa]\n",
           "t.yaml:1:9: hosts[0]: 'aaaaaaaaaaaaaaaaa' is 17 bytes long, more than the 16 allowed "
           "(host names)");
}
END_TEST

START_TEST(a_unique_key_is_unique_across_the_list)
{
    refuse("items:\n  - name: a\n  - name: b\n  - name: a\n",
           "t.yaml:4:11: items[2].name: item 'a' is already used at line 2");
}
END_TEST

START_TEST(a_section_check_points_at_the_keys_it_names)
{
    refuse("sub:\n  lo: 9\n  hi: 3\n", "t.yaml:3:7: sub: hi (3) is below lo (9)");
    /* hi absent: the next key named */
    refuse("sub:\n  lo: 11\n", "t.yaml:2:7: sub: hi (10) is below lo (11)");
    refuse("sub: {word: forbidden}\n", "t.yaml:1:13: sub.word: is forbidden");
    refuse(
        "sub: {word: forbidden!}\n",
        "t.yaml:1:13: sub.word: 'forbidden!' is 10 bytes long, more than the 9 allowed (a word)");
}
END_TEST

START_TEST(lengths_are_checked_and_secrets_never_quoted)
{
    refuse("secret: abcde\n",
           "t.yaml:1:9: secret: it is 5 bytes long, more than the 4 allowed (a secret)");
    refuse("labels: {abcd: v}\n",
           "t.yaml:1:10: labels: key 'abcd' is 4 bytes long, more than the 3 allowed (labels)");
}
END_TEST

START_TEST(scalars_are_converted_or_refused_at_their_position)
{
    refuse("num: 6\n", "t.yaml:1:6: num: 6 is out of range -5..5 (a number)");
    refuse("num: x\n", "t.yaml:1:6: num: 'x' is not an integer (a number)");
    refuse("big: -1\n", "t.yaml:1:6: big: -1 is out of range 0..4294967295 (a big one)");
    refuse("flag: yes\n", "t.yaml:1:7: flag: 'yes' is not a boolean: use true or false");
    refuse("size: 1000\n", "t.yaml:1:7: size: 1000 is out of range 1KiB..1TiB (a size)");
    refuse("size: 2TiB\n", "t.yaml:1:7: size: 2TiB is out of range 1KiB..1TiB (a size)");
    refuse("wait: 2d\n", "t.yaml:1:7: wait: 2d is out of range 0..86400000 ms (a wait)");
    refuse("wait: 1w\n", "t.yaml:1:7: wait: '1w' is not a duration: use a number with ms, s, m, "
                         "h or d (e.g. 90s, 1h; a plain number is seconds)");
    refuse("color: blue\n", "t.yaml:1:8: color: 'blue' is not one of red, green");
    refuse("sub: [1]\n", "t.yaml:1:6: sub: expected a mapping, found a sequence");
    refuse("items:\n  - {weight: 1}\n", "t.yaml:2:5: items[0]: missing required key 'name'");
    refuse("colour: red\n", "t.yaml:1:1: top level: unknown key 'colour' (did you mean 'color'?)");
    refuse("num: 1\nnum: 2\n", "t.yaml:2:1: top level: duplicate key 'num' (first at line 1)");
    refuse("", "t.yaml:1:1: the document is empty");
}
END_TEST

START_TEST(sizes_are_printed_in_the_largest_unit)
{
    char b[32];
    static const struct {
        uint64_t v;
        const char *want;
    } cases[] = {{0, "0B"},
                 {100, "100B"},
                 {1024, "1KiB"},
                 {1536, "1536B"},
                 {64u << 20, "64MiB"},
                 {1ull << 30, "1GiB"},
                 {3ull << 40, "3TiB"},
                 {(1ull << 40) + 1024, "1073741825KiB"}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        m2a_bind_format_size(b, sizeof(b), cases[i].v);
        ck_assert_str_eq(b, cases[i].want);
    }
}
END_TEST

START_TEST(reading_a_file)
{
    char *data = (char *)1;
    size_t len = 1;
    ck_assert_int_eq(m2a_bind_read_file("/nonexistent/x.yaml", &data, &len, err, sizeof(err)),
                     M2A_ERR_IO);
    ck_assert_ptr_null(data);
    ck_assert_str_eq(err, "/nonexistent/x.yaml: cannot open: No such file or directory");
    char path[] = "/tmp/test_config_bind_XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, "num: 1\n", 7), 7);
    close(fd);
    ck_assert_int_eq(m2a_bind_read_file(path, &data, &len, err, sizeof(err)), 0);
    ck_assert_uint_eq(len, 7);
    ck_assert_str_eq(data, "num: 1\n");
    free(data);
    unlink(path);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("config_bind");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, defaults_are_written_in_the_files_syntax);
    tcase_add_test(tc, every_type_is_bound);
    tcase_add_test(tc, a_list_of_strings_checks_each_item_at_its_position);
    tcase_add_test(tc, a_unique_key_is_unique_across_the_list);
    tcase_add_test(tc, a_section_check_points_at_the_keys_it_names);
    tcase_add_test(tc, lengths_are_checked_and_secrets_never_quoted);
    tcase_add_test(tc, scalars_are_converted_or_refused_at_their_position);
    tcase_add_test(tc, sizes_are_printed_in_the_largest_unit);
    tcase_add_test(tc, reading_a_file);
    suite_add_tcase(s, tc);
    return m2a_check_run(s);
}
