/* test_cluster.c - a bridge in front of a 3-node RabbitMQ cluster with a
 * quorum queue (issue 10): nodes SIGKILLed and restarted under numbered
 * QoS 1 traffic, every run checked by sequence number. Rows go to the
 * fault table (tests/support/fault.h).
 *
 *   the cluster itself: three running members seen from each, a quorum
 *   queue with three replicas, its leader where it was declared;
 *   SIGKILL + restart of the node the bridge is connected to, of the queue's
 *   leader, and of a follower, each twice (the bridge has all three in
 *   amqp.hosts: it moves to another node at once);
 *   the majority lost: two nodes of three SIGKILLed, then restarted;
 *   the node in use SIGKILLed, or cut off (blackholed by a proxy): the
 *   bridge moves to another node before it is back, lost 0;
 *   the majority lost with the bridge's node among the dead: on the
 *   surviving node RabbitMQ nacks every publish to the leaderless queue,
 *   which the bridge retries without dead-lettering (dead_letter with
 *   max_retries 2), lost 0, nothing dead-lettered.
 *
 * The cluster is the "cluster" fixture (tests/support/cluster.h), started
 * once for this program; the brokers fixture's single node is not used.
 * Mosquitto is the shipped config, one per case. */
#include <check.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster.h"
#include "fault.h"
#include "flow.h"
#include "harness.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/util.h"
#include "proxy.h"

#define WAIT_MS    60000
#define COLLECT_MS 180000
#define NODES      3

static const char *const topics[] = {"load/a", "load/b/c", "load/d.e", "load/f"};

struct setup {
    uint64_t t0;
    int bridge_node; /* the member the bridge is connected to */
    int ports[NODES];
    struct th_proxy *px[NODES]; /* with_proxies: the bridge reaches member i through px[i] */
    struct th_mosq *mq;
    struct th_bridge *b;
    struct th_amqp *c;
    char *queue;
    struct th_pflow f;
    struct th_msgs got;
};

static void consumer_open(struct setup *s, int member)
{
    s->c = th_amqp_connect(th_cluster_port(member), 10000, false);
    ck_assert_ptr_nonnull(s->c);
    ck_assert_int_eq(th_amqp_declare_exchange(s->c, s->queue, "topic", true), 0);
    ck_assert_int_eq(th_amqp_declare_quorum(s->c, s->queue), 0);
    ck_assert_int_eq(th_amqp_bind(s->c, s->queue, s->queue, "#"), 0);
    ck_assert_int_eq(th_amqp_purge(s->c, s->queue), 0);
    ck_assert_int_eq(th_amqp_consume(s->c, s->queue), 0);
}

/* The member the bridge says it connected to last, or -1. */
static int bridge_member(struct setup *s)
{
    char *log = th_read_file_from(s->b->proc.log_path, s->b->proc.log_start, NULL);
    const char *last = NULL;
    for (const char *l = log; l && (l = strstr(l, "amqp: connected to 127.0.0.1:")); l++)
        last = l;
    int port = last ? atoi(last + strlen("amqp: connected to 127.0.0.1:")) : 0;
    free(log);
    for (int i = 0; i < NODES; i++)
        if (port && (s->px[i] ? th_proxy_port(s->px[i]) : s->ports[i]) == port)
            return i;
    return -1;
}

/* Waits until the bridge has connected `count` times in all, the last one
 * to a member other than `not` (-1: any); updates s->bridge_node. */
static void wait_bridge_on(struct setup *s, int count, int not )
{
    ck_assert_int_eq(th_bridge_wait_log_count(s->b, "amqp: connected to", count, WAIT_MS), 0);
    s->bridge_node = bridge_member(s);
    ck_assert_int_ge(s->bridge_node, 0);
    ck_assert_int_ne(s->bridge_node, not );
}

struct setup_opts {
    bool with_proxies; /* each member behind a proxy of its own (to cut it off) */
    bool dead_letter;  /* a dead_letter section, max_retries 2 */
};

/* Mosquitto, the quorum queue (declared through member `leader`, so its
 * leader is there) with a consumer, and a bridge with every member in
 * amqp.hosts, up and ready on the one it picked (s->bridge_node). */
static void setup_start_with(struct setup *s, const char *name, int leader,
                             const struct setup_opts *o)
{
    memset(s, 0, sizeof(*s));
    s->t0 = m2a_now_ms();
    ck_assert_int_eq(th_cluster_heal(WAIT_MS), 0);
    const struct th_cluster *cl = th_cluster_get();
    ck_assert_int_eq(cl->n, NODES);
    for (int i = 0; i < NODES; i++) {
        s->ports[i] = cl->amqp_port[i];
        if (o->with_proxies) {
            s->px[i] = th_proxy_new(s->ports[i]);
            ck_assert_ptr_nonnull(s->px[i]);
        }
    }
    s->queue = xasprintf("cl.%s", name);
    consumer_open(s, leader);
    s->mq = th_mosq_start(TH_MOSQ_SHIPPED);
    ck_assert_ptr_nonnull(s->mq);
    s->b = th_bridge_new(s->mq);
    for (int i = 0; i < NODES; i++) {
        char var[16];
        snprintf(var, sizeof(var), "NODE%d", i);
        th_bridge_set(s->b, var, "%d", s->px[i] ? th_proxy_port(s->px[i]) : s->ports[i]);
    }
    th_bridge_set(s->b, "NAME", "%s", name);
    th_bridge_set(s->b, "DLX", "%s",
                  o->dead_letter ? "dead_letter: {exchange: amq.topic, max_retries: 2}" : "");
    ck_assert_int_eq(
        th_bridge_config(s->b, "mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, client_id: cl-${NAME},"
                               " reconnect_max_ms: 1000}\n"
                               "amqp:\n"
                               "  hosts: [\"127.0.0.1:${NODE0}\", \"127.0.0.1:${NODE1}\","
                               " \"127.0.0.1:${NODE2}\"]\n"
                               "  heartbeat: 2\n"
                               "  reconnect_max_ms: 1000\n"
                               "  topology: {exchanges: [{name: cl.${NAME}, type: topic}]}\n"
                               "${DLX}\n"
                               "spool: {dir: ${SPOOL_DIR}}\n"
                               "routes:\n"
                               "  - {name: all, topic: \"load/#\", exchange: cl.${NAME}}\n"
                               "log: {stats_interval: 1}\n"
                               "shutdown_timeout: 10\n"),
        0);
    ck_assert_int_eq(th_bridge_start_ready(s->b, WAIT_MS), 0);
    s->bridge_node = bridge_member(s);
    ck_assert_int_ge(s->bridge_node, 0);
}

static void setup_start(struct setup *s, const char *name, int leader)
{
    setup_start_with(s, name, leader, &(struct setup_opts){0});
}

static void setup_free(struct setup *s)
{
    if (s->c) {
        th_amqp_delete(s->c, s->queue);
        th_amqp_free(s->c);
    }
    th_bridge_free(s->b);
    th_mosq_free(s->mq);
    th_msgs_free(&s->got);
    for (int i = 0; i < NODES; i++)
        th_proxy_free(s->px[i]);
    free(s->queue);
}

static int collect(struct setup *s, size_t want, int timeout_ms)
{
    return th_amqp_collect_reconnecting_to(&s->c, s->ports, NODES, s->queue, &s->got, want,
                                           timeout_ms);
}

static int delivered_more(struct setup *s, size_t more)
{
    return collect(s, th_msgs_distinct(&s->got) + more, WAIT_MS);
}

/* Stops traffic after `tail` more messages, collects everything, checks. */
static struct th_fres finish_flow(struct setup *s, long tail)
{
    ck_assert_int_eq(th_pflow_wait_more(&s->f, tail), 0);
    long n = th_pflow_stop(&s->f);
    ck_assert(!atomic_load(&s->f.failed));
    uint64_t deadline = m2a_now_ms() + COLLECT_MS;
    for (;;) {
        struct th_fres r = th_fault_check(&s->f, n, &s->got, false);
        uint64_t now = m2a_now_ms();
        if (r.lost == 0 || now >= deadline)
            break;
        size_t want = (size_t)(r.delivered + r.amb_delivered + r.lost);
        if (collect(s, want, (int)(deadline - now)) == M2A_ERR_TIMEOUT)
            break;
    }
    if (s->c)
        th_amqp_drain(s->c, &s->got, 500);
    return th_fault_check(&s->f, n, &s->got, true);
}

/* Waits until every member runs and the queue has all its replicas online. */
static void wait_healthy(struct setup *s)
{
    ck_assert_int_eq(th_cluster_wait_running(s->bridge_node, NODES, WAIT_MS), 0);
    uint64_t deadline = m2a_now_ms() + WAIT_MS;
    struct th_quorum_info q;
    for (;;) {
        int rc = th_cluster_quorum_info(s->bridge_node, s->queue, &q);
        if (rc == 0 && q.online == NODES && q.leader[0])
            break;
        ck_assert_msg(m2a_now_ms() < deadline, "queue %s: %d of %d replicas online", s->queue,
                      q.online, NODES);
        th_sleep_ms(200); /* between two rabbitmqctl runs; the deadline bounds it */
    }
}

/* ---- the cluster the fixture started ------------------------------------ */

START_TEST(cluster_has_three_members_and_a_quorum_queue)
{
    ck_assert_int_eq(th_cluster_heal(WAIT_MS), 0);
    const struct th_cluster *cl = th_cluster_get();
    ck_assert_int_eq(cl->n, NODES);
    fprintf(stderr, "cluster: %d members, started in %d s\n", cl->n, cl->start_seconds);
    for (int i = 0; i < NODES; i++)
        ck_assert_int_eq(th_cluster_running(i), NODES);
    /* Declared through r2: three replicas, the leader on r2. */
    struct th_amqp *c = th_amqp_connect(th_cluster_port(1), 10000, false);
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(th_amqp_declare_quorum(c, "cl.formed"), 0);
    struct th_quorum_info q;
    ck_assert_int_eq(th_cluster_quorum_info(0, "cl.formed", &q), 0);
    fprintf(stderr, "cl.formed: leader %s, %d members, %d online\n", q.leader, q.members, q.online);
    ck_assert_int_eq(q.members, NODES);
    ck_assert_int_eq(q.online, NODES);
    ck_assert_int_eq(th_cluster_member(q.leader), 1);
    /* A message published through r1 is consumed through r3. */
    struct th_amqp *p = th_amqp_connect(th_cluster_port(0), 10000, false);
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(th_amqp_confirm_select(p), 0);
    ck_assert_int_eq(th_amqp_publish(p, "", "cl.formed", "seq=0", true), 0);
    struct th_amqp *r = th_amqp_connect(th_cluster_port(2), 10000, false);
    ck_assert_ptr_nonnull(r);
    ck_assert_int_eq(th_amqp_consume(r, "cl.formed"), 0);
    struct th_msgs got = {0};
    ck_assert_int_eq(th_amqp_collect(r, &got, 1, WAIT_MS), 0);
    ck_assert_int_eq(got.v[0].seq, 0);
    th_msgs_free(&got);
    th_amqp_free(r);
    th_amqp_free(p);
    ck_assert_int_eq(th_amqp_delete(c, "cl.formed"), 0);
    th_amqp_free(c);
}
END_TEST

/* ---- SIGKILL of one node ------------------------------------------------ */

/* The queue's leader first on r3, the bridge on the node it picked: each
 * round kills the bridge's node (the bridge moves to another before it is
 * back), then whichever node leads the queue now, then a node that is
 * neither; each is restarted before the next kill. */
START_TEST(node_sigkill_under_traffic)
{
    struct setup s;
    setup_start(&s, "nodekill", 2);
    th_pflow_start(&s.f, s.mq->port, topics, 4, false, 400000);
    /* Each kind of node killed twice; M2A_CLUSTER_ROUNDS=1 (the sanitizer
     * build: RabbitMQ's restarts dominate, not the bridge) once. */
    const char *env = getenv("M2A_CLUSTER_ROUNDS");
    const int rounds = env && atoi(env) > 0 ? atoi(env) : 2;
    int kills = 0, leader_kills = 0, bridge_kills = 0, reconnects = 1;
    long during = 0;
    for (int round = 0; round < rounds; round++) {
        for (int what = 0; what < 3; what++) {
            ck_assert_int_eq(delivered_more(&s, 500), 0);
            struct th_quorum_info q;
            ck_assert_int_eq(th_cluster_quorum_info(s.bridge_node, s.queue, &q), 0);
            int leader = th_cluster_member(q.leader);
            ck_assert_int_ge(leader, 0);
            int victim = what == 0 ? s.bridge_node : what == 1 ? leader : -1;
            for (int i = 0; victim < 0 && i < NODES; i++)
                if (i != s.bridge_node && i != leader)
                    victim = i;
            if (victim == s.bridge_node && what != 0)
                continue; /* the leader moved to the bridge's node: killed already */
            fprintf(stderr, "round %d: SIGKILL r%d (%s; leader r%d)\n", round + 1, victim + 1,
                    victim == s.bridge_node ? "the bridge's node"
                    : victim == leader      ? "the queue's leader"
                                            : "a follower",
                    leader + 1);
            long at = atomic_load(&s.f.next);
            ck_assert_int_eq(th_cluster_do(victim, "kill"), 0);
            kills++;
            leader_kills += victim == leader;
            bridge_kills += victim == s.bridge_node;
            if (victim == s.bridge_node) /* on another node before this one is back */
                wait_bridge_on(&s, ++reconnects, victim);
            /* Traffic goes on while the node is away; then it pauses
             * while the node restarts (5-45 s: the message count, and the
             * test's memory, stay bounded whatever the machine's load). */
            ck_assert_int_eq(th_pflow_wait_more(&s.f, 1000), 0);
            ck_assert_int_eq(th_pflow_hold(&s.f, true), 0);
            during += atomic_load(&s.f.next) - at;
            ck_assert_int_eq(th_cluster_do(victim, "restart"), 0);
            wait_healthy(&s);
            ck_assert_int_eq(th_pflow_hold(&s.f, false), 0);
        }
    }
    struct th_fres r = finish_flow(&s, 1000);
    th_fault_row("cluster: node SIGKILL + restart", kills, &r, s.t0,
                 "quorum queue, 3 nodes; %d kills of the bridge's node, %d of the leader; %ld "
                 "published while a node was down; bridge reconnects %d",
                 bridge_kills, leader_kills, during, reconnects - 1);
    TH_FAULT_ASSERT_NOTHING_LOST(&r);
    ck_assert_int_eq(th_bridge_stop(s.b, 30000), 0);
    setup_free(&s);
}
END_TEST

/* ---- the majority lost ---------------------------------------------------- */

/* Waits for `more` new stats lines of the bridge; returns a counter then. */
static long stat_after_lines(struct th_bridge *b, int more, const char *name)
{
    int lines = th_proc_log_count(&b->proc, "stats: ");
    ck_assert_int_eq(th_bridge_wait_log_count(b, "stats: ", lines + more, WAIT_MS), 0);
    return th_bridge_stat(b, name);
}

/* The bridge's node stays up; the two others (the leader among them) are
 * SIGKILLed: the queue has no majority, so RabbitMQ confirms nothing, and
 * nacks nothing, until one of them is back. The bridge holds its confirm
 * window, spools the rest, and publishes it all once the majority is back:
 * nothing lost. */
START_TEST(majority_lost_under_traffic)
{
    struct setup s;
    setup_start(&s, "majority", 1);
    th_pflow_start(&s.f, s.mq->port, topics, 4, false, 400000);
    ck_assert_int_eq(delivered_more(&s, 500), 0);
    long at = atomic_load(&s.f.next);
    uint64_t t_kill = m2a_now_ms();
    int gone[2], k = 0;
    for (int i = 0; i < NODES; i++)
        if (i != s.bridge_node)
            gone[k++] = i;
    ck_assert_int_eq(th_cluster_do(gone[0], "kill"), 0);
    ck_assert_int_eq(th_cluster_do(gone[1], "kill"), 0);
    ck_assert_int_eq(th_pflow_wait_more(&s.f, 2000), 0);
    /* Confirms stop: two stats lines apart, the count has not moved. */
    long c1 = stat_after_lines(s.b, 1, "confirmed");
    long c2 = stat_after_lines(s.b, 2, "confirmed");
    long backlog = th_bridge_stat(s.b, "spool_messages");
    long nacked = th_bridge_stat(s.b, "nacked");
    fprintf(stderr, "majority lost: confirmed %ld, then %ld two stats lines later; backlog %ld\n",
            c1, c2, backlog);
    ck_assert_int_eq(th_pflow_hold(&s.f, true), 0); /* bounded, as above */
    long during = atomic_load(&s.f.next) - at;
    ck_assert_int_eq(th_cluster_do(gone[0], "restart"), 0);
    double gone_s = (double)(m2a_now_ms() - t_kill) / 1000.0;
    ck_assert_int_eq(th_cluster_do(gone[1], "restart"), 0);
    wait_healthy(&s);
    ck_assert_int_eq(th_pflow_hold(&s.f, false), 0);
    struct th_fres r = finish_flow(&s, 1000);
    th_fault_row("cluster: majority lost (2 of 3)", 1, &r, s.t0,
                 "quorum queue without a majority for %.0f s: no confirm, no nack, backlog %ld "
                 "spooled; %ld published while it was gone",
                 gone_s, backlog, during);
    TH_FAULT_ASSERT_NOTHING_LOST(&r);
    ck_assert_int_eq(c1, c2);
    ck_assert_int_gt(backlog, 0);
    ck_assert_int_le(nacked, 0);
    ck_assert_int_le(th_bridge_stat(s.b, "dead_lettered"), 0);
    ck_assert_int_eq(th_bridge_stop(s.b, 30000), 0);
    setup_free(&s);
}
END_TEST

/* ---- the node in use lost: killed or cut off ------------------------------- */

/* The node the bridge uses is SIGKILLed (twice), or cut off from it: its
 * proxy blackholes the link, so only heartbeats (2 s) tell (twice). Each
 * time the bridge connects to another node while the lost one is still
 * away, re-publishes its unconfirmed window there, and the quorum queue
 * keeps everything: lost 0. */
START_TEST(node_in_use_killed_or_cut_off_bridge_moves_on)
{
    struct setup s;
    setup_start_with(&s, "moveon", 0, &(struct setup_opts){.with_proxies = true});
    th_pflow_start(&s.f, s.mq->port, topics, 4, false, 400000);
    int reconnects = 1;
    long during = 0;
    for (int round = 0; round < 4; round++) {
        bool cut = round >= 2;
        ck_assert_int_eq(delivered_more(&s, 500), 0);
        int victim = s.bridge_node;
        fprintf(stderr, "move on %d: %s r%d, the bridge's node\n", round + 1,
                cut ? "blackhole the link to" : "SIGKILL", victim + 1);
        long at = atomic_load(&s.f.next);
        ck_assert_int_eq(cut ? th_proxy_blackhole(s.px[victim]) : th_cluster_do(victim, "kill"), 0);
        wait_bridge_on(&s, ++reconnects, victim);
        ck_assert_int_eq(th_pflow_wait_more(&s.f, 1000), 0);
        during += atomic_load(&s.f.next) - at;
        if (cut) {
            ck_assert_int_eq(th_proxy_resume(s.px[victim]), 0);
        } else {
            ck_assert_int_eq(th_pflow_hold(&s.f, true), 0); /* bounded while it restarts */
            ck_assert_int_eq(th_cluster_do(victim, "restart"), 0);
            wait_healthy(&s);
            ck_assert_int_eq(th_pflow_hold(&s.f, false), 0);
        }
    }
    struct th_fres r = finish_flow(&s, 1000);
    th_fault_row("cluster: bridge's node killed / cut off", 4, &r, s.t0,
                 "amqp.hosts of 3; 2 SIGKILLs, 2 blackholed links; the bridge on another node "
                 "each time before the lost one was back; %ld published meanwhile",
                 during);
    TH_FAULT_ASSERT_NOTHING_LOST(&r);
    ck_assert_int_eq(th_bridge_stop(s.b, 30000), 0);
    setup_free(&s);
}
END_TEST

/* ---- the majority lost, the bridge's node with it -------------------------- */

/* The queue's leader is on the bridge's node. A follower is SIGKILLed,
 * then the bridge's node: the bridge moves to the survivor, whose channel
 * cannot register with a leader (the one the queue's record names is
 * down), so RabbitMQ 3.10 nacks every publish to the queue there, at once.
 * With a dead_letter section (max_retries 2) the bridge retries those nacks
 * without dead-lettering, since nothing of the route was confirmed on that
 * connection; once a majority is back everything arrives: lost 0, nothing
 * dead-lettered. */
START_TEST(majority_lost_with_the_bridges_node_nacks_are_retried)
{
    struct setup s;
    setup_start_with(&s, "nacked", 0, &(struct setup_opts){.dead_letter = true});
    /* The queue again, its leader where the bridge is. */
    ck_assert_int_eq(th_amqp_delete(s.c, s.queue), 0);
    th_amqp_free(s.c);
    consumer_open(&s, s.bridge_node);
    struct th_quorum_info q;
    ck_assert_int_eq(th_cluster_quorum_info(s.bridge_node, s.queue, &q), 0);
    ck_assert_int_eq(th_cluster_member(q.leader), s.bridge_node);
    th_pflow_start(&s.f, s.mq->port, topics, 4, false, 400000);
    ck_assert_int_eq(delivered_more(&s, 500), 0);
    int leader = s.bridge_node, follower = (leader + 1) % NODES, survivor = (leader + 2) % NODES;
    fprintf(stderr,
            "nacked: SIGKILL r%d (a follower), then r%d (leader, the bridge's); r%d "
            "survives\n",
            follower + 1, leader + 1, survivor + 1);
    long at = atomic_load(&s.f.next);
    uint64_t t_kill = m2a_now_ms();
    ck_assert_int_eq(th_cluster_do(follower, "kill"), 0);
    ck_assert_int_eq(th_cluster_do(leader, "kill"), 0);
    wait_bridge_on(&s, 2, leader);
    ck_assert_int_eq(s.bridge_node, survivor);
    ck_assert_int_eq(th_pflow_wait_more(&s.f, 1000), 0);
    /* Nacked far more than max_retries, dead-lettered never. */
    ck_assert_int_eq(th_bridge_wait_stat(s.b, "nacked", 200, WAIT_MS), 0);
    long nacked = th_bridge_stat(s.b, "nacked");
    long dead = th_bridge_stat(s.b, "dead_lettered");
    ck_assert_int_eq(th_pflow_hold(&s.f, true), 0); /* bounded, as above */
    long during = atomic_load(&s.f.next) - at;
    ck_assert_int_eq(th_cluster_do(follower, "restart"), 0);
    double gone_s = (double)(m2a_now_ms() - t_kill) / 1000.0;
    ck_assert_int_eq(th_cluster_do(leader, "restart"), 0);
    wait_healthy(&s);
    ck_assert_int_eq(th_pflow_hold(&s.f, false), 0);
    struct th_fres r = finish_flow(&s, 1000);
    th_fault_row("cluster: majority lost with the bridge's node", 1, &r, s.t0,
                 "the bridge moved to the survivor; %ld nacks there in %.0f s without a "
                 "majority, %ld dead-lettered (max_retries 2); %ld published meanwhile",
                 nacked, gone_s, dead, during);
    TH_FAULT_ASSERT_NOTHING_LOST(&r);
    ck_assert_int_eq(dead, 0);
    ck_assert_int_eq(th_bridge_stat(s.b, "dead_lettered"), 0);
    ck_assert_int_eq(th_bridge_stop(s.b, 30000), 0);
    setup_free(&s);
}
END_TEST

int main(void)
{
    const TTest *cases[] = {cluster_has_three_members_and_a_quorum_queue,
                            node_sigkill_under_traffic,
                            majority_lost_under_traffic,
                            node_in_use_killed_or_cut_off_bridge_moves_on,
                            majority_lost_with_the_bridges_node_nacks_are_retried,
                            NULL};
    /* A member's restart takes 5-10 s here, 45 s on a loaded machine; the
     * node-kill case restarts six. */
    return th_fault_run("cluster", "cluster suite", cases, 600) ? EXIT_FAILURE : EXIT_SUCCESS;
}
