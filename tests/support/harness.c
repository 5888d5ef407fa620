/* harness.c - integration-test support: process control, Mosquitto and
 * RabbitMQ control, the bridge under test, an AMQP consumer, an MQTT
 * publisher and the delivery checker. See harness.h for the contract.
 *
 * Threads: everything runs on the test's main thread except
 * th_mqtt_publish, which owns its own mosquitto handle and may run on any
 * thread. The process registry (for the atexit cleanup) is main-thread only.
 *
 * Processes are spawned with fork+execvpe; the environment array is built
 * before fork so the child only calls async-signal-safe functions. */
#include "harness.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <mosquitto.h>

#include "mqtt2amqp/err.h"
#include "mqtt2amqp/util.h"

extern char **environ;

/* ---- generic helpers ---------------------------------------------------- */

void th_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

int th_poll_until(bool (*cond)(void *arg), void *arg, int timeout_ms)
{
    uint64_t deadline = m2a_now_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0);
    int step = 2;
    for (;;) {
        if (cond(arg))
            return 0;
        if (m2a_now_ms() >= deadline)
            return M2A_ERR_TIMEOUT;
        /* A short pause between checks of a condition, not a guess at timing. */
        th_sleep_ms(step);
        if (step < 20)
            step *= 2;
    }
}

bool th_port_open(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return ok;
}

static bool port_bindable(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return ok;
}

#define MAX_PORTS 256
static int used_ports[MAX_PORTS];
static size_t nused_ports;

static bool port_reserved(int port)
{
    for (size_t i = 0; i < nused_ports; i++)
        if (used_ports[i] == port)
            return true;
    return false;
}

/* The fixture's node keeps its ports across stop/restart, even while it is
 * down: never hand them out. Filled by th_rabbit(). */
static int rabbit_ports[3];

int th_free_port(void)
{
    static unsigned seed;
    if (!seed)
        seed = (unsigned)getpid() ^ (unsigned)m2a_now_us();
    th_rabbit(); /* fills rabbit_ports */
    for (int i = 0; i < 1000; i++) {
        int p = 20000 + (int)(rand_r(&seed) % 12000);
        if (port_reserved(p) || p == rabbit_ports[0] || p == rabbit_ports[1] ||
            p == rabbit_ports[2] || !port_bindable(p))
            continue;
        if (nused_ports < MAX_PORTS)
            used_ports[nused_ports++] = p;
        return p;
    }
    ck_abort_msg("no free loopback port found");
    return -1;
}

static const char *var_lookup(const char *const *vars, const char *name, size_t nlen)
{
    for (size_t i = 0; vars && vars[i]; i++)
        if (strncmp(vars[i], name, nlen) == 0 && vars[i][nlen] == '=')
            return vars[i] + nlen + 1;
    return NULL;
}

char *th_subst(const char *text, const char *const *vars)
{
    struct m2a_buf b = {0};
    const char *p = text;
    while (*p) {
        const char *open = strstr(p, "${");
        const char *close = open ? strchr(open, '}') : NULL;
        if (!open || !close) {
            m2a_buf_append_str(&b, p);
            break;
        }
        m2a_buf_append(&b, p, (size_t)(open - p));
        const char *name = open + 2, *end = close;
        const char *dflt = strstr(name, ":-");
        size_t nlen = (size_t)((dflt && dflt < end ? dflt : end) - name);
        const char *val = var_lookup(vars, name, nlen);
        if (val)
            m2a_buf_append_str(&b, val);
        else
            m2a_buf_append(&b, open, (size_t)(close + 1 - open));
        p = close + 1;
    }
    return (char *)m2a_buf_cstr(&b); /* the buffer becomes the string */
}

/* ---- processes ---------------------------------------------------------- */

/* Spawned pids with the pid of the process that spawned them: check forks a
 * child per test, and a child must not kill what its parent started. */
#define MAX_CHILDREN 128
static struct {
    pid_t pid, owner;
} children[MAX_CHILDREN];
static bool atexit_done;

static void kill_children(void)
{
    pid_t me = getpid();
    for (size_t i = 0; i < MAX_CHILDREN; i++) {
        if (children[i].pid > 0 && children[i].owner == me) {
            kill(children[i].pid, SIGKILL);
            waitpid(children[i].pid, NULL, 0);
            children[i].pid = 0;
        }
    }
}

static void register_child(pid_t pid)
{
    if (!atexit_done) {
        atexit(kill_children);
        atexit_done = true;
    }
    for (size_t i = 0; i < MAX_CHILDREN; i++) {
        if (children[i].pid <= 0) {
            children[i].pid = pid;
            children[i].owner = getpid();
            return;
        }
    }
    fprintf(stderr, "harness: more than %d children; pid %d not tracked\n", MAX_CHILDREN, (int)pid);
}

static void unregister_child(pid_t pid)
{
    for (size_t i = 0; i < MAX_CHILDREN; i++)
        if (children[i].pid == pid)
            children[i].pid = 0;
}

/* environ with the overrides applied; the strings are borrowed. */
static char **build_env(const char *const *extra)
{
    size_t n = 0, m = 0;
    while (environ[n])
        n++;
    while (extra && extra[m])
        m++;
    char **env = xcalloc(n + m + 1, sizeof(char *));
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *eq = strchr(environ[i], '=');
        size_t nlen = eq ? (size_t)(eq - environ[i]) : strlen(environ[i]);
        if (!var_lookup(extra, environ[i], nlen))
            env[k++] = environ[i];
    }
    for (size_t i = 0; i < m; i++)
        env[k++] = (char *)extra[i];
    env[k] = NULL;
    return env;
}

struct spawn_io {
    const char *in_path;  /* NULL: /dev/null */
    const char *out_path; /* stdout */
    const char *err_path; /* NULL: same as stdout */
    bool append;
    bool track;                /* register + death signal */
    bool stop_signals_blocked; /* th_proc's */
};

static pid_t spawn_io(const char *const *argv, const char *const *extra_env,
                      const struct spawn_io *io)
{
    char **env = build_env(extra_env);
    int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (io->append ? O_APPEND : O_TRUNC);
    int in = open(io->in_path ? io->in_path : "/dev/null", O_RDONLY | O_CLOEXEC);
    int out = open(io->out_path, flags, 0644);
    int err = io->err_path ? open(io->err_path, flags, 0644) : -1;
    pid_t parent = getpid();
    pid_t pid = -1;
    if (in < 0 || out < 0 || (io->err_path && err < 0)) {
        fprintf(stderr, "harness: cannot open stdio for %s: %s\n", argv[0], strerror(errno));
        goto out;
    }
    fflush(NULL);
    /* Until the child has exec'd it is a copy of this test process, with
     * check's signal handlers (a SIGTERM there kills the whole test's
     * process group): signals stay blocked across the fork until the child
     * has reset them, and the parent returns only once the exec happened
     * (the close-on-exec pipe closes), so that a caller that signals the
     * pid at once signals the program. */
    int gate[2];
    if (pipe2(gate, O_CLOEXEC) != 0) {
        fprintf(stderr, "harness: pipe: %s\n", strerror(errno));
        goto out;
    }
    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, &old);
    pid = fork();
    if (pid == 0) {
        signal(SIGPIPE, SIG_DFL);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGHUP, SIG_DFL);
        signal(SIGALRM, SIG_DFL);
        sigset_t keep;
        sigemptyset(&keep);
        if (io->stop_signals_blocked) {
            sigaddset(&keep, SIGTERM);
            sigaddset(&keep, SIGINT);
            sigaddset(&keep, SIGHUP);
        }
        sigprocmask(SIG_SETMASK, &keep, NULL);
        close(gate[0]);
        if (io->track) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != parent)
                _exit(127);
        }
        dup2(in, 0);
        dup2(out, 1);
        dup2(err >= 0 ? err : out, 2);
        execvpe(argv[0], (char *const *)argv, env);
        dprintf(2, "harness: exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    sigprocmask(SIG_SETMASK, &old, NULL);
    close(gate[1]);
    if (pid > 0) {
        char c;
        while (read(gate[0], &c, 1) < 0 && errno == EINTR)
            ;
    }
    close(gate[0]);
    if (pid < 0)
        fprintf(stderr, "harness: fork: %s\n", strerror(errno));
    else if (io->track)
        register_child(pid);
out:
    if (in >= 0)
        close(in);
    if (out >= 0)
        close(out);
    if (err >= 0)
        close(err);
    free(env);
    return pid;
}

int th_proc_spawn(struct th_proc *p, const char *const *argv, const char *const *env,
                  const char *log_path)
{
    if (p->pid > 0) {
        fprintf(stderr, "harness: %s: previous process %d still running\n", argv[0], (int)p->pid);
        return M2A_ERR_ARG;
    }
    if (p->log_path != log_path) {
        free(p->log_path);
        p->log_path = xstrdup(log_path);
    }
    struct stat st;
    p->log_start = stat(log_path, &st) == 0 ? (long)st.st_size : 0;
    p->status = 0;
    struct spawn_io io = {.out_path = log_path,
                          .append = true,
                          .track = true,
                          .stop_signals_blocked = p->stop_signals_blocked};
    pid_t pid = spawn_io(argv, env, &io);
    if (pid < 0)
        return M2A_ERR_IO;
    p->pid = pid;
    return 0;
}

bool th_proc_alive(struct th_proc *p)
{
    if (p->pid <= 0)
        return false;
    int st;
    pid_t r = waitpid(p->pid, &st, WNOHANG);
    if (r == 0)
        return true;
    if (r == p->pid)
        p->status = st;
    unregister_child(p->pid);
    p->pid = 0;
    return false;
}

static bool log_has(struct th_proc *p, const char *needle)
{
    size_t len = 0;
    char *s = th_read_file_from(p->log_path, p->log_start, &len);
    bool found = s && memmem(s, len, needle, strlen(needle)) != NULL;
    free(s);
    return found;
}

int th_proc_log_count(struct th_proc *p, const char *needle)
{
    size_t len = 0, nl = strlen(needle);
    char *s = th_read_file_from(p->log_path, p->log_start, &len);
    int n = 0;
    for (char *q = s; q && nl && (q = memmem(q, len - (size_t)(q - s), needle, nl)); q += nl)
        n++;
    free(s);
    return n;
}

struct log_wait {
    struct th_proc *p;
    const char *needle;
    bool exited;
};

static bool log_cond(void *arg)
{
    struct log_wait *w = arg;
    bool alive = th_proc_alive(w->p);
    if (log_has(w->p, w->needle))
        return true;
    w->exited = !alive;
    return w->exited;
}

int th_proc_wait_log(struct th_proc *p, const char *needle, int timeout_ms)
{
    struct log_wait w = {p, needle, false};
    int rc = th_poll_until(log_cond, &w, timeout_ms);
    if (rc == 0 && !w.exited)
        return 0;
    if (rc == 0)
        rc = M2A_ERR_CLOSED;
    fprintf(stderr, "harness: '%s' not in log %s (%s)\n", needle, p->log_path,
            rc == M2A_ERR_CLOSED ? "process exited" : "timeout");
    th_dump_tail("log", p->log_path, 30);
    return rc;
}

int th_proc_signal(struct th_proc *p, int sig)
{
    if (!th_proc_alive(p))
        return M2A_ERR_CLOSED;
    return kill(p->pid, sig) == 0 ? 0 : M2A_ERR_IO;
}

static bool dead_cond(void *arg)
{
    return !th_proc_alive(arg);
}

static int exit_code_of(int st)
{
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    if (WIFSIGNALED(st))
        return 128 + WTERMSIG(st);
    return -1;
}

int th_proc_wait_exit(struct th_proc *p, int timeout_ms, int *exit_code)
{
    if (th_poll_until(dead_cond, p, timeout_ms) != 0)
        return M2A_ERR_TIMEOUT;
    if (exit_code)
        *exit_code = exit_code_of(p->status);
    return 0;
}

void th_proc_kill(struct th_proc *p)
{
    if (!th_proc_alive(p))
        return;
    kill(p->pid, SIGKILL);
    int st;
    if (waitpid(p->pid, &st, 0) == p->pid)
        p->status = st;
    unregister_child(p->pid);
    p->pid = 0;
}

int th_proc_stop(struct th_proc *p, int sig, int timeout_ms)
{
    int code = 0;
    if (!th_proc_alive(p))
        return 0;
    kill(p->pid, sig);
    if (th_proc_wait_exit(p, timeout_ms, &code) == 0)
        return code;
    fprintf(stderr, "harness: pid %d ignored signal %d for %d ms; SIGKILL\n", (int)p->pid, sig,
            timeout_ms);
    th_proc_kill(p);
    return -1;
}

void th_proc_release(struct th_proc *p)
{
    th_proc_kill(p);
    free(p->log_path);
    p->log_path = NULL;
}

int th_run(const char *const *argv, const char *stdin_text, int timeout_ms, struct th_run_result *r)
{
    char *dir = th_tmpdir_new("run");
    char *in = xasprintf("%s/stdin", dir), *out = xasprintf("%s/stdout", dir),
         *err = xasprintf("%s/stderr", dir);
    int rc = M2A_ERR_IO;
    memset(r, 0, sizeof(*r));
    r->exit_code = -1;
    if (stdin_text && th_write_file(in, stdin_text) != 0)
        goto out;
    /* Output goes to files, not pipes: a daemon the command leaves behind
     * (rabbitmq-server from the script) must not keep us waiting for EOF. */
    struct spawn_io io = {
        .in_path = stdin_text ? in : NULL, .out_path = out, .err_path = err, .track = true};
    struct th_proc p = {0};
    p.pid = spawn_io(argv, NULL, &io);
    if (p.pid < 0)
        goto out;
    if (th_proc_wait_exit(&p, timeout_ms, &r->exit_code) != 0) {
        fprintf(stderr, "harness: %s still running after %d ms; killed\n", argv[0], timeout_ms);
        th_proc_kill(&p);
        r->exit_code = -1;
        rc = M2A_ERR_TIMEOUT;
    } else {
        rc = 0;
    }
    r->out = th_read_file(out, NULL);
    r->err = th_read_file(err, NULL);
out:
    if (!r->out)
        r->out = xstrdup("");
    if (!r->err)
        r->err = xstrdup("");
    th_rmtree(dir);
    free(in);
    free(out);
    free(err);
    free(dir);
    return rc;
}

void th_run_result_free(struct th_run_result *r)
{
    free(r->out);
    free(r->err);
    r->out = r->err = NULL;
}

/* ---- Mosquitto ---------------------------------------------------------- */

/* Writes m->conf_path: the config scripts/lib.sh's m2a_mosquitto_conf
 * prints (the one transformation of docker/mosquitto/mosquitto.conf that
 * the tests, scripts/run.sh and bench/run.sh all use), then extra. */
static int mosq_write_conf(const struct th_mosq *m, enum th_mosq_conf kind, const char *extra)
{
    char *port = xasprintf("%d", m->port), *data = xasprintf("%s/data", m->dir);
    const char *argv[] = {"bash",
                          "-c",
                          ". \"$0\" && m2a_mosquitto_conf \"$@\"",
                          M2A_SOURCE_DIR "/scripts/lib.sh",
                          kind == TH_MOSQ_STOCK ? "stock" : "shipped",
                          port,
                          data,
                          NULL};
    struct th_run_result r;
    int rc = th_run(argv, NULL, 10000, &r);
    if (rc == 0 && r.exit_code != 0) {
        fprintf(stderr, "harness: m2a_mosquitto_conf exited %d: %s", r.exit_code, r.err);
        rc = M2A_ERR_IO;
    }
    if (rc == 0) {
        char *conf = xasprintf("%s%s", r.out, extra ? extra : "");
        rc = th_write_file(m->conf_path, conf);
        free(conf);
    }
    th_run_result_free(&r);
    free(port);
    free(data);
    return rc;
}

static bool mosq_ready(void *arg)
{
    struct th_mosq *m = arg;
    return !th_proc_alive(&m->proc) ||
           (th_port_open(m->port) && (m->extra_port <= 0 || th_port_open(m->extra_port)));
}

static int mosq_launch(struct th_mosq *m)
{
    char *log = xasprintf("%s/mosquitto.log", m->dir);
    const char *argv[] = {"mosquitto", "-c", m->conf_path, NULL};
    int rc = th_proc_spawn(&m->proc, argv, NULL, log);
    free(log);
    if (rc != 0)
        return rc;
    rc = th_poll_until(mosq_ready, m, 15000);
    if (rc == 0 && th_proc_alive(&m->proc))
        return 0;
    fprintf(stderr, "harness: mosquitto on port %d %s\n", m->port,
            rc ? "not ready after 15 s" : "exited");
    th_dump_tail("mosquitto", m->proc.log_path, 20);
    th_proc_kill(&m->proc);
    return rc ? rc : M2A_ERR_CLOSED;
}

struct th_mosq *th_mosq_start_with(enum th_mosq_conf kind, const char *extra, int extra_port)
{
    struct th_mosq *m = xcalloc(1, sizeof(*m));
    m->dir = th_tmpdir_new("mosquitto");
    m->port = th_free_port();
    m->extra_port = extra_port;
    m->conf_path = xasprintf("%s/mosquitto.conf", m->dir);
    char *data = xasprintf("%s/data", m->dir);
    mkdir(data, 0755);
    free(data);
    int rc = mosq_write_conf(m, kind, extra);
    if (rc == 0)
        rc = mosq_launch(m);
    if (rc != 0) {
        th_mosq_free(m);
        return NULL;
    }
    return m;
}

struct th_mosq *th_mosq_start(enum th_mosq_conf kind)
{
    return th_mosq_start_with(kind, NULL, 0);
}

int th_mosq_stop(struct th_mosq *m)
{
    int code = th_proc_stop(&m->proc, SIGTERM, 15000);
    return code == 0 ? 0 : M2A_ERR_TIMEOUT;
}

void th_mosq_kill(struct th_mosq *m)
{
    th_proc_kill(&m->proc);
}

int th_mosq_restart(struct th_mosq *m)
{
    if (th_proc_alive(&m->proc))
        th_mosq_stop(m);
    return mosq_launch(m);
}

void th_mosq_free(struct th_mosq *m)
{
    if (!m)
        return;
    th_proc_release(&m->proc);
    th_tmpdir_remove("mosquitto", m->dir);
    free(m->dir);
    free(m->conf_path);
    free(m);
}

/* ---- RabbitMQ ----------------------------------------------------------- */

#define RABBIT_DIR M2A_TEST_STATE "/rabbitmq"

/* Undoes the quoting of bash's printf %q for the plain values we write. */
static char *unquote(const char *v)
{
    struct m2a_buf b = {0};
    size_t n = strlen(v);
    if (n >= 2 && v[0] == '\'' && v[n - 1] == '\'') {
        m2a_buf_append(&b, v + 1, n - 2);
    } else {
        for (; *v; v++) {
            if (*v == '\\' && v[1])
                v++;
            m2a_buf_append_char(&b, *v);
        }
    }
    return (char *)m2a_buf_cstr(&b);
}

char *th_rabbit_env_get(const char *dir, const char *key)
{
    char *path = xasprintf("%s/env", dir);
    char *val = th_kv_file_get(path, key);
    free(path);
    return val;
}

char *th_kv_file_get(const char *path, const char *key)
{
    char *s = th_read_file(path, NULL);
    char *val = NULL;
    size_t klen = strlen(key);
    for (char *save = NULL, *l = s ? strtok_r(s, "\n", &save) : NULL; l && !val;
         l = strtok_r(NULL, "\n", &save))
        if (strncmp(l, key, klen) == 0 && l[klen] == '=')
            val = unquote(l + klen + 1);
    free(s);
    return val;
}

static int env_int(const char *dir, const char *key)
{
    char *v = th_rabbit_env_get(dir, key);
    int n = v ? atoi(v) : 0;
    free(v);
    return n;
}

const struct th_rabbit *th_rabbit(void)
{
    static struct th_rabbit r;
    free(r.dir);
    free(r.nodename);
    memset(&r, 0, sizeof(r));
    r.dir = xstrdup(RABBIT_DIR);
    r.amqp_port = rabbit_ports[0] = env_int(RABBIT_DIR, "AMQP_PORT");
    rabbit_ports[1] = env_int(RABBIT_DIR, "DIST_PORT");
    rabbit_ports[2] = env_int(RABBIT_DIR, "EPMD_PORT");
    r.server_pid = (pid_t)env_int(RABBIT_DIR, "SERVER_PID");
    r.nodename = th_rabbit_env_get(RABBIT_DIR, "NODENAME");
    return r.amqp_port > 0 ? &r : NULL;
}

int th_rabbit_port(void)
{
    const struct th_rabbit *r = th_rabbit();
    if (!r)
        ck_abort_msg("no RabbitMQ: " RABBIT_DIR "/env missing; run via ctest (fixture "
                     "brokers.start) or scripts/test-rabbitmq.sh start " RABBIT_DIR);
    return r->amqp_port;
}

int th_rabbit_script(const char *verb, const char *dir, const char *const *args,
                     struct th_run_result *r)
{
    const char *argv[32] = {"bash", M2A_SOURCE_DIR "/scripts/test-rabbitmq.sh", verb, dir};
    size_t n = 4;
    for (size_t i = 0; args && args[i] && n < 31; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    int rc = th_run(argv, NULL, 180000, r);
    if (rc == 0 && r->exit_code != 0)
        rc = M2A_ERR_IO;
    return rc;
}

int th_rabbit_do(const char *verb)
{
    struct th_run_result r;
    uint64_t t0 = m2a_now_ms();
    int rc = th_rabbit_script(verb, RABBIT_DIR, NULL, &r);
    fprintf(stderr, "harness: rabbitmq %s: exit %d in %.1f s\n%s", verb, r.exit_code,
            (double)(m2a_now_ms() - t0) / 1000.0, r.err);
    th_run_result_free(&r);
    th_rabbit();
    return rc;
}

int th_rabbit_ctl(const char *const *args, struct th_run_result *r)
{
    return th_rabbit_script("ctl", RABBIT_DIR, args, r);
}

int th_rabbit_set_watermark(const char *value)
{
    const char *args[] = {"set_vm_memory_high_watermark", value, NULL};
    struct th_run_result r;
    int rc = th_rabbit_ctl(args, &r);
    if (rc != 0)
        fprintf(stderr, "harness: set_vm_memory_high_watermark %s: exit %d\n%s%s", value,
                r.exit_code, r.out, r.err);
    th_run_result_free(&r);
    return rc;
}

void th_rabbit_restore_watermark(void)
{
    th_rabbit_set_watermark("0.4");
}

/* ---- the bridge --------------------------------------------------------- */

struct th_bridge *th_bridge_new(const struct th_mosq *mosq)
{
    struct th_bridge *b = xcalloc(1, sizeof(*b));
    b->dir = th_tmpdir_new("bridge");
    b->config_path = xasprintf("%s/mqtt2amqp.yaml", b->dir);
    b->spool_dir = xasprintf("%s/spool", b->dir);
    b->vars = xcalloc(1, sizeof(char *));
    th_bridge_set(b, "DIR", "%s", b->dir);
    th_bridge_set(b, "SPOOL_DIR", "%s", b->spool_dir);
    th_bridge_set(b, "MQTT_HOST", "127.0.0.1");
    th_bridge_set(b, "AMQP_HOST", "127.0.0.1");
    const struct th_rabbit *r = th_rabbit();
    if (r)
        th_bridge_set(b, "AMQP_PORT", "%d", r->amqp_port);
    if (mosq)
        th_bridge_set(b, "MQTT_PORT", "%d", mosq->port);
    return b;
}

void th_bridge_set(struct th_bridge *b, const char *name, const char *fmt, ...)
{
    va_list ap;
    char *val = NULL;
    va_start(ap, fmt);
    if (vasprintf(&val, fmt, ap) < 0)
        abort();
    va_end(ap);
    char *entry = xasprintf("%s=%s", name, val);
    free(val);
    size_t n = 0, nlen = strlen(name);
    for (; b->vars[n]; n++) {
        if (strncmp(b->vars[n], name, nlen) == 0 && b->vars[n][nlen] == '=') {
            free(b->vars[n]);
            b->vars[n] = entry;
            return;
        }
    }
    b->vars = xrealloc(b->vars, (n + 2) * sizeof(char *));
    b->vars[n] = entry;
    b->vars[n + 1] = NULL;
}

int th_bridge_config(struct th_bridge *b, const char *yaml)
{
    char *text = th_subst(yaml, (const char *const *)b->vars);
    int rc = th_write_file(b->config_path, text);
    free(text);
    return rc;
}

int th_bridge_start(struct th_bridge *b, const char *const *extra)
{
    const char *argv[32] = {M2A_BINARY, "-c", b->config_path};
    size_t n = 3;
    for (size_t i = 0; extra && extra[i] && n < 31; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    char *log = xasprintf("%s/bridge.log", b->dir);
    b->proc.stop_signals_blocked = true;
    int rc = th_proc_spawn(&b->proc, argv, (const char *const *)b->vars, log);
    free(log);
    return rc;
}

int th_bridge_wait_log(struct th_bridge *b, const char *needle, int timeout_ms)
{
    return th_proc_wait_log(&b->proc, needle, timeout_ms);
}

int th_bridge_signal(struct th_bridge *b, int sig)
{
    return th_proc_signal(&b->proc, sig);
}

int th_bridge_wait_exit(struct th_bridge *b, int timeout_ms, int *exit_code)
{
    int rc = th_proc_wait_exit(&b->proc, timeout_ms, exit_code);
    if (rc != 0) {
        fprintf(stderr, "harness: bridge pid %d did not exit within %d ms\n", (int)b->proc.pid,
                timeout_ms);
        th_dump_tail("bridge", b->proc.log_path, 30);
    }
    return rc;
}

void th_bridge_kill(struct th_bridge *b)
{
    th_proc_kill(&b->proc);
}

int th_bridge_stop(struct th_bridge *b, int timeout_ms)
{
    int code = -1;
    int rc = th_bridge_signal(b, SIGTERM);
    if (rc != 0)
        fprintf(stderr, "harness: bridge not running at stop\n");
    if (rc == 0)
        rc = th_bridge_wait_exit(b, timeout_ms, &code);
    if (rc == 0 && code != 0) {
        fprintf(stderr, "harness: bridge exited with status %d after SIGTERM\n", code);
        th_dump_tail("bridge", b->proc.log_path, 30);
        rc = M2A_ERR_IO;
    }
    return rc;
}

struct count_wait {
    struct th_bridge *b;
    const char *needle;
    int n;
};

static bool count_reached(void *arg)
{
    struct count_wait *w = arg;
    return th_proc_log_count(&w->b->proc, w->needle) >= w->n;
}

int th_bridge_wait_log_count(struct th_bridge *b, const char *needle, int n, int timeout_ms)
{
    struct count_wait w = {b, needle, n};
    int rc = th_poll_until(count_reached, &w, timeout_ms);
    if (rc != 0) {
        fprintf(stderr, "harness: '%s' seen %d times in the bridge's log, wanted %d\n", needle,
                th_proc_log_count(&b->proc, needle), n);
        th_dump_tail("bridge", b->proc.log_path, 30);
    }
    return rc;
}

long th_bridge_stat(struct th_bridge *b, const char *name)
{
    char *log = th_read_file_from(b->proc.log_path, b->proc.log_start, NULL);
    const char *line = NULL;
    for (const char *p = log; p && (p = strstr(p, "stats: received=")) != NULL; p++)
        line = p;
    long v = -1;
    if (line) {
        const char *eol = strchr(line, '\n');
        char *key = xasprintf(" %s=", name);
        const char *k = strstr(line, key);
        if (k && (!eol || k < eol))
            v = strtol(k + strlen(key), NULL, 10);
        free(key);
    }
    free(log);
    return v;
}

struct stat_wait {
    struct th_bridge *b;
    const char *name;
    long at_least;
};

static bool stat_reached(void *arg)
{
    struct stat_wait *w = arg;
    return th_bridge_stat(w->b, w->name) >= w->at_least;
}

int th_bridge_wait_stat(struct th_bridge *b, const char *name, long at_least, int timeout_ms)
{
    struct stat_wait w = {b, name, at_least};
    int rc = th_poll_until(stat_reached, &w, timeout_ms);
    if (rc != 0)
        fprintf(stderr, "harness: stat %s is %ld, wanted >= %ld\n", name, th_bridge_stat(b, name),
                at_least);
    return rc;
}

void th_bridge_free(struct th_bridge *b)
{
    if (!b)
        return;
    th_proc_release(&b->proc);
    th_tmpdir_remove("bridge", b->dir);
    for (size_t i = 0; b->vars && b->vars[i]; i++)
        free(b->vars[i]);
    free(b->vars);
    free(b->dir);
    free(b->config_path);
    free(b->spool_dir);
    free(b);
}

/* ---- AMQP consumer ------------------------------------------------------ */

struct th_amqp {
    amqp_connection_state_t conn;
    bool dead;
    bool quiet;
    bool confirms; /* confirm.select done: publish waits for basic.ack */
};

static char *bytes_dup(amqp_bytes_t b)
{
    return xstrndup(b.bytes ? b.bytes : "", b.len);
}

/* Checks an RPC reply; recovers channel 1 after a channel-level error so a
 * failed passive declare does not poison later calls. */
static int amqp_check(struct th_amqp *c, amqp_rpc_reply_t r, const char *what)
{
    if (r.reply_type == AMQP_RESPONSE_NORMAL)
        return 0;
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION) {
        if (!c->quiet)
            fprintf(stderr, "harness: amqp %s: %s\n", what, amqp_error_string2(r.library_error));
        c->dead = true;
        return M2A_ERR_AMQP;
    }
    if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION && r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
        amqp_channel_close_t *m = r.reply.decoded;
        if (!c->quiet)
            fprintf(stderr, "harness: amqp %s: channel closed: %d %.*s\n", what, m->reply_code,
                    (int)m->reply_text.len, (char *)m->reply_text.bytes);
        amqp_channel_close_ok_t ok = {0};
        amqp_send_method(c->conn, 1, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
        amqp_channel_open(c->conn, 1);
        if (amqp_get_rpc_reply(c->conn).reply_type != AMQP_RESPONSE_NORMAL)
            c->dead = true;
        return M2A_ERR_AMQP;
    }
    if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
        r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
        amqp_connection_close_t *m = r.reply.decoded;
        if (!c->quiet)
            fprintf(stderr, "harness: amqp %s: connection closed: %d %.*s\n", what, m->reply_code,
                    (int)m->reply_text.len, (char *)m->reply_text.bytes);
        amqp_connection_close_ok_t ok = {0};
        amqp_send_method(c->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
    } else if (!c->quiet) {
        fprintf(stderr, "harness: amqp %s: failed (reply type %d)\n", what, (int)r.reply_type);
    }
    c->dead = true;
    return M2A_ERR_AMQP;
}

struct th_amqp *th_amqp_connect(int port, int timeout_ms, bool quiet)
{
    struct th_amqp *c = xcalloc(1, sizeof(*c));
    c->quiet = quiet;
    c->conn = amqp_new_connection();
    amqp_socket_t *sock = amqp_tcp_socket_new(c->conn);
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    struct timeval rpc = {30, 0};
    int st = sock ? amqp_socket_open_noblock(sock, "127.0.0.1", port, &tv) : AMQP_STATUS_NO_MEMORY;
    if (st != AMQP_STATUS_OK) {
        if (!quiet)
            fprintf(stderr, "harness: amqp connect 127.0.0.1:%d: %s\n", port,
                    amqp_error_string2(st));
        goto fail;
    }
    /* Bounded RPCs: a stopped app or a blocked broker must not hang a test. */
    amqp_set_rpc_timeout(c->conn, &rpc);
    if (amqp_check(c,
                   amqp_login(c->conn, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, "guest", "guest"),
                   "login") != 0)
        goto fail;
    amqp_channel_open(c->conn, 1);
    if (amqp_check(c, amqp_get_rpc_reply(c->conn), "channel.open") != 0)
        goto fail;
    return c;
fail:
    c->dead = true;
    th_amqp_free(c);
    return NULL;
}

void th_amqp_free(struct th_amqp *c)
{
    if (!c)
        return;
    if (!c->dead) {
        amqp_channel_close(c->conn, 1, AMQP_REPLY_SUCCESS);
        amqp_connection_close(c->conn, AMQP_REPLY_SUCCESS);
    }
    amqp_destroy_connection(c->conn);
    free(c);
}

int th_amqp_declare(struct th_amqp *c, const char *queue, bool durable, bool exclusive)
{
    amqp_queue_declare(c->conn, 1, amqp_cstring_bytes(queue), 0, durable, exclusive, 0,
                       amqp_empty_table);
    return amqp_check(c, amqp_get_rpc_reply(c->conn), "queue.declare");
}

int th_amqp_declare_quorum(struct th_amqp *c, const char *queue)
{
    amqp_table_entry_t e = {
        .key = amqp_cstring_bytes("x-queue-type"),
        .value = {.kind = AMQP_FIELD_KIND_UTF8, .value.bytes = amqp_cstring_bytes("quorum")}};
    amqp_table_t args = {.num_entries = 1, .entries = &e};
    amqp_queue_declare(c->conn, 1, amqp_cstring_bytes(queue), 0, 1, 0, 0, args);
    return amqp_check(c, amqp_get_rpc_reply(c->conn), "queue.declare(quorum)");
}

int th_amqp_declare_exchange(struct th_amqp *c, const char *exchange, const char *type,
                             bool durable)
{
    amqp_exchange_declare(c->conn, 1, amqp_cstring_bytes(exchange), amqp_cstring_bytes(type), 0,
                          durable, 0, 0, amqp_empty_table);
    return amqp_check(c, amqp_get_rpc_reply(c->conn), "exchange.declare");
}

int th_amqp_bind(struct th_amqp *c, const char *queue, const char *exchange,
                 const char *binding_key)
{
    amqp_queue_bind(c->conn, 1, amqp_cstring_bytes(queue), amqp_cstring_bytes(exchange),
                    amqp_cstring_bytes(binding_key), amqp_empty_table);
    return amqp_check(c, amqp_get_rpc_reply(c->conn), "queue.bind");
}

int th_amqp_purge(struct th_amqp *c, const char *queue)
{
    amqp_queue_purge(c->conn, 1, amqp_cstring_bytes(queue));
    return amqp_check(c, amqp_get_rpc_reply(c->conn), "queue.purge");
}

int th_amqp_delete(struct th_amqp *c, const char *queue)
{
    amqp_queue_delete(c->conn, 1, amqp_cstring_bytes(queue), 0, 0);
    return amqp_check(c, amqp_get_rpc_reply(c->conn), "queue.delete");
}

long th_amqp_count(struct th_amqp *c, const char *queue)
{
    amqp_queue_declare_ok_t *ok =
        amqp_queue_declare(c->conn, 1, amqp_cstring_bytes(queue), 1, 0, 0, 0, amqp_empty_table);
    if (amqp_check(c, amqp_get_rpc_reply(c->conn), "queue.declare(passive)") != 0 || !ok)
        return M2A_ERR_AMQP;
    return (long)ok->message_count;
}

int th_amqp_confirm_select(struct th_amqp *c)
{
    amqp_confirm_select(c->conn, 1);
    int rc = amqp_check(c, amqp_get_rpc_reply(c->conn), "confirm.select");
    c->confirms = rc == 0;
    return rc;
}

/* Waits for the basic.ack of the message just published (one at a time, so
 * any ack is ours); skips a basic.return that comes before it. */
static int wait_confirm(struct th_amqp *c)
{
    uint64_t deadline = m2a_now_ms() + 30000;
    while (m2a_now_ms() < deadline) {
        amqp_frame_t f;
        struct timeval tv = {1, 0};
        int st = amqp_simple_wait_frame_noblock(c->conn, &f, &tv);
        if (st == AMQP_STATUS_TIMEOUT)
            continue;
        if (st != AMQP_STATUS_OK)
            break;
        if (f.frame_type != AMQP_FRAME_METHOD)
            continue;
        if (f.payload.method.id == AMQP_BASIC_ACK_METHOD)
            return 0;
        if (f.payload.method.id == AMQP_BASIC_NACK_METHOD) {
            fprintf(stderr, "harness: amqp publish: nacked by the broker\n");
            return M2A_ERR_AMQP;
        }
        if (f.payload.method.id == AMQP_BASIC_RETURN_METHOD) {
            amqp_message_t msg;
            if (amqp_read_message(c->conn, f.channel, &msg, 0).reply_type != AMQP_RESPONSE_NORMAL)
                break;
            amqp_destroy_message(&msg);
            continue;
        }
        if (f.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD ||
            f.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD)
            break;
    }
    fprintf(stderr, "harness: amqp publish: no confirm\n");
    c->dead = true;
    return M2A_ERR_AMQP;
}

int th_amqp_publish(struct th_amqp *c, const char *exchange, const char *routing_key,
                    const char *body, bool persistent)
{
    amqp_basic_properties_t props = {0};
    props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG;
    props.delivery_mode = persistent ? 2 : 1;
    props.content_type = amqp_cstring_bytes("text/plain");
    int st =
        amqp_basic_publish(c->conn, 1, amqp_cstring_bytes(exchange),
                           amqp_cstring_bytes(routing_key), 0, 0, &props, amqp_cstring_bytes(body));
    if (st != AMQP_STATUS_OK) {
        fprintf(stderr, "harness: amqp publish: %s\n", amqp_error_string2(st));
        c->dead = true;
        return M2A_ERR_AMQP;
    }
    return c->confirms ? wait_confirm(c) : 0;
}

int th_amqp_consume(struct th_amqp *c, const char *queue)
{
    /* Manual acks: a message RabbitMQ sent but this consumer never read (in
     * flight when the connection died, or when the test closed it) is
     * requeued, not lost, so a test's lost count is the bridge's alone. */
    amqp_basic_qos(c->conn, 1, 0, 2000, 0);
    int rc = amqp_check(c, amqp_get_rpc_reply(c->conn), "basic.qos");
    if (rc != 0)
        return rc;
    amqp_basic_consume(c->conn, 1, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 0, 0,
                       amqp_empty_table);
    return amqp_check(c, amqp_get_rpc_reply(c->conn), "basic.consume");
}

struct th_amqp *th_amqp_consumer(int port, const char *queue, const char *exchange,
                                 const char *binding_key)
{
    struct th_amqp *c = th_amqp_connect(port, 10000, false);
    if (!c)
        return NULL;
    int rc = 0;
    if (exchange) {
        rc = th_amqp_declare_exchange(c, exchange, "topic", true);
        if (rc == 0)
            rc = th_amqp_declare(c, queue, true, false);
        if (rc == 0 && binding_key)
            rc = th_amqp_bind(c, queue, exchange, binding_key);
        if (rc == 0)
            rc = th_amqp_purge(c, queue);
    }
    if (rc == 0)
        rc = th_amqp_consume(c, queue);
    if (rc != 0) {
        fprintf(stderr, "harness: no consumer on queue %s\n", queue);
        th_amqp_free(c);
        return NULL;
    }
    return c;
}

static char *field_str(const amqp_field_value_t *v)
{
    switch (v->kind) {
    case AMQP_FIELD_KIND_UTF8:
    case AMQP_FIELD_KIND_BYTES:
        return bytes_dup(v->value.bytes);
    case AMQP_FIELD_KIND_BOOLEAN:
        return xstrdup(v->value.boolean ? "true" : "false");
    case AMQP_FIELD_KIND_I8:
        return xasprintf("%d", (int)v->value.i8);
    case AMQP_FIELD_KIND_U8:
        return xasprintf("%u", (unsigned)v->value.u8);
    case AMQP_FIELD_KIND_I16:
        return xasprintf("%d", (int)v->value.i16);
    case AMQP_FIELD_KIND_U16:
        return xasprintf("%u", (unsigned)v->value.u16);
    case AMQP_FIELD_KIND_I32:
        return xasprintf("%d", (int)v->value.i32);
    case AMQP_FIELD_KIND_U32:
        return xasprintf("%u", (unsigned)v->value.u32);
    case AMQP_FIELD_KIND_I64:
        return xasprintf("%lld", (long long)v->value.i64);
    case AMQP_FIELD_KIND_U64:
    case AMQP_FIELD_KIND_TIMESTAMP:
        return xasprintf("%llu", (unsigned long long)v->value.u64);
    case AMQP_FIELD_KIND_F32:
        return xasprintf("%g", (double)v->value.f32);
    case AMQP_FIELD_KIND_F64:
        return xasprintf("%g", v->value.f64);
    case AMQP_FIELD_KIND_VOID:
        return xstrdup("");
    default:
        return xasprintf("<field kind '%c'>", (char)v->kind);
    }
}

static long parse_seq(const char *body, size_t len)
{
    const char *p = memmem(body, len, "seq=", 4);
    if (!p)
        return -1;
    char *end;
    long v = strtol(p + 4, &end, 10);
    return end == p + 4 ? -1 : v;
}

#define PROP_STR(flag, field) ((p->_flags & (flag)) ? bytes_dup(p->field) : NULL)

static void msg_from_envelope(struct th_msg *m, const amqp_envelope_t *env)
{
    const amqp_basic_properties_t *p = &env->message.properties;
    memset(m, 0, sizeof(*m));
    m->body = bytes_dup(env->message.body);
    m->body_len = env->message.body.len;
    m->seq = parse_seq(m->body, m->body_len);
    m->exchange = bytes_dup(env->exchange);
    m->routing_key = bytes_dup(env->routing_key);
    m->redelivered = env->redelivered;
    m->content_type = PROP_STR(AMQP_BASIC_CONTENT_TYPE_FLAG, content_type);
    m->content_encoding = PROP_STR(AMQP_BASIC_CONTENT_ENCODING_FLAG, content_encoding);
    m->message_id = PROP_STR(AMQP_BASIC_MESSAGE_ID_FLAG, message_id);
    m->correlation_id = PROP_STR(AMQP_BASIC_CORRELATION_ID_FLAG, correlation_id);
    m->type = PROP_STR(AMQP_BASIC_TYPE_FLAG, type);
    m->app_id = PROP_STR(AMQP_BASIC_APP_ID_FLAG, app_id);
    m->expiration = PROP_STR(AMQP_BASIC_EXPIRATION_FLAG, expiration);
    m->delivery_mode = (p->_flags & AMQP_BASIC_DELIVERY_MODE_FLAG) ? p->delivery_mode : -1;
    m->priority = (p->_flags & AMQP_BASIC_PRIORITY_FLAG) ? p->priority : -1;
    m->timestamp = (p->_flags & AMQP_BASIC_TIMESTAMP_FLAG) ? (int64_t)p->timestamp : -1;
    if (p->_flags & AMQP_BASIC_HEADERS_FLAG && p->headers.num_entries > 0) {
        m->nheaders = (size_t)p->headers.num_entries;
        m->headers = xcalloc(m->nheaders, sizeof(*m->headers));
        for (size_t i = 0; i < m->nheaders; i++) {
            m->headers[i].key = bytes_dup(p->headers.entries[i].key);
            m->headers[i].value = field_str(&p->headers.entries[i].value);
        }
    }
}

const char *th_msg_header(const struct th_msg *m, const char *key)
{
    for (size_t i = 0; i < m->nheaders; i++)
        if (strcmp(m->headers[i].key, key) == 0)
            return m->headers[i].value;
    return NULL;
}

void th_msgs_free(struct th_msgs *ms)
{
    for (size_t i = 0; i < ms->n; i++) {
        struct th_msg *m = &ms->v[i];
        free(m->body);
        free(m->exchange);
        free(m->routing_key);
        free(m->content_type);
        free(m->content_encoding);
        free(m->message_id);
        free(m->correlation_id);
        free(m->type);
        free(m->app_id);
        free(m->expiration);
        for (size_t j = 0; j < m->nheaders; j++) {
            free(m->headers[j].key);
            free(m->headers[j].value);
        }
        free(m->headers);
    }
    free(ms->v);
    memset(ms, 0, sizeof(*ms));
}

static struct th_msg *msgs_push(struct th_msgs *ms)
{
    if (ms->n == ms->cap) {
        ms->cap = ms->cap ? ms->cap * 2 : 256;
        ms->v = xrealloc(ms->v, ms->cap * sizeof(*ms->v));
    }
    return &ms->v[ms->n++];
}

/* Open-addressing set of seqs >= 0, to count distinct ones as they come. */
struct seqset {
    long *slot; /* -1 = empty */
    size_t cap, n;
};

static void seqset_add(struct seqset *s, long v);

static void seqset_grow(struct seqset *s)
{
    struct seqset bigger = {xmalloc((s->cap ? s->cap * 2 : 1024) * sizeof(long)),
                            s->cap ? s->cap * 2 : 1024, 0};
    memset(bigger.slot, 0xff, bigger.cap * sizeof(long));
    for (size_t i = 0; i < s->cap; i++)
        if (s->slot[i] >= 0)
            seqset_add(&bigger, s->slot[i]);
    free(s->slot);
    *s = bigger;
}

static void seqset_add(struct seqset *s, long v)
{
    if (v < 0)
        return;
    if ((s->n + 1) * 2 > s->cap)
        seqset_grow(s);
    size_t i = ((size_t)v * 2654435761u) & (s->cap - 1);
    while (s->slot[i] >= 0) {
        if (s->slot[i] == v)
            return;
        i = (i + 1) & (s->cap - 1);
    }
    s->slot[i] = v;
    s->n++;
}

/* Reads one non-delivery frame (basic.return, blocked, close); false if
 * the connection or channel is gone. */
static bool amqp_other_frame(struct th_amqp *c)
{
    amqp_frame_t f;
    struct timeval tv = {5, 0};
    if (amqp_simple_wait_frame_noblock(c->conn, &f, &tv) != AMQP_STATUS_OK)
        return false;
    if (f.frame_type != AMQP_FRAME_METHOD)
        return true;
    switch (f.payload.method.id) {
    case AMQP_BASIC_RETURN_METHOD: {
        amqp_message_t msg;
        if (amqp_read_message(c->conn, f.channel, &msg, 0).reply_type != AMQP_RESPONSE_NORMAL)
            return false;
        amqp_destroy_message(&msg);
        return true;
    }
    case AMQP_CHANNEL_CLOSE_METHOD:
    case AMQP_CONNECTION_CLOSE_METHOD:
        if (!c->quiet)
            fprintf(stderr, "harness: amqp consumer: server closed the %s\n",
                    f.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD ? "channel" : "connection");
        return false;
    default:
        return true; /* basic.ack, connection.blocked/unblocked, ... */
    }
}

/* One delivery into out, waiting at most wait_ms: 1 got one, 0 timeout, <0 dead. */
static int amqp_next(struct th_amqp *c, struct th_msgs *out, int wait_ms)
{
    if (c->dead)
        return M2A_ERR_AMQP;
    amqp_envelope_t env;
    struct timeval tv = {wait_ms / 1000, (wait_ms % 1000) * 1000};
    amqp_maybe_release_buffers(c->conn);
    amqp_rpc_reply_t r = amqp_consume_message(c->conn, &env, &tv, 0);
    if (r.reply_type == AMQP_RESPONSE_NORMAL) {
        msg_from_envelope(msgs_push(out), &env);
        int st = amqp_basic_ack(c->conn, env.channel, env.delivery_tag, 0);
        amqp_destroy_envelope(&env);
        if (st != AMQP_STATUS_OK) {
            c->dead = true;
            return M2A_ERR_AMQP;
        }
        return 1;
    }
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && r.library_error == AMQP_STATUS_TIMEOUT)
        return 0;
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
        r.library_error == AMQP_STATUS_UNEXPECTED_STATE && amqp_other_frame(c))
        return 0;
    if (!c->quiet && r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION)
        fprintf(stderr, "harness: amqp consume: %s\n", amqp_error_string2(r.library_error));
    c->dead = true;
    return M2A_ERR_AMQP;
}

int th_amqp_collect(struct th_amqp *c, struct th_msgs *out, size_t distinct, int timeout_ms)
{
    struct seqset seen = {0};
    seqset_grow(&seen);
    for (size_t i = 0; i < out->n; i++)
        seqset_add(&seen, out->v[i].seq);
    uint64_t deadline = m2a_now_ms() + (uint64_t)timeout_ms;
    int rc = 0;
    while (seen.n < distinct) {
        uint64_t now = m2a_now_ms();
        if (now >= deadline) {
            rc = M2A_ERR_TIMEOUT;
            break;
        }
        int got = amqp_next(c, out, (int)(deadline - now));
        if (got < 0) {
            rc = got;
            break;
        }
        if (got > 0)
            seqset_add(&seen, out->v[out->n - 1].seq);
    }
    free(seen.slot);
    return rc;
}

long th_amqp_drain(struct th_amqp *c, struct th_msgs *out, int quiet_ms)
{
    long n = 0;
    while (amqp_next(c, out, quiet_ms) > 0)
        n++;
    return n;
}

/* ---- MQTT publisher ----------------------------------------------------- */

static pthread_once_t mosq_once = PTHREAD_ONCE_INIT;

static void mosq_init(void)
{
    mosquitto_lib_init();
}

struct pubstate {
    long acked;
    int connack; /* -1 until CONNACK */
    bool gone;
};

static void pub_on_connect(struct mosquitto *mosq, void *obj, int rc)
{
    (void)mosq;
    ((struct pubstate *)obj)->connack = rc;
}

static void pub_on_publish(struct mosquitto *mosq, void *obj, int mid)
{
    (void)mosq;
    (void)mid;
    ((struct pubstate *)obj)->acked++;
}

static void pub_on_disconnect(struct mosquitto *mosq, void *obj, int rc)
{
    (void)mosq;
    (void)rc;
    ((struct pubstate *)obj)->gone = true;
}

static char *pub_payload(const struct th_pub *p, long seq, const char *topic, int *len)
{
    char *s = xasprintf("seq=%ld topic=%s ", seq, topic);
    size_t n = strlen(s);
    if (n < p->payload_size) {
        s = xrealloc(s, p->payload_size + 1);
        memset(s + n, 'x', p->payload_size - n);
        n = p->payload_size;
        s[n] = 0;
    }
    *len = (int)n;
    return s;
}

long th_mqtt_publish(const struct th_pub *p)
{
    pthread_once(&mosq_once, mosq_init);
    struct pubstate st = {0, -1, false};
    uint64_t t0 = m2a_now_ms(), deadline = t0 + (uint64_t)p->timeout_ms;
    int window = p->window > 0 ? p->window : 100;
    char idbuf[64];
    if (!p->client_id)
        snprintf(idbuf, sizeof(idbuf), "th-pub-%d-%llu", (int)getpid(),
                 (unsigned long long)m2a_now_us());
    struct mosquitto *mosq = mosquitto_new(p->client_id ? p->client_id : idbuf, true, &st);
    long sent = 0;
    if (!mosq)
        return -1;
    if (p->protocol == 5)
        mosquitto_int_option(mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
    /* Our own window decides; the library must not queue behind its own. */
    mosquitto_max_inflight_messages_set(mosq, (unsigned)window);
    if (p->username)
        mosquitto_username_pw_set(mosq, p->username, p->password);
    mosquitto_connect_callback_set(mosq, pub_on_connect);
    mosquitto_publish_callback_set(mosq, pub_on_publish);
    mosquitto_disconnect_callback_set(mosq, pub_on_disconnect);
    if (mosquitto_connect(mosq, "127.0.0.1", p->port, 60) != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "harness: mqtt connect 127.0.0.1:%d failed\n", p->port);
        mosquitto_destroy(mosq);
        return -1;
    }
    while (st.connack < 0 && !st.gone && m2a_now_ms() < deadline)
        if (mosquitto_loop(mosq, 10, 1) != MOSQ_ERR_SUCCESS)
            st.gone = true;
    if (st.connack != 0) {
        fprintf(stderr, "harness: mqtt connect 127.0.0.1:%d: connack %d\n", p->port, st.connack);
        mosquitto_destroy(mosq);
        return -1;
    }
    while (st.acked < p->count && !st.gone && m2a_now_ms() < deadline) {
        while (sent < p->count && sent - st.acked < window) {
            long seq = p->first + sent;
            const char *topic = p->topics[(size_t)seq % p->ntopics];
            int len;
            char *payload = pub_payload(p, seq, topic, &len);
            int rc = mosquitto_publish(mosq, NULL, topic, len, payload, p->qos, p->retain);
            free(payload);
            if (rc != MOSQ_ERR_SUCCESS) {
                st.gone = true;
                break;
            }
            sent++;
        }
        if (!st.gone && mosquitto_loop(mosq, 10, 1) != MOSQ_ERR_SUCCESS)
            st.gone = true;
    }
    long acked = st.acked;
    if (!st.gone) {
        mosquitto_disconnect(mosq);
        for (int i = 0; i < 10 && !st.gone; i++)
            if (mosquitto_loop(mosq, 10, 1) != MOSQ_ERR_SUCCESS)
                break;
    }
    mosquitto_destroy(mosq);
    double secs = (double)(m2a_now_ms() - t0) / 1000.0;
    if (!p->quiet)
        fprintf(stderr, "mqtt publish: port=%d qos=%d acked=%ld/%ld in %.2f s (%.0f msg/s)%s\n",
                p->port, p->qos, acked, p->count, secs, secs > 0 ? (double)acked / secs : 0.0,
                acked < p->count ? " INCOMPLETE" : "");
    return acked;
}

/* ---- delivery checking -------------------------------------------------- */

struct th_delivery th_check_seqs(long first, long sent, const long *seqs, size_t n)
{
    struct th_delivery d = {.sent = sent, .received = (long)n};
    unsigned *count = xcalloc(sent > 0 ? (size_t)sent : 1, sizeof(unsigned));
    for (size_t i = 0; i < n; i++) {
        long s = seqs[i];
        if (s >= first && s < first + sent)
            count[s - first]++;
        else
            d.unexpected++;
    }
    for (long i = 0; i < sent; i++) {
        if (count[i] == 0)
            d.lost++;
        else
            d.duplicated += count[i] - 1;
    }
    free(count);
    printf("delivery: sent=%ld received=%ld lost=%ld duplicated=%ld unexpected=%ld\n", d.sent,
           d.received, d.lost, d.duplicated, d.unexpected);
    fflush(stdout);
    return d;
}

struct th_delivery th_check_msgs(long first, long sent, const struct th_msgs *ms)
{
    long *seqs = xcalloc(ms->n ? ms->n : 1, sizeof(long));
    for (size_t i = 0; i < ms->n; i++)
        seqs[i] = ms->v[i].seq;
    struct th_delivery d = th_check_seqs(first, sent, seqs, ms->n);
    free(seqs);
    return d;
}

size_t th_msgs_distinct(const struct th_msgs *ms)
{
    size_t n = 0;
    long max = -1;
    for (size_t i = 0; i < ms->n; i++)
        if (ms->v[i].seq > max)
            max = ms->v[i].seq;
    if (max < 0)
        return 0;
    unsigned char *seen = xcalloc((size_t)max + 1, 1);
    for (size_t i = 0; i < ms->n; i++)
        if (ms->v[i].seq >= 0 && !seen[ms->v[i].seq]) {
            seen[ms->v[i].seq] = 1;
            n++;
        }
    free(seen);
    return n;
}
