/*
 * libddc: makes the remote NUMA nodes of a ddc-testbed compute blade feel
 * remote.  Every guest data access runs through a per-vCPU cache model; an
 * access that misses every level and falls in a remote range is charged its
 * memory blade's extra latency (plus link queueing), either by stalling the
 * vCPU thread for real (mode=inject) or on a modelled clock (mode=account).
 *
 * See README.md for the options and the control protocol.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include <qemu-plugin.h>

#include "cache.h"
#include "ddc.h"

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

struct ddc g = {
    .mode = MODE_INJECT,
    .local_ns = 100,
    .batch_ns = 20000,
    .count_insns = true,
    .ctl_lock = PTHREAD_MUTEX_INITIALIZER,
    .listen_fd = -1,
    .wake_pipe = { -1, -1 },
};

uint64_t mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* ---- the access path ----------------------------------------------------- */

/*
 * Find the range holding a; also return the interval [lo, hi) around a in
 * which the answer stays the same (a range, or the gap between two), so the
 * caller can cache it and skip the search for local memory too.
 */
static const struct range *map_find(const struct map *m, uint64_t a, uint64_t *lo, uint64_t *hi)
{
    unsigned l = 0, h = m->n;

    while (l < h) {
        unsigned mid = (l + h) / 2;
        if (a < m->r[mid].start) {
            h = mid;
        } else if (a >= m->r[mid].end) {
            l = mid + 1;
        } else {
            *lo = m->r[mid].start;
            *hi = m->r[mid].end;
            return &m->r[mid];
        }
    }
    /* l is the first range starting above a */
    *lo = l ? m->r[l - 1].end : 0;
    *hi = l < m->n ? m->r[l].start : UINT64_MAX;
    return NULL;
}

/*
 * Pay the owed stall.  Sleeping to an absolute deadline and then measuring
 * what we actually slept lets the error (timer slack, scheduling) carry into
 * owed_ns, so the total injected time converges on the modelled one however
 * coarse each sleep is.
 */
static void stall(struct vcpu *v)
{
    int64_t owed = LOAD(&v->owed_ns);
    uint64_t t0, t1;
    struct timespec dl;

    if (!v->slack_set) {
        /* The default 50 us slack would dwarf a batch; this is our thread. */
        prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
        v->slack_set = true;
    }
    t0 = mono_ns();
    dl.tv_sec = (time_t)((t0 + (uint64_t)owed) / 1000000000ULL);
    dl.tv_nsec = (long)((t0 + (uint64_t)owed) % 1000000000ULL);
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &dl, NULL) == EINTR) {
    }
    t1 = mono_ns();
    STORE(&v->owed_ns, owed - (int64_t)(t1 - t0));
    BUMP(&v->c[C_INJECTED_NS], t1 - t0);
    BUMP(&v->c[C_STALLS], 1);
}

/* A line that missed every level reached memory: charge it. */
static void charge(struct vcpu *v, const struct range *r, uint32_t node)
{
    const struct blade *b;
    uint64_t lat, local, tx, d, wait_ns = 0;
    int mode;

    BUMP(&v->c[C_NODE_MEM0 + node], 1);
    if (!r || r->blade < 0) {
        return;
    }
    b = &g.blades[r->blade];
    lat = LOAD(&b->latency_ns);
    local = LOAD(&g.local_ns);
    d = lat > local ? lat - local : 0;
    mode = LOAD(&g.mode);
    tx = LOAD(&b->tx_ps);
    if (tx) {
        /*
         * The link is a single server: a line occupies it for tx ps.  The
         * vCPU's clock is real time plus what it owes (inject) or has been
         * charged so far (account), i.e. when this request would really issue.
         */
        uint64_t *nf = (uint64_t *)&b->next_free_ps;
        uint64_t now = (mono_ns() - g.t0_ns) * 1000, old, start;
        if (mode == MODE_INJECT) {
            int64_t owed = LOAD(&v->owed_ns);
            now += owed > 0 ? (uint64_t)owed * 1000 : 0;
        } else {
            now += v->skew_ns * 1000;
        }
        old = __atomic_load_n(nf, __ATOMIC_RELAXED);
        do {
            start = old > now ? old : now;
        } while (!__atomic_compare_exchange_n(nf, &old, start + tx, true, __ATOMIC_RELAXED,
                                              __ATOMIC_RELAXED));
        wait_ns = (start - now) / 1000;
    }
    d += wait_ns;
    BUMP(&v->c[C_BLADE_ACC0 + r->blade], 1);
    BUMP(&v->c[C_BLADE_STALL0 + r->blade], d);
    BUMP(&v->c[C_BLADE_QUEUE0 + r->blade], wait_ns);
    BUMP(&v->c[C_MODELLED_NS], d);
    if (mode == MODE_INJECT) {
        int64_t owed = LOAD(&v->owed_ns) + (int64_t)d;
        STORE(&v->owed_ns, owed);
        if (owed >= (int64_t)g.batch_ns && owed > 0) {
            stall(v);
        }
    } else {
        v->skew_ns += d;
    }
}

/*
 * One line through the hierarchy.  Level 0 is private (config.c insists):
 * its set is looked up here first, and a hit on the set's MRU tag, the
 * common case, returns before anything else is touched.  Level-0 hits are
 * not counted: stats.c derives them.
 */
static inline void access_addr(struct vcpu *v, uint64_t a, const struct range *r, uint32_t node)
{
    uint64_t line = a >> g.levels[0].line_shift;
    struct cache *c0 = &v->priv[0];
    uint64_t *t;

    /* The previous line is MRU in its L1 set: a hit with no LRU change. */
    if (line == v->last_line) {
        return;
    }
    v->last_line = line;
    t = set_of(c0, line);
    if (t[0] == line + 1 || lru_access(t, c0->ways, line + 1)) {
        return;
    }
    BUMP(&v->c[C_MISS0], 1);
    for (unsigned i = 1; i < g.nlevels; i++) {
        const struct level_cfg *l = &g.levels[i];
        uint64_t li = a >> l->line_shift;
        bool hit = l->shared ? cache_access_shared(&g.shared[i], li)
                             : cache_access_private(&v->priv[i], li);
        if (hit) {
            BUMP(&v->c[C_HIT0 + i], 1);
            return;
        }
        BUMP(&v->c[C_MISS0 + i], 1);
    }
    charge(v, r, node);
}

/*
 * qemu_plugin_mem_is_store() is a call per access (about 2 ns, 15% of our
 * access path).  QEMU 7.2 up to at least 9.x encodes the direction as
 * (rw << 16) in the meminfo word, so read the bit directly; the first
 * accesses of every vCPU are checked against the API, and a single mismatch
 * (another encoding) switches every vCPU to the API for good.
 */
#define MEMINFO_STORE_BIT (QEMU_PLUGIN_MEM_W << 16)
#define DECODE_CHECKS 65536

static bool decode_ok = true;

static inline bool is_store(struct vcpu *v, qemu_plugin_meminfo_t info)
{
    bool fast = info & MEMINFO_STORE_BIT;

    if (__builtin_expect(v->decode_checks != 0, 0)) {
        v->decode_checks--;
        if (fast != qemu_plugin_mem_is_store(info) &&
            __atomic_exchange_n(&decode_ok, false, __ATOMIC_RELAXED)) {
            fprintf(stderr, "libddc: meminfo encoding differs from QEMU 7.2's; "
                    "using qemu_plugin_mem_is_store()\n");
        }
    }
    return __builtin_expect(__atomic_load_n(&decode_ok, __ATOMIC_RELAXED), 1)
           ? fast : qemu_plugin_mem_is_store(info);
}

static void vcpu_mem(unsigned int idx, qemu_plugin_meminfo_t info, uint64_t vaddr, void *ud)
{
    struct vcpu *v = idx < MAX_VCPUS ? __atomic_load_n(&g.vcpus[idx], __ATOMIC_RELAXED) : NULL;
    struct qemu_plugin_hwaddr *hw;
    const struct map *m;
    const struct range *r;
    uint64_t a, off;
    uint32_t node;

    (void)ud;
    if (__builtin_expect(!v, 0)) {
        return;
    }
    hw = qemu_plugin_get_hwaddr(info, vaddr);
    if (hw) {
        if (qemu_plugin_hwaddr_is_io(hw)) {
            BUMP(&v->c[C_IO], 1);
            return;
        }
        a = qemu_plugin_hwaddr_phys_addr(hw);
    } else {
        a = vaddr;  /* user mode: no hwaddr, model the virtual address space */
    }
    BUMP(&v->c[is_store(v, info) ? C_STORES : C_LOADS], 1);

    m = __atomic_load_n(&g.map, __ATOMIC_ACQUIRE);
    r = v->rc;
    if (__builtin_expect(v->map != m || a - v->rc_lo >= v->rc_hi - v->rc_lo, 0)) {
        r = map_find(m, a, &v->rc_lo, &v->rc_hi);
        v->map = m;
        v->rc = r;
    }
    node = 0;
    if (r) {
        /* node 0's count is derived in stats.c: one counter less per access */
        node = r->node;
        BUMP(&v->c[C_NODE_ACC0 + node], 1);
    }

    if (!g.nlevels) {
        charge(v, r, node);
        return;
    }
    access_addr(v, a, r, node);
    /* Accesses are at most 16 bytes in 7.2 (MO_128): only one that starts
     * in the last 15 bytes of a line can straddle two; ask its size then. */
    off = a & (g.levels[0].line - 1);
    if (__builtin_expect(off + 16 > g.levels[0].line, 0)) {
        unsigned size = 1u << qemu_plugin_mem_size_shift(info);
        if (off + size > g.levels[0].line) {
            BUMP(&v->c[C_SPLIT], 1);
            access_addr(v, a + size - 1, r, node);
        }
    }
}

static void vcpu_tb_exec(unsigned int idx, void *ud)
{
    struct vcpu *v = idx < MAX_VCPUS ? __atomic_load_n(&g.vcpus[idx], __ATOMIC_RELAXED) : NULL;

    if (v) {
        BUMP(&v->c[C_INSNS], (uint64_t)(uintptr_t)ud);
    }
}

static void vcpu_tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);

    (void)id;
    /* One callback per TB carrying its length: counts insns with a TB's
     * worth of precision (a TB cut short by an exception still counts whole).
     * It is a helper call per TB, hence insns=off for the leanest runs. */
    if (g.count_insns) {
        qemu_plugin_register_vcpu_tb_exec_cb(tb, vcpu_tb_exec, QEMU_PLUGIN_CB_NO_REGS,
                                             (void *)(uintptr_t)n);
    }
    /*
     * One callback for both directions, asking is_store at run time: 7.2's
     * translator filters R/W-specific registrations wrongly (a load fires the
     * MEM_W callbacks, a store fires both), see op_rw() in plugin-gen.c.
     */
    for (size_t i = 0; i < n; i++) {
        qemu_plugin_register_vcpu_mem_cb(qemu_plugin_tb_get_insn(tb, i), vcpu_mem,
                                         QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_MEM_RW, NULL);
    }
}

/* ---- life cycle ---------------------------------------------------------- */

static void vcpu_init(qemu_plugin_id_t id, unsigned int idx)
{
    struct vcpu *v;

    (void)id;
    if (idx >= MAX_VCPUS) {
        fprintf(stderr, "libddc: vCPU %u is over the limit of %d; it will not be modelled\n", idx,
                MAX_VCPUS);
        return;
    }
    if (g.vcpus[idx]) {
        return;  /* user mode reuses the index of an exited thread: keep its state */
    }
    v = calloc(1, sizeof(*v));
    if (!v) {
        abort();
    }
    v->index = idx;
    v->decode_checks = DECODE_CHECKS;
    v->last_line = UINT64_MAX;
    for (unsigned i = 0; i < g.nlevels; i++) {
        if (!g.levels[i].shared && cache_init(&v->priv[i], &g.levels[i])) {
            fprintf(stderr, "libddc: out of memory for vCPU %u's %s\n", idx, g.levels[i].name);
            abort();
        }
    }
    __atomic_store_n(&g.vcpus[idx], v, __ATOMIC_RELEASE);
}

static void plugin_exit(qemu_plugin_id_t id, void *p)
{
    (void)id;
    (void)p;
    /* user mode may run this twice (exit_group path and libc atexit) */
    if (__atomic_exchange_n(&g.exited, true, __ATOMIC_ACQ_REL)) {
        return;
    }
    /* A user-mode guest that forked: the child has no control thread, and
     * the socket and stats file belong to the parent. */
    if (getpid() != g.pid) {
        return;
    }
    ctl_stop();
    if (g.stats_path[0] && stats_write_file(g.stats_path)) {
        fprintf(stderr, "libddc: cannot write stats to %s: %s\n", g.stats_path, strerror(errno));
    }
    /* vCPU state and retired maps are not freed: in user mode other guest
     * threads may still be running callbacks while the process exits. */
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc,
                                           char **argv)
{
    char err[512];

    g.t0_ns = g.reset_ns = mono_ns();
    g.pid = (int)getpid();
    g.system_emulation = info->system_emulation;
    snprintf(g.target, sizeof(g.target), "%s", info->target_name);
    if (parse_options(argc, argv, err, sizeof(err))) {
        /* QEMU itself only says "Could not load plugin"; say why. */
        fprintf(stderr, "libddc: %s\n", err);
        return -1;
    }
    for (unsigned i = 0; i < g.nlevels; i++) {
        if (g.levels[i].shared && cache_init(&g.shared[i], &g.levels[i])) {
            fprintf(stderr, "libddc: out of memory for the shared %s\n", g.levels[i].name);
            return -1;
        }
    }
    if (g.sock_path[0] && ctl_start(err, sizeof(err))) {
        fprintf(stderr, "libddc: %s\n", err);
        return -1;
    }
    qemu_plugin_register_vcpu_init_cb(id, vcpu_init);
    qemu_plugin_register_vcpu_tb_trans_cb(id, vcpu_tb_trans);
    qemu_plugin_register_atexit_cb(id, plugin_exit, NULL);
    return 0;
}
