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
#include <stddef.h>
#include <stdio.h>
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
    .cpi_ps = 400,
    .k_milli = 10000,
    .window_ps = 20000000000ull,
    .batch_ns = 20000,
    .count_insns = true,
    .hw_direct = true,
    .active = true,
    .want = true,
    .ctl_lock = PTHREAD_MUTEX_INITIALIZER,
    .listen_fd = -1,
    .wake_pipe = { -1, -1 },
    .event_pipe = { -1, -1 },
};

static void kick(void);

uint64_t mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/*
 * The link's clock: nanoseconds since install, read on every remote miss of a
 * capped link, so it must be cheap.  clock_gettime costs about 24 ns here (a
 * line streams in about 30); the TSC costs about 10.  It is used only where
 * the kernel says it ticks at a constant rate through idle states
 * (constant_tsc and nonstop_tsc), scaled by a rate measured against
 * CLOCK_MONOTONIC (20 ms) when a link is first capped; elsewhere the link
 * reads CLOCK_MONOTONIC.  blade_set calls link_clock_init before it
 * publishes the link's tx_ps (release), and charge reads tx_ps (acquire)
 * before the clock, so a vCPU never sees half a calibration.
 */
#if defined(__x86_64__)
#include <x86intrin.h>

static bool tsc_usable(void)
{
    char line[4096];
    bool constant = false, nonstop = false;
    FILE *f = fopen("/proc/cpuinfo", "r");

    if (!f) {
        return false;
    }
    while (fgets(line, sizeof(line), f)) {
        if (!strncmp(line, "flags", 5)) {
            constant = strstr(line, " constant_tsc") != NULL;
            nonstop = strstr(line, " nonstop_tsc") != NULL;
            break;
        }
    }
    fclose(f);
    return constant && nonstop;
}

void link_clock_init(void)
{
    static bool done;
    uint64_t t0, t1, c0, c1;
    struct timespec pause = { 0, 20 * 1000 * 1000 };

    if (done) {
        return;
    }
    done = true;
    if (!tsc_usable()) {
        return;
    }
    t0 = mono_ns();
    c0 = __rdtsc();
    nanosleep(&pause, NULL);
    t1 = mono_ns();
    c1 = __rdtsc();
    if (c1 <= c0 || t1 <= t0) {
        return;
    }
    g.tsc_base = c0;
    g.tsc_base_ns = t0 - g.t0_ns;
    g.tsc_mult = (uint64_t)(((unsigned __int128)(t1 - t0) << 32) / (c1 - c0));
}

static inline uint64_t link_now_ns(void)
{
    if (g.tsc_mult) {
        return g.tsc_base_ns + (uint64_t)(((unsigned __int128)(__rdtsc() - g.tsc_base) * g.tsc_mult) >> 32);
    }
    return mono_ns() - g.t0_ns;
}
#else
void link_clock_init(void)
{
}

static inline uint64_t link_now_ns(void)
{
    return mono_ns() - g.t0_ns;
}
#endif

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

/*
 * A line from the vCPU's lease on the link: no clock, no CAS, no wait.  The
 * line that booked the lease already waited for its slot to start and its
 * clock only moves on (a stall moves real time by what it takes off the
 * debt), so the rest of the lease starts at or before now.  A lease is at
 * most 7 lines and ends with a new link shape (gen); one left over while the
 * vCPU did no remote work lets those few lines use a slot older than the
 * burst window, which no stream can notice.  Skipping the clock here
 * matters: the TSC costs 10-20 ns a read on these hosts, against about 70 ns
 * for a whole streamed line under TCG.
 */
static inline bool link_leased(struct vcpu *v, int bi, struct blade *b)
{
    if (v->lease_left[bi] && v->lease_gen[bi] == LOAD(&b->gen)) {
        v->lease_left[bi]--;
        return true;
    }
    return false;
}

/*
 * Book one line on a link at time now_ps (on the vCPU's clock, see charge);
 * return how long it waits, in ps.  The line goes in the first slot with
 * room from the burst window before now on: no wait if that slot starts at
 * or before now, else the time from now to its start.  Lock-free: one CAS on
 * the slot's word, for `lease` lines at once: the vCPU keeps the ones it
 * does not use yet and spends them on its next misses (link_leased), so
 * vCPUs streaming together do not fight over the slot's cache line on every
 * line (two of them at a 1 GB/s cap streamed 0.7 GB/s with a CAS per line,
 * 1.0 with leases).
 */
static uint64_t link_book(struct vcpu *v, int bi, struct blade *b, uint64_t now_ps, uint64_t real_ps)
{
    uint64_t cap = LOAD(&b->slot_cap), slot_ps = LOAD(&b->slot_ps), burst = LOAD(&b->burst_slots);
    uint32_t lease = LOAD(&b->lease), gen = LOAD(&b->gen);
    /* A vCPU whose clock lags real time (a stall overslept, on a busy host
     * by milliseconds) still cannot use the link's real past beyond the
     * burst: it waits from its clock to a slot near real time, which spends
     * the time it already slept instead of inventing capacity. */
    uint64_t k = (now_ps > real_ps ? now_ps : real_ps) / slot_ps, open;

    k = k > burst ? k - burst : 0;
    open = LOAD(&b->first_open);

    if (open > k && open - k < LINK_SLOTS / 2) {
        k = open;   /* skip slots already known full */
    }
    for (unsigned tries = 0; tries < LINK_SLOTS / 2; tries++, k++) {
        uint64_t *w = &b->slots[k & (LINK_SLOTS - 1)];
        uint64_t old = __atomic_load_n(w, __ATOMIC_RELAXED), want;
        for (;;) {
            uint32_t tag = (uint32_t)(old >> 32), used = (uint32_t)old;
            int32_t age = (int32_t)((uint32_t)k - tag);
            if (age < 0) {
                /* The ring already holds a later slot here: now lies more
                 * than a ring behind the link's bookings, so nothing is
                 * known about its time; let the line through. */
                return 0;
            }
            if (age > 0) {
                used = 0;   /* an old slot: free */
            }
            if (used >= cap) {
                break;
            }
            uint32_t take = cap - used < lease ? (uint32_t)(cap - used) : lease;
            want = ((uint64_t)(uint32_t)k << 32) | (used + take);
            if (__atomic_compare_exchange_n(w, &old, want, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
                v->lease_left[bi] = take - 1;
                v->lease_gen[bi] = gen;
                if (k > open) {
                    /* every slot from where the search began to k was full:
                     * the next search may start here (one try; a stale
                     * front costs a longer search, never a wrong answer) */
                    __atomic_compare_exchange_n(&b->first_open, &open, k, false, __ATOMIC_RELAXED,
                                                __ATOMIC_RELAXED);
                }
                return k * slot_ps > now_ps ? k * slot_ps - now_ps : 0;
            }
        }
    }
    return (uint64_t)(LINK_SLOTS / 2) * slot_ps;  /* the whole horizon is booked */
}

/* A line that missed every level reached memory: charge it. */
static void charge(struct vcpu *v, const struct range *r, uint32_t node)
{
    struct blade *b;
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
    tx = __atomic_load_n(&b->tx_ps, __ATOMIC_ACQUIRE);
    if (tx && !link_leased(v, r->blade, b)) {
        if (mode == MODE_PACED && v->pace.k_milli) {
            /* Paced: the link runs on model time, which the vCPU's model
             * clock gives without a clock read. */
            wait_ns = link_book(v, r->blade, b, pace_model_now_ps(v), pace_real_now_ps(v)) / 1000;
        } else {
            /*
             * The vCPU's clock is real time plus what it owes (inject;
             * negative after a stall overslept) or has been charged so far
             * (account, free-running paced): when this request would really
             * issue had every stall been paid exactly.
             */
            int64_t real = (int64_t)link_now_ns(), now = real;
            now += mode == MODE_INJECT ? LOAD(&v->owed_ns) : (int64_t)v->skew_ns;
            wait_ns = link_book(v, r->blade, b, now > 0 ? (uint64_t)now * 1000 : 0, (uint64_t)real * 1000) / 1000;
        }
    }
    d += wait_ns;
    BUMP(&v->c[C_BLADE_ACC0 + r->blade], 1);
    BUMP(&v->c[C_BLADE_STALL0 + r->blade], d);
    BUMP(&v->c[C_BLADE_QUEUE0 + r->blade], wait_ns);
    BUMP(&v->c[C_MODELLED_NS], d);
    if (mode == MODE_INJECT) {
        int64_t owed = LOAD(&v->owed_ns) + (int64_t)d;
        STORE(&v->owed_ns, owed);
        if (owed >= (int64_t)LOAD(&g.batch_ns) && owed > 0) {
            stall(v);
        }
    } else {
        /* account; paced prices C_MODELLED_NS into the model clock (pace.c) */
        v->skew_ns += d;
    }
}

/*
 * The rest of a line's way through the hierarchy, once it is known not to
 * be the L1 set's MRU line: kept out of line so that the check before it
 * stays inline in the access callbacks.
 */
static void __attribute__((noinline)) access_slow(struct vcpu *v, uint64_t a, uint64_t line,
                                                  uint64_t *t, const struct range *r, uint32_t node)
{
    if (lru_access(t, v->l1_ways, line + 1)) {
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
 * One line through the hierarchy.  Level 0 is private (config.c insists):
 * its set is looked up here first, and a hit on the set's MRU tag, the
 * common case, returns before anything else is touched.  Level-0 hits are
 * not counted: stats.c derives them.
 */
static inline __attribute__((always_inline)) void access_addr(struct vcpu *v, uint64_t a,
                                                              const struct range *r, uint32_t node)
{
    uint64_t line = a >> v->l1_shift;
    uint64_t *t;

    /* The previous line is MRU in its L1 set: a hit with no LRU change. */
    if (line == v->last_line) {
        return;
    }
    v->last_line = line;
    t = __builtin_expect(v->l1_set_mask != 0, 1) ? v->l1_tags + (line & v->l1_set_mask) * v->l1_ways
                                                  : set_of(&v->priv[0], line);
    if (__builtin_expect(t[0] != line + 1, 0)) {
        access_slow(v, a, line, t, r, node);
    }
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

static bool __attribute__((noinline, cold)) is_store_checked(struct vcpu *v, qemu_plugin_meminfo_t info,
                                                             bool fast)
{
    bool api = qemu_plugin_mem_is_store(info);

    if (v->decode_checks) {
        v->decode_checks--;
        if (fast != api && __atomic_exchange_n(&decode_ok, false, __ATOMIC_RELAXED)) {
            fprintf(stderr, "libddc: meminfo encoding differs from QEMU 7.2's; "
                    "using qemu_plugin_mem_is_store()\n");
        }
    }
    return api;
}

static inline bool is_store(struct vcpu *v, qemu_plugin_meminfo_t info)
{
    bool fast = info & MEMINFO_STORE_BIT;

    if (__builtin_expect(v->decode_checks != 0 || !__atomic_load_n(&decode_ok, __ATOMIC_RELAXED), 0)) {
        return is_store_checked(v, info, fast);
    }
    return fast;
}

/* The range cache missed (another range, or a new map): search the map. */
static const struct range *__attribute__((noinline)) map_refresh(struct vcpu *v, const struct map *m,
                                                                 uint64_t a)
{
    const struct range *r = map_find(m, a, &v->rc_lo, &v->rc_hi);

    v->map = m;
    v->rc = r;
    kick();  /* a deactivation republishes the map to get here */
    return r;
}

/* An access that may straddle two L1 lines: the first line, then, if it
 * does straddle, the second. */
static void __attribute__((noinline)) access_split(struct vcpu *v, qemu_plugin_meminfo_t info,
                                                   uint64_t a, const struct range *r, uint32_t node)
{
    unsigned size = 1u << qemu_plugin_mem_size_shift(info);

    access_addr(v, a, r, node);
    if ((a & ((1u << v->l1_shift) - 1)) + size > (1u << v->l1_shift)) {
        BUMP(&v->c[C_SPLIT], 1);
        access_addr(v, a + size - 1, r, node);
    }
}

/* One access at address a (physical, or virtual in user mode). */
static inline __attribute__((always_inline)) void model_access(struct vcpu *v,
                                                               qemu_plugin_meminfo_t info, uint64_t a)
{
    const struct map *m;
    const struct range *r;
    uint64_t line;
    uint32_t node;
    bool st;

    st = is_store(v, info);
    BUMP(&v->c[C_LOADS + st], 1);

    m = __atomic_load_n(&g.map, __ATOMIC_ACQUIRE);
    r = v->rc;
    if (__builtin_expect(v->map != m || a - v->rc_lo >= v->rc_hi - v->rc_lo, 0)) {
        r = map_refresh(v, m, a);
    }
    node = 0;
    if (r) {
        /* node 0's count is derived in stats.c: one counter less per access */
        node = r->node;
        BUMP(&v->c[C_NODE_ACC0 + node], 1);
    }

    if (__builtin_expect(!g.nlevels, 0)) {
        charge(v, r, node);
        return;
    }
    /* Accesses are at most 16 bytes in 7.2 (MO_128): only one that starts
     * in the last 15 bytes of a line can straddle two; ask its size then.
     * Either way the slow paths are tail calls, so the common case (an L1
     * hit) needs no stack frame. */
    line = 1u << v->l1_shift;
    if (__builtin_expect((a & (line - 1)) + 16 > line, 0)) {
        access_split(v, info, a, r, node);
        return;
    }
    access_addr(v, a, r, node);
}

static inline struct vcpu *vcpu_of(unsigned int idx)
{
    return idx < MAX_VCPUS ? __atomic_load_n(&g.vcpus[idx], __ATOMIC_RELAXED) : NULL;
}

/*
 * Physical addresses (system mode).
 *
 * qemu_plugin_hwaddr_phys_addr() looks up the RAMBlock that holds the
 * access's host address (qemu_ram_block_from_host) on every call: with
 * qemu_plugin_hwaddr_is_io() that is a third of what a store loop costs
 * under the floor plugin.  The physical address of a RAM access is its host
 * address plus an offset that is the same across a host page, and that
 * depends only on which RAMBlock is mapped there and where its region sits,
 * never on the guest's page tables (get_hwaddr still translates every
 * access through QEMU's TLB, so a guest page-table change is always seen).
 * Within one RAMBlock the offset is the same across the whole block: its
 * host mapping is one piece, and every range of the map is exactly one
 * RAMBlock (memmap.py).  So a vCPU that has asked the API once for an
 * address in a range knows the offset for the range's whole host span, and
 * remembers it (HW_SPANS spans, the last one hit checked first).  Addresses
 * outside every range (firmware, video RAM, all RAM without a map) fall
 * back to a memo of the last HW_MEMO host pages touched, host page ->
 * offset, and the page last hit there becomes the span checked first, one
 * page long (else a loop over such a page would leave the inline path on
 * every access).  A program that chases
 * pointers over more pages than that memo holds thus no longer calls the
 * API on every load (a RAMBlock search that tries the block found last and
 * then walks the list, so its cost even differed between NUMA nodes).
 *
 * Exactness:
 *  - RAMBlocks come and go only when a region is plugged or unplugged, and
 *    the orchestrator installs a new map after each (set_map); a vCPU
 *    empties its memo when it sees a new map, so no memo outlives the block
 *    it was filled from;
 *  - every vCPU's first HW_CHECKS accesses, and then one memo hit in
 *    HW_CHECK_EVERY, are checked against the API; a stale entry (a region
 *    moved without a new map) empties the memo and is counted
 *    ("hw_mismatches" in the config);
 *  - the host address and is_io are read from QEMU 7.2's struct
 *    qemu_plugin_hwaddr (include/qemu/plugin-memory.h), as is_store reads
 *    the meminfo word: if the checks find another layout, every vCPU uses
 *    the API for good.
 */
struct hwaddr_72 {
    bool is_io;
    bool is_store;
    union {
        struct {
            void *section;
            uint64_t offset;
        } io;
        struct {
            void *hostaddr;
        } ram;
    } v;
};

#define HW_PAGE_SHIFT  12
#define HW_CHECKS      65536
#define HW_CHECK_EVERY 1024

static void hw_forget(struct vcpu *v, const struct map *m)
{
    for (unsigned i = 0; i < HW_MEMO; i++) {
        v->hw_memo[i].page = UINT64_MAX;
    }
    memset(&v->span, 0, sizeof(v->span));
    memset(v->spans, 0, sizeof(v->spans));
    v->hw_map = m;
}

static void hw_layout_differs(void)
{
    if (__atomic_exchange_n(&g.hw_direct, false, __ATOMIC_RELAXED)) {
        fprintf(stderr, "libddc: qemu_plugin_hwaddr differs from QEMU 7.2's; "
                "using the API for every physical address\n");
    }
}

/* The memo entry a host address maps to (direct-mapped by host page). */
static inline struct hw_memo *hw_slot(struct vcpu *v, uint64_t host)
{
    return &v->hw_memo[(host >> HW_PAGE_SHIFT) % HW_MEMO];
}

/* The host page of e becomes the last span hit, so that the next accesses
 * to the same page take the inline path. */
static inline void hw_page_span(struct vcpu *v, const struct hw_memo *e)
{
    v->span.lo = e->page << HW_PAGE_SHIFT;
    v->span.len = 1u << HW_PAGE_SHIFT;
    v->span.delta = e->delta;
}

static inline uint64_t hw_remember(struct vcpu *v, struct hw_memo *e, uint64_t host, uint64_t phys)
{
    e->page = host >> HW_PAGE_SHIFT;
    e->delta = phys - host;
    hw_page_span(v, e);
    return phys;
}

static inline bool in_span(const struct hw_span *s, uint64_t host)
{
    return host - s->lo < s->len;
}

/*
 * Remember phys (the API's answer for host): the span of the map range it
 * falls in, or else its host page.
 */
static uint64_t hw_learn(struct vcpu *v, uint64_t host, uint64_t phys)
{
    uint64_t lo, hi;
    const struct range *r = v->hw_map ? map_find(v->hw_map, phys, &lo, &hi) : NULL;

    if (!r) {
        return hw_remember(v, hw_slot(v, host), host, phys);
    }
    v->span.lo = host - (phys - r->start);
    v->span.len = r->end - r->start;
    v->span.delta = phys - host;
    v->spans[v->span_next++ % HW_SPANS] = v->span;
    return phys;
}

/* What the memo knows of host, in *phys: a span (which becomes the last
 * one hit), else the page memo; false if neither holds it. */
static bool hw_known(struct vcpu *v, uint64_t host, uint64_t *phys)
{
    const struct hw_memo *e = hw_slot(v, host);

    for (unsigned i = 0; i < HW_SPANS; i++) {
        if (in_span(&v->spans[i], host)) {
            v->span = v->spans[i];
            *phys = host + v->span.delta;
            return true;
        }
    }
    if (e->page == host >> HW_PAGE_SHIFT) {
        hw_page_span(v, e);
        *phys = host + e->delta;
        return true;
    }
    return false;
}

/* Not in the last span: the rest of the memo, then the API. */
static uint64_t __attribute__((noinline)) hw_fill(struct vcpu *v, struct qemu_plugin_hwaddr *hw, uint64_t host)
{
    uint64_t phys;

    return hw_known(v, host, &phys) ? phys : hw_learn(v, host, qemu_plugin_hwaddr_phys_addr(hw));
}

/*
 * The API's answer, while the vCPU's first accesses check the direct reads
 * against it (and after they found another layout): is_io must agree, and
 * a page already in the memo must give the same address.
 */
static uint64_t __attribute__((noinline)) hw_phys_api(struct vcpu *v, struct qemu_plugin_hwaddr *hw,
                                                      bool *io)
{
    const struct hwaddr_72 *h = (const struct hwaddr_72 *)hw;
    uint64_t phys, host;

    *io = qemu_plugin_hwaddr_is_io(hw);
    phys = *io ? 0 : qemu_plugin_hwaddr_phys_addr(hw);
    if (!v->hw_checks || !LOAD(&g.hw_direct)) {
        return phys;
    }
    v->hw_checks--;
    host = (uint64_t)(uintptr_t)h->v.ram.hostaddr;
    if (h->is_io != *io) {
        hw_layout_differs();
    } else if (!*io) {
        uint64_t memo;
        if (!hw_known(v, host, &memo)) {
            hw_learn(v, host, phys);
        } else if (memo != phys) {
            hw_layout_differs();
        }
    }
    return phys;
}

/* An access due for its periodic check: a stale answer empties the memo. */
static uint64_t __attribute__((noinline)) hw_recheck(struct vcpu *v, struct qemu_plugin_hwaddr *hw,
                                                     uint64_t host, uint64_t memo)
{
    uint64_t phys = qemu_plugin_hwaddr_phys_addr(hw);

    v->hw_tick = HW_CHECK_EVERY;
    if (phys != memo) {
        BUMP(&g.hw_mismatches, 1);
        hw_forget(v, v->hw_map);
        hw_learn(v, host, phys);
    }
    return phys;
}

/* System mode: model the physical address; MMIO is only counted. */
static void vcpu_mem_sys(unsigned int idx, qemu_plugin_meminfo_t info, uint64_t vaddr, void *ud)
{
    struct vcpu *v = vcpu_of(idx);
    struct qemu_plugin_hwaddr *hw;
    const struct map *m;
    uint64_t a;
    bool io;

    (void)ud;
    if (__builtin_expect(!v, 0)) {
        return;
    }
    hw = qemu_plugin_get_hwaddr(info, vaddr);
    if (!hw) {
        model_access(v, info, vaddr);   /* not expected in system mode; as user mode */
        return;
    }
    m = __atomic_load_n(&g.map, __ATOMIC_ACQUIRE);
    if (__builtin_expect(v->hw_map != m, 0)) {
        hw_forget(v, m);
    }
    if (__builtin_expect(v->hw_checks == 0 && LOAD(&g.hw_direct), 1)) {
        const struct hwaddr_72 *h = (const struct hwaddr_72 *)hw;
        uint64_t host = (uint64_t)(uintptr_t)h->v.ram.hostaddr;

        if (__builtin_expect(h->is_io, 0)) {
            BUMP(&v->c[C_IO], 1);
            return;
        }
        a = __builtin_expect(in_span(&v->span, host), 1) ? host + v->span.delta : hw_fill(v, hw, host);
        if (__builtin_expect(--v->hw_tick == 0, 0)) {
            a = hw_recheck(v, hw, host, a);
        }
    } else {
        a = hw_phys_api(v, hw, &io);
        if (io) {
            BUMP(&v->c[C_IO], 1);
            return;
        }
    }
    model_access(v, info, a);
}

/* User mode has no hwaddr (the API returns NULL): model the virtual address
 * space, and save the call. */
static void vcpu_mem_user(unsigned int idx, qemu_plugin_meminfo_t info, uint64_t vaddr, void *ud)
{
    struct vcpu *v = vcpu_of(idx);

    (void)ud;
    if (__builtin_expect(v != NULL, 1)) {
        model_access(v, info, vaddr);
    }
}

_Static_assert(offsetof(struct vcpu, l1_shift) < 64, "the hot fields of struct vcpu span two lines");
_Static_assert(C_STORES == C_LOADS + 1, "model_access indexes the two by is_store");

static void vcpu_tb_exec(unsigned int idx, void *ud)
{
    struct vcpu *v = vcpu_of(idx);

    if (v) {
        BUMP(&v->c[C_INSNS], (uint64_t)(uintptr_t)ud);
        if (__builtin_expect(LOAD(&g.mode) == MODE_PACED, 0)) {
            pace_tb(v);
        }
    }
}

static void vcpu_tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);

    (void)id;
    kick();
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
        qemu_plugin_register_vcpu_mem_cb(qemu_plugin_tb_get_insn(tb, i),
                                         g.system_emulation ? vcpu_mem_sys : vcpu_mem_user,
                                         QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_MEM_RW, NULL);
    }
}

/* ---- activation ----------------------------------------------------------
 *
 * Inactive, the plugin registers no translation callback, so translated code
 * carries no instrumentation at all (plain TCG speed) and no counter moves.
 * Switching means changing what is in the translated code: only
 * qemu_plugin_reset() does that safely (it unregisters every callback and
 * flushes the TB cache in an exclusive section, then calls us back to
 * register again).  But in QEMU 7.2 it flushes only when called on a vCPU
 * thread (it uses current_cpu; from any other thread it just drops the
 * callbacks and leaves stale code in the cache).  So the control thread only
 * arms "kicks", callbacks that run on vCPU threads and make the call:
 *
 *   deactivate: the access path (a republished map sends each vCPU through
 *               its slow path once) and the translation callback;
 *   activate:   a translation callback that instruments nothing;
 *   both:       the syscall-return (user mode) and resume-from-idle (system
 *               mode) callbacks, which are always registered; in system mode
 *               a "bell" wakes idle vCPUs so that they resume (switch_arm).
 *
 * The translation kick is armed (registered) first and only then switching
 * becomes SW_REQUESTED, so the reset that drops it cannot race with arming
 * (a kick registered after the reset would replace vcpu_tb_trans); the
 * control thread is the only one to start a switch (SW_IDLE -> SW_ARMING).
 */

static void on_reset(qemu_plugin_id_t id);

static void kick(void)
{
    int expect = SW_REQUESTED;

    if (__builtin_expect(__atomic_load_n(&g.switching, __ATOMIC_RELAXED) == SW_REQUESTED, 0) &&
        __atomic_compare_exchange_n(&g.switching, &expect, SW_RESETTING, false, __ATOMIC_ACQ_REL,
                                    __ATOMIC_RELAXED)) {
        qemu_plugin_reset(g.plugin_id, on_reset);
    }
}

static void kick_tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    (void)tb;
    kick();
}

/*
 * Idle and resume (system mode), or a syscall and its return (user mode,
 * where a blocked syscall is the nearest thing to idle): paced mode lets
 * the model clock follow wall time across them, and a resume is also one of
 * the places a requested switch starts.  Registered whatever the state: they
 * are not in translated code and run only when a vCPU sleeps or wakes.
 */
static void vcpu_idle(qemu_plugin_id_t id, unsigned int idx)
{
    struct vcpu *v = vcpu_of(idx);

    (void)id;
    if (v) {
        pace_idle(v);
    }
}

static void vcpu_resume(qemu_plugin_id_t id, unsigned int idx)
{
    struct vcpu *v = vcpu_of(idx);

    (void)id;
    kick();
    if (v) {
        pace_resume(v);
    }
}

static void vcpu_syscall(qemu_plugin_id_t id, unsigned int idx, int64_t num, uint64_t a1, uint64_t a2,
                         uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8)
{
    (void)num, (void)a1, (void)a2, (void)a3, (void)a4, (void)a5, (void)a6, (void)a7, (void)a8;
    vcpu_idle(id, idx);
}

static void vcpu_syscall_ret(qemu_plugin_id_t id, unsigned int idx, int64_t num, int64_t ret)
{
    (void)num;
    (void)ret;
    vcpu_resume(id, idx);
}

/* Registered only to wake every vCPU (see switch_arm); it does nothing. */
static void bell(qemu_plugin_id_t id, unsigned int idx)
{
    (void)id;
    (void)idx;
}

static void vcpu_init(qemu_plugin_id_t id, unsigned int idx);
static void plugin_exit(qemu_plugin_id_t id, void *p);

/* The callbacks that stay whatever the state: none is in translated code. */
static void register_always(qemu_plugin_id_t id)
{
    qemu_plugin_register_vcpu_init_cb(id, vcpu_init);
    qemu_plugin_register_atexit_cb(id, plugin_exit, NULL);
    if (g.system_emulation) {
        qemu_plugin_register_vcpu_idle_cb(id, vcpu_idle);
        qemu_plugin_register_vcpu_resume_cb(id, vcpu_resume);
    } else {
        qemu_plugin_register_vcpu_syscall_cb(id, vcpu_syscall);
        qemu_plugin_register_vcpu_syscall_ret_cb(id, vcpu_syscall_ret);
    }
}

uint64_t active_ns_now(void)
{
    return g.active_ns + (g.acct_active ? mono_ns() - g.active_since : 0);
}

/*
 * Called by QEMU on the vCPU thread that kicked, with every vCPU stopped, the
 * TB cache flushed and all our callbacks gone: register what the new state
 * needs, then tell the control thread (which does the time bookkeeping in
 * switch_done and answers the clients waiting for the switch).
 */
static void on_reset(qemu_plugin_id_t id)
{
    bool on = __atomic_load_n(&g.want, __ATOMIC_ACQUIRE);
    ssize_t w;

    register_always(id);
    if (on) {
        qemu_plugin_register_vcpu_tb_trans_cb(id, vcpu_tb_trans);
        pace_reanchor();    /* paced vCPUs start on time from here */
    }
    __atomic_store_n(&g.switched_at, mono_ns(), __ATOMIC_RELAXED);
    __atomic_store_n(&g.active, on, __ATOMIC_RELEASE);
    __atomic_store_n(&g.switching, SW_IDLE, __ATOMIC_RELEASE);
    if (g.event_pipe[1] >= 0) {
        w = write(g.event_pipe[1], "s", 1);
        (void)w;
    }
}

void switch_done(void)
{
    bool on = __atomic_load_n(&g.active, __ATOMIC_ACQUIRE);

    if (on == g.acct_active) {
        return;
    }
    if (on) {
        g.active_since = __atomic_load_n(&g.switched_at, __ATOMIC_RELAXED);
    } else {
        g.active_ns += __atomic_load_n(&g.switched_at, __ATOMIC_RELAXED) - g.active_since;
    }
    g.acct_active = on;
}

bool switch_settled(void)
{
    return __atomic_load_n(&g.switching, __ATOMIC_ACQUIRE) == SW_IDLE &&
           LOAD(&g.active) == LOAD(&g.want);
}

int switch_request(bool on)
{
    int expect = SW_IDLE;

    __atomic_store_n(&g.want, on, __ATOMIC_RELEASE);
    if (LOAD(&g.switching) != SW_IDLE) {
        return SW_WAIT;     /* on_reset reads want; the control thread re-checks after */
    }
    if (LOAD(&g.active) == on) {
        return SW_DONE;
    }
    __atomic_compare_exchange_n(&g.switching, &expect, SW_ARMING, false, __ATOMIC_ACQ_REL,
                                __ATOMIC_RELAXED);
    return SW_ARM;
}

/*
 * Arm the kicks, without ctl_lock: registering takes QEMU's plugin lock,
 * which user mode's exit path holds while it runs our at-exit callback;
 * that callback joins the control thread and then takes ctl_lock.
 */
void switch_arm(bool on)
{
    qemu_plugin_id_t id = g.plugin_id;

    if (on) {
        qemu_plugin_register_vcpu_tb_trans_cb(id, kick_tb_trans);
    }
    __atomic_store_n(&g.switching, SW_REQUESTED, __ATOMIC_RELEASE);
    /*
     * Wake every vCPU, so that an idle one runs its resume callback (a kick)
     * now: registering a callback for an event the plugin had none for makes
     * QEMU queue work on every vCPU.  The resume callback itself is always
     * registered, so a callback nothing else uses rings the bell.  After
     * SW_REQUESTED, so the woken vCPU sees the request; a reset that comes
     * first only leaves the bell registered, and it does nothing.
     */
    if (g.system_emulation) {
        qemu_plugin_register_vcpu_exit_cb(id, bell);
    }
    if (!on) {
        pthread_mutex_lock(&g.ctl_lock);
        map_republish();
        pthread_mutex_unlock(&g.ctl_lock);
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
    if (posix_memalign((void **)&v, 64, sizeof(*v))) {
        abort();
    }
    memset(v, 0, sizeof(*v));
    v->index = idx;
    v->decode_checks = DECODE_CHECKS;
    v->last_line = UINT64_MAX;
    v->hw_checks = HW_CHECKS;
    v->hw_tick = HW_CHECK_EVERY;
    hw_forget(v, NULL);
    for (unsigned i = 0; i < g.nlevels; i++) {
        if (!g.levels[i].shared && cache_init(&v->priv[i], &g.levels[i])) {
            fprintf(stderr, "libddc: out of memory for vCPU %u's %s\n", idx, g.levels[i].name);
            abort();
        }
    }
    if (g.nlevels) {
        v->l1_tags = v->priv[0].tags;
        v->l1_set_mask = v->priv[0].set_mask;
        v->l1_ways = (uint16_t)g.levels[0].ways;
        v->l1_shift = (uint8_t)g.levels[0].line_shift;
    }
    /* see cache_access_shared: from now on, shared levels lock */
    if (__atomic_fetch_add(&g.vcpus_seen, 1, __ATOMIC_SEQ_CST)) {
        __atomic_store_n(&g.multi_vcpu, true, __ATOMIC_SEQ_CST);
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

    g.t0_ns = g.reset_ns = g.active_since = mono_ns();
    g.plugin_id = id;
    g.pid = (int)getpid();
    g.system_emulation = info->system_emulation;
    snprintf(g.target, sizeof(g.target), "%s", info->target_name);
    if (parse_options(argc, argv, err, sizeof(err))) {
        /* QEMU itself only says "Could not load plugin"; say why. */
        fprintf(stderr, "libddc: %s\n", err);
        return -1;
    }
    g.acct_active = g.active;
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
    register_always(id);
    if (g.active) {
        qemu_plugin_register_vcpu_tb_trans_cb(id, vcpu_tb_trans);
    }
    return 0;
}
