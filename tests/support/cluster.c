/* cluster.c - the cluster fixture's members, seen from a test; see cluster.h.
 * Reads the files scripts/test-rabbitmq.sh writes (DIR/cluster.env and each
 * member's DIR/rI/env) and runs its verbs. */
#include "cluster.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt2amqp/err.h"
#include "mqtt2amqp/util.h"

#define CLUSTER_DIR M2A_TEST_STATE "/rabbitmq-cluster"

/* The value of KEY in DIR/cluster.env. */
static char *cluster_env_get(const char *key)
{
    return th_kv_file_get(CLUSTER_DIR "/cluster.env", key);
}

static int member_env_int(const char *dir, const char *key)
{
    char *v = th_rabbit_env_get(dir, key);
    int n = v ? atoi(v) : 0;
    free(v);
    return n;
}

const struct th_cluster *th_cluster(void)
{
    static struct th_cluster c;
    free(c.dir);
    for (int i = 0; i < c.n; i++) {
        free(c.node_dir[i]);
        free(c.nodename[i]);
    }
    memset(&c, 0, sizeof(c));
    char *nodes = cluster_env_get("NODES");
    char *secs = cluster_env_get("START_SECONDS");
    int n = nodes ? atoi(nodes) : 0;
    c.start_seconds = secs ? atoi(secs) : 0;
    free(nodes);
    free(secs);
    if (n < 1 || n > TH_CLUSTER_MAX)
        return NULL;
    c.dir = xstrdup(CLUSTER_DIR);
    for (int i = 0; i < n; i++) {
        c.node_dir[i] = xasprintf("%s/r%d", CLUSTER_DIR, i + 1);
        c.nodename[i] = th_rabbit_env_get(c.node_dir[i], "NODENAME");
        if (!c.nodename[i])
            c.nodename[i] = xstrdup("");
        c.amqp_port[i] = member_env_int(c.node_dir[i], "AMQP_PORT");
        c.server_pid[i] = (pid_t)member_env_int(c.node_dir[i], "SERVER_PID");
        c.n++;
    }
    return &c;
}

const struct th_cluster *th_cluster_get(void)
{
    const struct th_cluster *c = th_cluster();
    if (!c)
        ck_abort_msg(
            "no RabbitMQ cluster: " CLUSTER_DIR "/cluster.env missing; run via ctest "
            "(fixture cluster.start) or scripts/test-rabbitmq.sh cluster-start " CLUSTER_DIR);
    return c;
}

int th_cluster_port(int i)
{
    const struct th_cluster *c = th_cluster_get();
    ck_assert_int_lt(i, c->n);
    return c->amqp_port[i];
}

static const char *member_dir(int i)
{
    const struct th_cluster *c = th_cluster_get();
    ck_assert_int_ge(i, 0);
    ck_assert_int_lt(i, c->n);
    return c->node_dir[i];
}

int th_cluster_do(int i, const char *verb)
{
    char *dir = xstrdup(member_dir(i));
    struct th_run_result r;
    uint64_t t0 = m2a_now_ms();
    int rc = th_rabbit_script(verb, dir, NULL, &r);
    fprintf(stderr, "cluster: r%d %s: exit %d in %.1f s\n%s", i + 1, verb, r.exit_code,
            (double)(m2a_now_ms() - t0) / 1000.0, r.err);
    th_run_result_free(&r);
    free(dir);
    return rc;
}

int th_cluster_heal(int timeout_ms)
{
    int n = th_cluster_get()->n;
    for (int i = 0; i < n; i++) {
        char *dir = xstrdup(member_dir(i));
        struct th_run_result r;
        bool alive = th_rabbit_script("status", dir, NULL, &r) == 0;
        th_run_result_free(&r);
        free(dir);
        if (!alive) {
            fprintf(stderr, "cluster: r%d is not running: restarting it\n", i + 1);
            int rc = th_cluster_do(i, "restart");
            if (rc != 0)
                return rc;
        }
    }
    return th_cluster_wait_running(0, n, timeout_ms);
}

int th_cluster_ctl(int i, const char *const *args, struct th_run_result *r)
{
    char *dir = xstrdup(member_dir(i));
    int rc = th_rabbit_script("ctl", dir, args, r);
    free(dir);
    return rc;
}

int th_cluster_running(int i)
{
    /* The running_nodes list of cluster_status, as JSON: count its names. */
    const char *args[] = {"-q", "cluster_status", "--formatter", "json", NULL};
    struct th_run_result r;
    int rc = th_cluster_ctl(i, args, &r);
    int n = M2A_ERR_AMQP;
    const char *p = rc == 0 ? strstr(r.out, "\"running_nodes\"") : NULL;
    const char *end = p ? strchr(p, ']') : NULL;
    if (p && end) {
        n = 0;
        for (const char *q = strchr(p, '['); q && q < end; q = strchr(q + 1, '@'))
            n += *q == '@';
    }
    th_run_result_free(&r);
    return n;
}

struct running_wait {
    int i, want;
};

static bool running_reached(void *arg)
{
    struct running_wait *w = arg;
    return th_cluster_running(w->i) == w->want;
}

int th_cluster_wait_running(int i, int want, int timeout_ms)
{
    struct running_wait w = {i, want};
    int rc = th_poll_until(running_reached, &w, timeout_ms);
    if (rc != 0)
        fprintf(stderr, "cluster: r%d does not see %d running members (sees %d)\n", i + 1, want,
                th_cluster_running(i));
    return rc;
}

int th_cluster_member(const char *nodename)
{
    const struct th_cluster *c = th_cluster_get();
    for (int i = 0; i < c->n; i++)
        if (strcmp(c->nodename[i], nodename) == 0)
            return i;
    return -1;
}

/* Counts the quoted node names in the JSON array that follows key in obj. */
static int json_names(const char *obj, const char *key)
{
    const char *p = strstr(obj, key);
    const char *open = p ? strchr(p, '[') : NULL;
    const char *close = open ? strchr(open, ']') : NULL;
    int n = 0;
    for (const char *q = open; q && q < close; q = strchr(q + 1, '@'))
        n += *q == '@';
    return n;
}

int th_cluster_quorum_info(int i, const char *queue, struct th_quorum_info *q)
{
    memset(q, 0, sizeof(*q));
    const char *args[] = {"-q",      "list_queues", "name",        "type", "leader",
                          "members", "online",      "--formatter", "json", NULL};
    struct th_run_result r;
    int rc = th_cluster_ctl(i, args, &r);
    /* One object per queue: {"name":"Q","type":"quorum","leader":"N","members":[...],...} */
    char *needle = xasprintf("\"name\":\"%s\"", queue);
    const char *obj = rc == 0 ? strstr(r.out, needle) : NULL;
    free(needle);
    rc = M2A_ERR_AMQP;
    if (obj && strncmp(strstr(obj, "\"type\":") ? strstr(obj, "\"type\":") + 7 : "", "\"quorum\"",
                       8) == 0) {
        const char *l = strstr(obj, "\"leader\":\"");
        if (l) {
            l += 10;
            size_t len = strcspn(l, "\"");
            if (len < sizeof(q->leader))
                memcpy(q->leader, l, len);
        }
        q->members = json_names(obj, "\"members\"");
        q->online = json_names(obj, "\"online\"");
        rc = 0;
    }
    if (rc != 0)
        fprintf(stderr, "cluster: r%d lists no quorum queue %s:\n%s%s", i + 1, queue, r.out, r.err);
    th_run_result_free(&r);
    return rc;
}
