/* crashfs.c - the model of what a power loss leaves, replayed from a trace
 * of the spool's file-system calls; the assumptions are in crashfs.h.
 *
 * Nodes are files and directories, by index. Each file keeps its current
 * bytes, its durable bytes (a copy taken at each completed sync) and the
 * data operations since; each directory its current entries, its durable
 * entries and the entry changes since. Directories opened by path are
 * found by path; the parent of one created by mkdir is a node of its own,
 * taken as durable, holding the entry mkdir made. Single-threaded. */
#include "crashfs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mqtt2amqp/util.h"

struct dataop {
    size_t call;
    bool trunc;
    uint64_t off, len; /* write: range; trunc: the new length */
    const unsigned char *data;
};

enum dirop_kind { D_CREATE, D_RENAME, D_UNLINK };

struct dirop {
    size_t call;
    enum dirop_kind kind;
    char name[TH_IO_NAME_MAX], name2[TH_IO_NAME_MAX]; /* CREATE, UNLINK: name; RENAME: old, new */
    int node;
};

struct ent {
    char name[TH_IO_NAME_MAX];
    int node;
};

struct ents {
    struct ent *v;
    size_t n, cap;
};

struct node {
    bool dir;
    char path[TH_IO_NAME_MAX]; /* directories opened or made by path */
    int parent;                /* ... and the directory holding them, or -1 */
    char base[TH_IO_NAME_MAX]; /* ... under this name */
    /* files */
    struct m2a_buf cur, dur;
    struct dataop *pend;
    size_t npend, pcap;
    /* directories */
    struct ents ents, dents; /* current, durable */
    struct dirop *dpend;
    size_t ndpend, dpcap;
};

struct fdmap {
    int fd, node;
};

struct th_crashfs {
    const struct th_iotrace *t;
    size_t pos;
    struct node *nodes;
    size_t nnodes, ncap;
    struct fdmap *fds;
    size_t nfds, fcap;
    int spool; /* the spool's directory: the first one a file is opened in */
    char err[1024];
    /* the units at pos, computed on demand */
    struct th_crashfs_unit *units;
    size_t nunits, ucap;
    bool units_valid;
    /* scratch for build: a working buffer per node, valid when its mark
     * is the build's number */
    struct m2a_buf *work;
    uint64_t *work_mark;
    size_t nwork;
    uint64_t builds;
};

/* --- nodes, entries, fds --- */

static int node_new(struct th_crashfs *fs, bool dir, const char *path)
{
    if (fs->nnodes == fs->ncap) {
        fs->ncap = fs->ncap ? 2 * fs->ncap : 64;
        fs->nodes = xrealloc(fs->nodes, fs->ncap * sizeof(*fs->nodes));
    }
    struct node *n = &fs->nodes[fs->nnodes];
    memset(n, 0, sizeof(*n));
    n->dir = dir;
    n->parent = -1;
    snprintf(n->path, sizeof(n->path), "%s", path ? path : "");
    return (int)fs->nnodes++;
}

static struct ent *ents_find(struct ents *e, const char *name)
{
    for (size_t i = 0; i < e->n; i++)
        if (strcmp(e->v[i].name, name) == 0)
            return &e->v[i];
    return NULL;
}

static void ents_set(struct ents *e, const char *name, int node)
{
    struct ent *x = ents_find(e, name);
    if (!x) {
        if (e->n == e->cap) {
            e->cap = e->cap ? 2 * e->cap : 16;
            e->v = xrealloc(e->v, e->cap * sizeof(*e->v));
        }
        x = &e->v[e->n++];
        snprintf(x->name, sizeof(x->name), "%s", name);
    }
    x->node = node;
}

/* Removes name if it names node (any node if node < 0). */
static void ents_del(struct ents *e, const char *name, int node)
{
    struct ent *x = ents_find(e, name);
    if (x && (node < 0 || x->node == node))
        *x = e->v[--e->n];
}

static void ents_copy(struct ents *dst, const struct ents *src)
{
    if (dst->cap < src->n) {
        dst->cap = src->n;
        dst->v = xrealloc(dst->v, dst->cap * sizeof(*dst->v));
    }
    if (src->n)
        memcpy(dst->v, src->v, src->n * sizeof(*src->v));
    dst->n = src->n;
}

static int fd_node(const struct th_crashfs *fs, int fd)
{
    for (size_t i = 0; i < fs->nfds; i++)
        if (fs->fds[i].fd == fd)
            return fs->fds[i].node;
    return -1;
}

static void fd_bind(struct th_crashfs *fs, int fd, int node)
{
    for (size_t i = 0; i < fs->nfds; i++)
        if (fs->fds[i].fd == fd) {
            fs->fds[i].node = node;
            return;
        }
    if (fs->nfds == fs->fcap) {
        fs->fcap = fs->fcap ? 2 * fs->fcap : 32;
        fs->fds = xrealloc(fs->fds, fs->fcap * sizeof(*fs->fds));
    }
    fs->fds[fs->nfds++] = (struct fdmap){fd, node};
}

static void fd_unbind(struct th_crashfs *fs, int fd)
{
    for (size_t i = 0; i < fs->nfds; i++)
        if (fs->fds[i].fd == fd) {
            fs->fds[i] = fs->fds[--fs->nfds];
            return;
        }
}

static int dir_by_path(const struct th_crashfs *fs, const char *path)
{
    for (size_t i = 0; i < fs->nnodes; i++)
        if (fs->nodes[i].dir && strcmp(fs->nodes[i].path, path) == 0)
            return (int)i;
    return -1;
}

/* A new directory node for path, and the node of the directory holding it
 * (found, or made durable: the model knows nothing of it but this entry). */
static int dir_new_at(struct th_crashfs *fs, const char *path)
{
    const char *slash = strrchr(path, '/');
    char parent[TH_IO_NAME_MAX];
    snprintf(parent, sizeof(parent), "%.*s", slash ? (int)(slash - path) : 0, path);
    int p = dir_by_path(fs, parent);
    if (p < 0)
        p = node_new(fs, true, parent);
    int d = node_new(fs, true, path);
    fs->nodes[d].parent = p;
    snprintf(fs->nodes[d].base, sizeof(fs->nodes[d].base), "%s", slash ? slash + 1 : path);
    return d;
}

static void dirop_push(struct node *d, size_t call, enum dirop_kind kind, const char *name,
                       const char *name2, int node)
{
    if (d->ndpend == d->dpcap) {
        d->dpcap = d->dpcap ? 2 * d->dpcap : 16;
        d->dpend = xrealloc(d->dpend, d->dpcap * sizeof(*d->dpend));
    }
    struct dirop *o = &d->dpend[d->ndpend++];
    memset(o, 0, sizeof(*o));
    o->call = call;
    o->kind = kind;
    snprintf(o->name, sizeof(o->name), "%s", name);
    snprintf(o->name2, sizeof(o->name2), "%s", name2 ? name2 : "");
    o->node = node;
}

/* Applies a data operation to b: a write of len bytes at off (zero-filling
 * any hole), or a truncation to len. */
static void buf_write(struct m2a_buf *b, uint64_t off, const unsigned char *p, uint64_t len)
{
    if (off + len > b->len) {
        m2a_buf_reserve(b, off + len - b->len);
        memset(b->data + b->len, 0, off + len - b->len);
        b->len = off + len;
    }
    if (len)
        memcpy(b->data + off, p, len);
}

static void buf_truncate(struct m2a_buf *b, uint64_t len)
{
    if (len <= b->len)
        b->len = len;
    else
        buf_write(b, len, NULL, 0);
}

static void dataop_push(struct node *f, size_t call, bool trunc, uint64_t off, uint64_t len,
                        const unsigned char *data)
{
    if (f->npend == f->pcap) {
        f->pcap = f->pcap ? 2 * f->pcap : 16;
        f->pend = xrealloc(f->pend, f->pcap * sizeof(*f->pend));
    }
    f->pend[f->npend++] = (struct dataop){call, trunc, off, len, data};
    if (trunc)
        buf_truncate(&f->cur, len);
    else
        buf_write(&f->cur, off, data, len);
}

/* --- replay --- */

struct th_crashfs *th_crashfs_new(const struct th_iotrace *t)
{
    struct th_crashfs *fs = xcalloc(1, sizeof(*fs));
    fs->t = t;
    fs->spool = -1;
    return fs;
}

void th_crashfs_free(struct th_crashfs *fs)
{
    if (!fs)
        return;
    for (size_t i = 0; i < fs->nnodes; i++) {
        struct node *n = &fs->nodes[i];
        m2a_buf_free(&n->cur);
        m2a_buf_free(&n->dur);
        free(n->pend);
        free(n->ents.v);
        free(n->dents.v);
        free(n->dpend);
    }
    for (size_t i = 0; i < fs->nwork; i++)
        m2a_buf_free(&fs->work[i]);
    free(fs->work);
    free(fs->work_mark);
    free(fs->nodes);
    free(fs->fds);
    free(fs->units);
    free(fs);
}

size_t th_crashfs_point(const struct th_crashfs *fs)
{
    return fs->pos;
}

const char *th_crashfs_error(const struct th_crashfs *fs)
{
    return fs->err;
}

static int fail(struct th_crashfs *fs, const char *what)
{
    char d[512];
    th_iotrace_describe(fs->t, fs->pos, d, sizeof(d));
    snprintf(fs->err, sizeof(fs->err), "call %zu, %.512s: %.200s", fs->pos, d, what);
    return -1;
}

static int open_by_path(struct th_crashfs *fs, const struct th_io_call *c)
{
    int d = dir_by_path(fs, c->name);
    if (d < 0) { /* there before the trace: durable in its parent */
        d = dir_new_at(fs, c->name);
        struct node *p = &fs->nodes[fs->nodes[d].parent];
        ents_set(&p->ents, fs->nodes[d].base, d);
        ents_set(&p->dents, fs->nodes[d].base, d);
    }
    fd_bind(fs, c->rc, d);
    return 0;
}

static int open_in_dir(struct th_crashfs *fs, const struct th_io_call *c)
{
    int d = fd_node(fs, c->fd);
    if (d < 0 || !fs->nodes[d].dir)
        return fail(fs, "openat relative to an fd that is no open directory");
    if (fs->spool < 0)
        fs->spool = d;
    if (strcmp(c->name, ".") == 0) {
        fd_bind(fs, c->rc, d);
        return 0;
    }
    struct ent *e = ents_find(&fs->nodes[d].ents, c->name);
    int f;
    bool changed = false;
    if (e) {
        f = e->node;
    } else {
        if (!(c->flags & O_CREAT))
            return fail(fs, "opened a missing file without O_CREAT");
        f = node_new(fs, false, NULL);
        ents_set(&fs->nodes[d].ents, c->name, f);
        dirop_push(&fs->nodes[d], fs->pos, D_CREATE, c->name, NULL, f);
        changed = true;
    }
    if ((c->flags & O_TRUNC) && (c->flags & O_ACCMODE) != O_RDONLY) {
        dataop_push(&fs->nodes[f], fs->pos, true, 0, 0, NULL);
        changed = true;
    }
    fd_bind(fs, c->rc, f);
    return changed;
}

static int do_mkdir(struct th_crashfs *fs, const struct th_io_call *c)
{
    int d = dir_new_at(fs, c->name);
    struct node *p = &fs->nodes[fs->nodes[d].parent];
    ents_set(&p->ents, fs->nodes[d].base, d);
    dirop_push(p, fs->pos, D_CREATE, fs->nodes[d].base, NULL, d);
    return 1;
}

static int do_sync(struct th_crashfs *fs, const struct th_io_call *c)
{
    int n = fd_node(fs, c->fd);
    if (n < 0)
        return fail(fs, "sync of an fd the trace never opened");
    struct node *x = &fs->nodes[n];
    if (x->dir) {
        ents_copy(&x->dents, &x->ents);
        x->ndpend = 0;
    } else {
        m2a_buf_reset(&x->dur);
        m2a_buf_append(&x->dur, x->cur.data, x->cur.len);
        x->npend = 0;
    }
    return 1;
}

static int do_rename_unlink(struct th_crashfs *fs, const struct th_io_call *c)
{
    int d = fd_node(fs, c->fd);
    if (d < 0 || !fs->nodes[d].dir)
        return fail(fs, "entry change relative to an fd that is no open directory");
    struct node *x = &fs->nodes[d];
    struct ent *e = ents_find(&x->ents, c->name);
    if (!e)
        return fail(fs, "entry change of a name the model does not have");
    int f = e->node;
    if (c->op == TH_IO_RENAMEAT) {
        ents_del(&x->ents, c->name, -1);
        ents_set(&x->ents, c->name2, f);
        dirop_push(x, fs->pos, D_RENAME, c->name, c->name2, f);
    } else {
        ents_del(&x->ents, c->name, -1);
        dirop_push(x, fs->pos, D_UNLINK, c->name, NULL, f);
    }
    return 1;
}

int th_crashfs_step(struct th_crashfs *fs)
{
    if (fs->pos >= fs->t->n)
        return -1;
    const struct th_io_call *c = &fs->t->calls[fs->pos];
    int r = 0, n;
    if (c->op != TH_IO_MARK && c->op != TH_IO_PWRITE && c->rc < 0) {
        fs->pos++;
        return 0;
    }
    switch (c->op) {
    case TH_IO_OPENAT:
        r = c->fd == AT_FDCWD ? open_by_path(fs, c) : open_in_dir(fs, c);
        break;
    case TH_IO_MKDIR:
        r = do_mkdir(fs, c);
        break;
    case TH_IO_PWRITE:
        if (c->len == 0)
            break;
        n = fd_node(fs, c->fd);
        if (n < 0 || fs->nodes[n].dir)
            return fail(fs, "write to an fd that is no open file");
        dataop_push(&fs->nodes[n], fs->pos, false, c->off, c->len, c->data);
        r = 1;
        break;
    case TH_IO_FTRUNCATE:
        n = fd_node(fs, c->fd);
        if (n < 0 || fs->nodes[n].dir)
            return fail(fs, "truncation of an fd that is no open file");
        dataop_push(&fs->nodes[n], fs->pos, true, 0, c->len, NULL);
        r = 1;
        break;
    case TH_IO_FSYNC:
    case TH_IO_FDATASYNC:
        r = do_sync(fs, c);
        break;
    case TH_IO_RENAMEAT:
    case TH_IO_UNLINKAT:
        r = do_rename_unlink(fs, c);
        break;
    case TH_IO_CLOSE:
        fd_unbind(fs, c->fd);
        break;
    default: /* reads, locks, markers */
        break;
    }
    if (r < 0)
        return -1;
    fs->pos++;
    if (r > 0)
        fs->units_valid = false;
    return r;
}

/* --- units and states --- */

static void unit_push(struct th_crashfs *fs, struct th_crashfs_unit u)
{
    if (fs->nunits == fs->ucap) {
        fs->ucap = fs->ucap ? 2 * fs->ucap : 64;
        fs->units = xrealloc(fs->units, fs->ucap * sizeof(*fs->units));
    }
    fs->units[fs->nunits++] = u;
}

static int unit_cmp(const void *a, const void *b)
{
    const struct th_crashfs_unit *x = a, *y = b;
    if (x->call != y->call)
        return x->call < y->call ? -1 : 1;
    return x->off < y->off ? -1 : x->off > y->off;
}

/* Whether file node f can appear in the spool directory after a crash:
 * named there durably, or by a pending change. */
static bool reachable(const struct th_crashfs *fs, int f)
{
    if (fs->spool < 0)
        return false;
    const struct node *d = &fs->nodes[fs->spool];
    for (size_t i = 0; i < d->dents.n; i++)
        if (d->dents.v[i].node == f)
            return true;
    for (size_t i = 0; i < d->ndpend; i++)
        if (d->dpend[i].node == f)
            return true;
    return false;
}

const struct th_crashfs_unit *th_crashfs_units(struct th_crashfs *fs, size_t *n)
{
    if (!fs->units_valid) {
        fs->nunits = 0;
        int parent = fs->spool >= 0 ? fs->nodes[fs->spool].parent : -1;
        for (size_t i = 0; i < fs->nnodes; i++) {
            const struct node *x = &fs->nodes[i];
            bool ours = (int)i == fs->spool || (int)i == parent;
            for (size_t k = 0; ours && k < x->ndpend; k++)
                unit_push(
                    fs, (struct th_crashfs_unit){TH_CRASHFS_DIROP, x->dpend[k].call, (int)i, k, 0});
            if (x->dir || x->npend == 0 || !reachable(fs, (int)i))
                continue;
            for (size_t k = 0; k < x->npend; k++) {
                const struct dataop *o = &x->pend[k];
                if (o->trunc) {
                    unit_push(
                        fs, (struct th_crashfs_unit){TH_CRASHFS_TRUNC, o->call, (int)i, 0, o->len});
                    continue;
                }
                for (uint64_t a = o->off; a < o->off + o->len;) {
                    uint64_t b = (a / TH_CRASHFS_SECTOR + 1) * TH_CRASHFS_SECTOR;
                    if (b > o->off + o->len)
                        b = o->off + o->len;
                    unit_push(fs,
                              (struct th_crashfs_unit){TH_CRASHFS_DATA, o->call, (int)i, a, b - a});
                    a = b;
                }
            }
        }
        if (fs->nunits > 1)
            qsort(fs->units, fs->nunits, sizeof(*fs->units), unit_cmp);
        fs->units_valid = true;
    }
    *n = fs->nunits;
    return fs->units;
}

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* A dropped write's bytes past the end of b, per fill. */
static void fill_past_end(struct m2a_buf *b, uint64_t off, uint64_t len, enum th_crashfs_fill fill,
                          uint64_t seed)
{
    if (fill == TH_CRASHFS_ABSENT || off + len <= b->len)
        return;
    uint64_t from = b->len;
    buf_write(b, off + len, NULL, 0);
    if (fill == TH_CRASHFS_JUNK)
        for (uint64_t i = from; i < off + len; i++)
            b->data[i] = (unsigned char)mix64(seed ^ (i * 0x100000001b3ull));
}

/* The pending dataop of a DATA or TRUNC unit. */
static const struct dataop *unit_op(const struct th_crashfs *fs, const struct th_crashfs_unit *u)
{
    const struct node *x = &fs->nodes[u->node];
    for (size_t k = 0; k < x->npend; k++)
        if (x->pend[k].call == u->call)
            return &x->pend[k];
    return NULL;
}

static void apply_dirop(struct ents *e, const struct dirop *o)
{
    switch (o->kind) {
    case D_CREATE:
        ents_set(e, o->name, o->node);
        break;
    case D_RENAME:
        ents_del(e, o->name, o->node);
        ents_set(e, o->name2, o->node);
        break;
    case D_UNLINK:
        ents_del(e, o->name, o->node);
        break;
    }
}

static int entry_cmp(const void *a, const void *b)
{
    return strcmp(((const struct th_crashfs_entry *)a)->name,
                  ((const struct th_crashfs_entry *)b)->name);
}

/* Two independent 64-bit lanes over 8-byte words: states are told apart
 * by all 128 bits. */
static void hash_bytes(uint64_t h[2], const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i += 8) {
        uint64_t w = 0;
        memcpy(&w, b + i, n - i < 8 ? n - i : 8);
        w ^= (uint64_t)(n - i < 8 ? n - i : 8) << 59;
        h[0] = mix64(h[0] ^ w);
        h[1] = (h[1] ^ w) * 0x100000001b3ull;
        h[1] ^= h[1] >> 29;
    }
}

void th_crashfs_state_free(struct th_crashfs_state *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->e[i].data);
    free(s->e);
    memset(s, 0, sizeof(*s));
}

static void state_reset(struct th_crashfs_state *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->e[i].data);
    s->n = 0;
    s->dir_exists = false;
}

static void state_add(struct th_crashfs_state *s, const char *name, const struct m2a_buf *b)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 16;
        s->e = xrealloc(s->e, s->cap * sizeof(*s->e));
    }
    struct th_crashfs_entry *e = &s->e[s->n++];
    snprintf(e->name, sizeof(e->name), "%s", name);
    e->len = b->len;
    e->data = xmalloc(b->len ? b->len : 1);
    if (b->len)
        memcpy(e->data, b->data, b->len);
}

/* Node n's bytes in the state being built: from what is durable, the first
 * time a unit touches it. */
static struct m2a_buf *work_of(struct th_crashfs *fs, int n)
{
    if (fs->work_mark[n] != fs->builds) {
        fs->work_mark[n] = fs->builds;
        m2a_buf_reset(&fs->work[n]);
        m2a_buf_append(&fs->work[n], fs->nodes[n].dur.data, fs->nodes[n].dur.len);
    }
    return &fs->work[n];
}

void th_crashfs_build(struct th_crashfs *fs, const bool *keep, enum th_crashfs_fill fill,
                      uint64_t junk_seed, struct th_crashfs_state *out)
{
    size_t nu;
    const struct th_crashfs_unit *u = th_crashfs_units(fs, &nu);
    state_reset(out);
    if (fs->nwork < fs->nnodes) {
        fs->work = xrealloc(fs->work, fs->nnodes * sizeof(*fs->work));
        fs->work_mark = xrealloc(fs->work_mark, fs->nnodes * sizeof(*fs->work_mark));
        memset(fs->work + fs->nwork, 0, (fs->nnodes - fs->nwork) * sizeof(*fs->work));
        memset(fs->work_mark + fs->nwork, 0, (fs->nnodes - fs->nwork) * sizeof(*fs->work_mark));
        fs->nwork = fs->nnodes;
    }
    fs->builds++;
    /* Every node starts from what is durable. */
    struct ents spool = {0}, parent = {0};
    int p = fs->spool >= 0 ? fs->nodes[fs->spool].parent : -1;
    if (fs->spool >= 0)
        ents_copy(&spool, &fs->nodes[fs->spool].dents);
    if (p >= 0)
        ents_copy(&parent, &fs->nodes[p].dents);
    /* Then the units, in trace order. */
    for (size_t i = 0; i < nu; i++) {
        bool k = !keep || keep[i];
        if (u[i].kind == TH_CRASHFS_DIROP) {
            if (!k)
                continue;
            const struct dirop *o = &fs->nodes[u[i].node].dpend[u[i].off];
            if (u[i].node == fs->spool)
                apply_dirop(&spool, o);
            else if (u[i].node == p)
                apply_dirop(&parent, o);
            continue;
        }
        struct m2a_buf *b = work_of(fs, u[i].node);
        if (u[i].kind == TH_CRASHFS_TRUNC) {
            if (k)
                buf_truncate(b, u[i].len);
            continue;
        }
        const struct dataop *o = unit_op(fs, &u[i]);
        if (k)
            buf_write(b, u[i].off, o->data + (u[i].off - o->off), u[i].len);
        else
            fill_past_end(b, u[i].off, u[i].len, fill, junk_seed ^ u[i].call);
    }
    if (fs->spool >= 0) {
        struct ent *e = ents_find(&parent, fs->nodes[fs->spool].base);
        out->dir_exists = p < 0 || (e && e->node == fs->spool);
    }
    if (out->dir_exists)
        for (size_t i = 0; i < spool.n; i++)
            state_add(out, spool.v[i].name,
                      fs->work_mark[spool.v[i].node] == fs->builds
                          ? &fs->work[spool.v[i].node]
                          : &fs->nodes[spool.v[i].node].dur);
    if (out->n > 1)
        qsort(out->e, out->n, sizeof(*out->e), entry_cmp);
    out->hash[0] = 0xcbf29ce484222325ull;
    out->hash[1] = 0x84222325cbf29ce4ull;
    hash_bytes(out->hash, &out->dir_exists, 1);
    for (size_t i = 0; i < out->n; i++) {
        uint64_t len = out->e[i].len;
        hash_bytes(out->hash, out->e[i].name, strlen(out->e[i].name) + 1);
        hash_bytes(out->hash, &len, sizeof(len));
        hash_bytes(out->hash, out->e[i].data, out->e[i].len);
    }
    free(spool.v);
    free(parent.v);
}

int th_crashfs_state_write(const struct th_crashfs_state *s, const char *dir)
{
    if (!s->dir_exists)
        return 0;
    if (mkdir(dir, 0750) != 0 && errno != EEXIST) {
        fprintf(stderr, "crashfs: mkdir %s: %s\n", dir, strerror(errno));
        return -1;
    }
    char path[1024];
    for (size_t i = 0; i < s->n; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, s->e[i].name);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
        if (fd < 0) {
            fprintf(stderr, "crashfs: open %s: %s\n", path, strerror(errno));
            return -1;
        }
        size_t done = 0;
        while (done < s->e[i].len) {
            ssize_t w = write(fd, s->e[i].data + done, s->e[i].len - done);
            if (w <= 0) {
                fprintf(stderr, "crashfs: write %s: %s\n", path, strerror(errno));
                close(fd);
                return -1;
            }
            done += (size_t)w;
        }
        close(fd);
    }
    return 0;
}

int th_crashfs_state_compare(const struct th_crashfs_state *s, const char *dir, char *why,
                             size_t len)
{
    DIR *d = opendir(dir);
    if (!d) {
        snprintf(why, len, "%s: %s, the model %s it", dir, strerror(errno),
                 s->dir_exists ? "has" : "has not");
        return s->dir_exists ? -1 : 0;
    }
    size_t on_disk = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            on_disk++;
    closedir(d);
    if (!s->dir_exists) {
        snprintf(why, len, "%s exists, not in the model", dir);
        return -1;
    }
    char path[1024];
    for (size_t i = 0; i < s->n; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, s->e[i].name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            snprintf(why, len, "%s is in the model, not on disk", s->e[i].name);
            return -1;
        }
        struct m2a_buf b = {0};
        unsigned char chunk[8192];
        ssize_t k;
        while ((k = read(fd, chunk, sizeof(chunk))) > 0)
            m2a_buf_append(&b, chunk, (size_t)k);
        close(fd);
        bool same =
            b.len == s->e[i].len && (b.len == 0 || memcmp(b.data, s->e[i].data, b.len) == 0);
        if (!same)
            snprintf(why, len, "%s: %zu bytes on disk, %zu in the model, or other bytes",
                     s->e[i].name, b.len, s->e[i].len);
        m2a_buf_free(&b);
        if (!same)
            return -1;
    }
    if (on_disk != s->n) {
        snprintf(why, len, "%zu files on disk, %zu in the model", on_disk, s->n);
        return -1;
    }
    return 0;
}
