/*
 * libddc: remote-memory model for ddc-testbed compute blades (QEMU TCG plugin).
 *
 * Shared state between the access path (ddc.c), the cache model (cache.c),
 * the option/config parser (config.c), the statistics renderer (stats.c) and
 * the control thread (ctl.c).
 *
 * Threading rules, which every file relies on:
 *  - A struct vcpu is written only by the thread running that vCPU.  Other
 *    threads (control, atexit) read its counters with relaxed atomic loads.
 *  - Global knobs that change at runtime (latency, bandwidth, mode, map) are
 *    atomics written by the control thread under g.ctl_lock; the access path
 *    reads them without any lock.
 *  - Nothing on the access path allocates, blocks on a lock, or makes a
 *    syscall, except the batched stall in inject mode, the shared-level
 *    per-set spinlock (only with two vCPUs or more), and, once per switch,
 *    the qemu_plugin_reset() call that (de)activates the plugin.
 *  - Activation (ddc.c): the control thread registers callbacks ("kicks")
 *    and never holds ctl_lock while doing so; a vCPU thread calls
 *    qemu_plugin_reset() and, from QEMU's callback, registers the new state
 *    and writes event_pipe; the control thread answers the waiting clients.
 */
#ifndef DDC_H
#define DDC_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#define DDC_VERSION "1.0"

#define MAX_LEVELS  4
#define MAX_NODES   16
#define MAX_BLADES  16
#define MAX_RANGES  64
#define MAX_VCPUS   1024    /* user mode hands out one index per guest thread */
#define NAME_LEN    32
#define MAX_BATCH_NS 1000000000ULL  /* batch_ns: at most one second of owed stall */

/* Relaxed atomics: a single writer per counter, readers tolerate staleness. */
#define LOAD(p)      __atomic_load_n((p), __ATOMIC_RELAXED)
#define STORE(p, v)  __atomic_store_n((p), (v), __ATOMIC_RELAXED)
/* Single-writer increment: a plain add on x86, but race-free in C terms.
 * Release keeps counters visible in program order (stats.c relies on it to
 * derive the counters the access path skips); on x86 it costs nothing. */
#define BUMP(p, n)   __atomic_store_n((p), LOAD(p) + (n), __ATOMIC_RELEASE)

enum mode { MODE_INJECT = 0, MODE_ACCOUNT = 1, MODE_PACED = 2 };
const char *mode_name(int mode);
int mode_parse(const char *s);     /* MODE_*, or -1 */

/* ---- cache hierarchy ---------------------------------------------------- */

struct level_cfg {
    char name[NAME_LEN];
    uint64_t size;          /* bytes */
    uint32_t ways;
    uint32_t line;          /* bytes, power of two */
    bool shared;            /* one per QEMU process instead of one per vCPU */
    uint64_t hit_ps;        /* load-to-use time of a hit here (paced mode's model clock) */
    /* derived */
    uint32_t line_shift;
    uint64_t sets;
    uint64_t set_mask;      /* sets - 1 when sets is a power of two, else 0 */
};

/* One set-associative array with true LRU: each set keeps its tags in
 * most-recently-used-first order, so a hit on the MRU line is one compare.
 * A tag is line_number + 1; 0 means invalid, so calloc() gives a cold cache. */
struct cache {
    uint64_t *tags;         /* sets * ways */
    uint64_t set_mask;      /* copies of the level_cfg fields the lookup needs, */
    uint64_t sets;          /* so it does not chase a pointer first */
    uint32_t ways;
    uint8_t *locks;         /* per-set spinlocks, shared levels only */
};

/* ---- address map ------------------------------------------------------- */

struct range {
    uint64_t start, end;    /* [start, end) in qemu_plugin_hwaddr_phys_addr() terms */
    uint32_t node;
    int32_t blade;          /* index into g.blades, -1 = local memory */
};

/* Immutable once published; replaced wholesale by set_map.  Retired maps are
 * kept until exit because a vCPU may still be reading one (no RCU here). */
struct map {
    uint32_t n;
    struct range r[MAX_RANGES];
    struct map *retired_next;
};

/* ---- memory blades (links) ---------------------------------------------- */

/*
 * A link's schedule: time cut into slots that each carry `cap` lines (a slot
 * lasts cap x tx, at least LINK_SLOT_PS), in a ring of LINK_SLOTS.  A word
 * per slot holds the slot's number (high 32 bits) and the lines booked in it
 * (low 32 bits); a word with an older number is a free slot.  Booking by
 * slot rather than a single "next free" time lets vCPUs whose clocks are
 * apart by up to a stall batch share the link fairly: a vCPU behind the
 * others fills the slots they left free instead of queueing behind their
 * future.  Slots up to LINK_BURST_PS in a vCPU's past that nobody used
 * can still be booked (with no wait): the link is a token bucket 1 ms deep,
 * so the time a vCPU spends away from its stream (a guest timer tick, which
 * costs far more under emulation than on hardware, or the host preempting
 * the vCPU thread) does not cost the stream its share of the link.  Over any
 * window T the link carries at most bandwidth x (T + 1 ms).
 */
#define LINK_SLOTS    4096u          /* a power of two; 4 ms at 1 us slots */
#define LINK_SLOT_PS  1000000ull     /* shortest slot: 1 us */
#define LINK_BURST_PS 1000000000ull  /* slots up to 1 ms old may still be used */

struct blade {
    char name[NAME_LEN];
    uint64_t latency_ns;    /* atomic; total load-to-use latency of a remote line */
    uint64_t tx_ps;         /* atomic; time one line occupies the link, 0 = unlimited */
    double bandwidth_gbps;  /* control thread only (for reporting) */
    uint64_t first_open;    /* atomic; slots below it are known to be full */
    uint64_t slot_cap;      /* atomic; lines per slot, set with tx_ps */
    uint64_t slot_ps;       /* atomic; slot_cap x tx_ps */
    uint64_t burst_slots;   /* atomic; how many slots back a booking may start */
    uint32_t lease;         /* atomic; lines a vCPU books at once (1..8) */
    uint32_t gen;           /* atomic; bumped when the slots are reset: leases end */
    uint64_t slots[LINK_SLOTS]; /* atomic words, see above */
} __attribute__((aligned(64)));

/* ---- per-vCPU state and counters ---------------------------------------- */

#define HW_MEMO 64              /* host pages whose physical offset a vCPU remembers */

struct hw_memo {
    uint64_t page;              /* host address >> 12; UINT64_MAX: empty */
    uint64_t delta;             /* physical - host, for that page */
};

#define HW_SPANS 8              /* map ranges whose host span a vCPU remembers */

/* A RAMBlock's host mapping: physical = host + delta for every host address
 * in [lo, lo + len). */
struct hw_span {
    uint64_t lo, len;           /* len 0: empty */
    uint64_t delta;
};

enum {
    C_INSNS, C_LOADS, C_STORES, C_IO, C_SPLIT,
    C_MODELLED_NS, C_INJECTED_NS, C_STALLS,
    C_HIT0,
    C_MISS0 = C_HIT0 + MAX_LEVELS,
    C_NODE_ACC0 = C_MISS0 + MAX_LEVELS,    /* every access, by NUMA node */
    C_NODE_MEM0 = C_NODE_ACC0 + MAX_NODES, /* accesses that missed every level */
    C_BLADE_ACC0 = C_NODE_MEM0 + MAX_NODES,
    C_BLADE_STALL0 = C_BLADE_ACC0 + MAX_BLADES,  /* latency + queueing, ns */
    C_BLADE_QUEUE0 = C_BLADE_STALL0 + MAX_BLADES, /* queueing only, ns */
    /* paced mode (pace.c) */
    C_MODEL_PS = C_BLADE_QUEUE0 + MAX_BLADES,  /* the model clock: work + lag + idle */
    C_LAG_PS,               /* model time the vCPU fell behind beyond the window */
    C_FORGIVEN_PS,          /* model time it was behind (within the window) when it went idle */
    C_IDLE_MODEL_PS,        /* model time spent idle (wall / k) */
    C_WALL_NS,              /* wall time while paced */
    C_IDLE_NS,              /* of which idle */
    C_WAIT_NS,              /* of which waiting for the model clock */
    C_WAITS,
    NCOUNTERS,
};

/* Paced mode: one vCPU's place against the wall clock (pace.c).  Written by
 * the vCPU's own thread only. */
struct pace {
    uint64_t due_ps;        /* wall time (ps since g.t0_ns) the model clock has reached, x k */
    uint64_t seen_ps;       /* wall time at the last clock read */
    uint64_t idle_ps;       /* wall time the vCPU went idle; 0: not idle */
    uint64_t k_milli;       /* dilation x 1000 in effect; 0: free-running (no waits) */
    uint32_t epoch;         /* g.pace_epoch this state was anchored in */
    /* counters when the model clock was last advanced */
    uint64_t insns, lines, mod_ns;
    uint64_t miss[MAX_LEVELS];
};

struct vcpu {
    /* hot: what an access that hits the L1 reads and writes, in one
     * 64-byte line (checked by a static assertion in ddc.c) */
    uint64_t last_line;         /* L1 line of the previous access (MRU shortcut) */
    const struct map *map;      /* map the range cache below belongs to */
    const struct range *rc;     /* range holding [rc_lo, rc_hi), NULL = local gap */
    uint64_t rc_lo, rc_hi;
    uint64_t *l1_tags;          /* copies of priv[0]'s fields and of g.levels[0] */
    uint64_t l1_set_mask;       /* sets - 1, or 0 when sets is not a power of two */
    uint32_t decode_checks;     /* accesses left to cross-check is_store (ddc.c) */
    uint16_t l1_ways;
    uint8_t l1_shift;           /* log2(L1 line) */
    /* warm */
    int64_t owed_ns;            /* atomic; inject mode: stall not yet paid (may be < 0) */
    uint64_t skew_ns;           /* account mode: modelled stall so far (link clock) */
    bool slack_set;
    struct pace pace;
    /* system mode: host page -> guest-physical offset (ddc.c, "Physical
     * addresses"), filled under hw_map */
    struct hw_span span;        /* the span (or memo page) of the last hit, checked first */
    struct hw_span spans[HW_SPANS];
    unsigned span_next;         /* round-robin victim in spans */
    struct hw_memo hw_memo[HW_MEMO];
    const struct map *hw_map;
    uint32_t hw_checks;         /* accesses left to check against the API */
    uint32_t hw_tick;           /* memo hits until the next check */
    /* link leases (ddc.c link_book, link_leased): lines booked ahead, per blade */
    uint32_t lease_left[MAX_BLADES];
    uint32_t lease_gen[MAX_BLADES];
    unsigned index;
    struct cache priv[MAX_LEVELS];  /* .tags == NULL for shared levels */
    uint64_t c[NCOUNTERS];      /* written by this vCPU only */
    uint64_t base[NCOUNTERS];   /* snapshot at the last reset; control thread only */
} __attribute__((aligned(64)));

/* ---- the plugin's global state ----------------------------------------- */

struct ddc {
    /* configuration (fixed after install) */
    struct level_cfg levels[MAX_LEVELS];
    unsigned nlevels;
    char sock_path[108];
    char stats_path[4096];
    uint64_t batch_ns;          /* atomic: set_batch changes it at run time */
    bool count_insns;           /* insns=on: one exec callback per TB */
    uint64_t plugin_id;         /* qemu_plugin_id_t, for qemu_plugin_reset() */
    bool system_emulation;
    char target[32];

    /* runtime knobs (atomics) */
    int multi_vcpu;             /* atomic bool: a second vCPU exists; shared levels lock */
    int hw_direct;              /* atomic bool: read QEMU 7.2's hwaddr layout (ddc.c) */
    uint64_t hw_mismatches;     /* atomic; memo entries the periodic check found stale */
    unsigned vcpus_seen;        /* atomic; vcpu_init calls so far */
    int mode;
    uint64_t local_ns;
    /* paced mode (pace.c); atomics, changed by set_pacing */
    uint64_t cpi_ps;            /* model time of one instruction */
    uint64_t k_milli;           /* dilation x 1000; 0: free-running (model clock only) */
    uint64_t window_ps;         /* how far behind k x model a vCPU may fall before it lags */
    uint32_t pace_epoch;        /* bumped when vCPUs must re-anchor (activation, new k) */
    struct map *map;            /* atomic pointer, release/acquire */
    unsigned nblades;           /* atomic; blades[0..nblades) are valid */

    /* Runtime activation (ddc.c, "Activation").  active is what translated
     * code does now; want is what the control thread asked for; switching
     * is SW_IDLE, SW_REQUESTED (kicks armed) or SW_RESETTING (a vCPU called
     * qemu_plugin_reset and the flush is under way). */
    int active;                 /* atomic bool */
    int want;                   /* atomic bool */
    int switching;              /* atomic, SW_* */
    uint64_t switched_at;       /* atomic; CLOCK_MONOTONIC of the last switch */
    bool acct_active;           /* ctl_lock: the state active_ns accounts for */
    uint64_t active_ns;         /* ctl_lock: time active before active_since */
    uint64_t active_since;      /* ctl_lock: CLOCK_MONOTONIC of the last activation */
    int event_pipe[2];          /* a switch completed: wakes the control thread */

    struct blade blades[MAX_BLADES];
    struct cache shared[MAX_LEVELS];   /* .tags != NULL only for shared levels */
    struct vcpu *vcpus[MAX_VCPUS];     /* atomic pointers, set in vcpu_init */

    /* control-thread side */
    pthread_mutex_t ctl_lock;
    struct map *retired;
    uint64_t t0_ns;             /* CLOCK_MONOTONIC at install */
    uint64_t tsc_base, tsc_base_ns, tsc_mult; /* the link's clock (ddc.c); tsc_mult 0 = no TSC */
    uint64_t reset_ns;          /* CLOCK_MONOTONIC at the last reset */
    uint64_t resets;
    int listen_fd;
    int wake_pipe[2];
    pthread_t ctl_thread;
    bool ctl_running;
    bool exited;
    int pid;                    /* of the process that installed the plugin */
};

extern struct ddc g;

enum { SW_IDLE, SW_ARMING, SW_REQUESTED, SW_RESETTING };
enum { SW_DONE, SW_WAIT, SW_ARM };  /* switch_request() */

/* time */
uint64_t mono_ns(void);
void link_clock_init(void);   /* once, before the first capped link (ddc.c) */

/* ddc.c: activation, called by the control thread.  switch_request (under
 * ctl_lock) returns SW_DONE when the state asked for is already in effect,
 * SW_WAIT when a switch is under way (switch_settled tells when it is done),
 * SW_ARM when the caller must call switch_arm once it has dropped ctl_lock. */
int switch_request(bool on);
void switch_arm(bool on);
bool switch_settled(void);
void switch_done(void);         /* after each completed switch: time bookkeeping */
uint64_t active_ns_now(void);

/* pace.c: paced mode.  pace_tb runs at the start of every translation block
 * (with the instruction count, ddc.c); idle/resume come from QEMU's vCPU idle
 * and resume callbacks (system mode) or around each syscall (user mode). */
void pace_tb(struct vcpu *v);
void pace_idle(struct vcpu *v);
void pace_resume(struct vcpu *v);
void pace_reanchor(void);               /* every vCPU re-anchors at its next block */
uint64_t pace_model_now_ps(const struct vcpu *v);   /* the vCPU's model time, for the link */
uint64_t pace_real_now_ps(const struct vcpu *v);    /* wall / k at the last clock read */
int pace_set(const double *dilation, const double *cpi_ns, const uint64_t *window_us,
             char *err, size_t errlen);
uint64_t wall_ps(void);

/* cache.c (lookups: cache.h) */
int cache_init(struct cache *c, const struct level_cfg *cfg);

/* config.c: option parsing shared by qemu_plugin_install and the control
 * protocol.  Each returns 0 or -1 with a message in err. */
int parse_u64(const char *s, uint64_t *out, int base);
/* Format an error message into err and return -1 (option and request parsing). */
int fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int parse_size(const char *s, uint64_t *out);
int parse_double(const char *s, double *out);
int parse_cache_spec(const char *spec, char *err, size_t errlen);
int parse_options(int argc, char **argv, char *err, size_t errlen);
int blade_find(const char *name);
int batch_set(uint64_t ns, char *err, size_t errlen);
int blade_set(const char *name, const uint64_t *latency_ns, const double *bw_gbps,
              char *err, size_t errlen);
void links_reset(void);         /* forget every link's schedule (a new time base) */
int mode_set(int mode, char *err, size_t errlen);
int map_publish(const struct range *r, unsigned n, char *err, size_t errlen);
int map_republish(void);
uint64_t llc_line_bytes(void);

/* stats.c */
struct sbuf { char *p; size_t len, cap; };
void sb_putc(struct sbuf *b, char c);
void sb_puts(struct sbuf *b, const char *s);
void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sb_str(struct sbuf *b, const char *s);   /* JSON string with escaping */
void stats_render(struct sbuf *b);             /* object body, no braces */
void config_render(struct sbuf *b);            /* object body, no braces */
void stats_reset(void);
int stats_write_file(const char *path);

/* ctl.c */
int ctl_start(char *err, size_t errlen);
void ctl_stop(void);

#endif
