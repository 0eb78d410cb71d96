/*
 * Paced mode: every vCPU has a model clock, and never runs ahead of
 * k x model time on the wall clock (k = the dilation).
 *
 * The model clock advances by cpi_ps per instruction, by the hit time of
 * the level that served each data access, by the memory's latency for an
 * access that missed every level (local_ns, or the memory blade's latency
 * plus link queueing).  It is not advanced access by access: the access
 * path already counts instructions, lines, misses per level and remote
 * charges, so at the start of each translation block pace_tb prices what
 * the counters moved by since the last block.  Nothing is added to the
 * access path, and inject and account modes pay one branch per block.
 *
 * due_ps is where the vCPU's model clock has got to, in wall time
 * (ps since install, k x model plus the anchor).  The wall clock is read
 * only once due_ps is more than PACE_QUANTUM_PS past the last reading, so a
 * vCPU runs at most that far ahead between readings.  Then:
 *  - ahead (due > now): wait until due: spin for a short wait, sleep most of
 *    a long one and spin the rest (a sleep costs tens of microseconds and
 *    wakes late);
 *  - behind by less than the window: run on without waiting; the vCPU
 *    catches up by itself, since k leaves the host headroom.  So a host
 *    that preempts the vCPU thread for a few milliseconds costs nothing;
 *  - behind by more than the window: the excess is lag.  It is counted, and
 *    the model clock is pulled up to wall - window, so lag never becomes
 *    credit to run free later.
 * Across idle time the model clock follows wall / k (the guest waits for a
 * timer or a device, which run in wall time).  A vCPU that goes idle while
 * behind (within the window) starts its idle time where wall time is: that
 * shortfall is counted apart, as "forgiven", not as lag.  It is mostly time
 * the vCPU thread spent emulating devices (an MMIO access, a virtio kick),
 * which the model does not charge: devices run in wall time.
 *
 * k = 0 is "free-running": the model clock runs but nothing waits, so the
 * counters tell how much host time a model nanosecond costs (the
 * orchestrator's dilation: auto measures k this way).
 */
#include <errno.h>
#include <sched.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>

#include "ddc.h"

/* How far a vCPU may run ahead of the wall clock between two readings. */
#define PACE_QUANTUM_PS  1000000ull       /* 1 us */
/* Waits longer than this sleep, waking PACE_SLEEP_EARLY before the end. */
#define PACE_SLEEP_MIN_PS   300000000ull  /* 300 us */
#define PACE_SLEEP_EARLY_PS 150000000ull  /* 150 us */

uint64_t wall_ps(void)
{
    return (mono_ns() - g.t0_ns) * 1000;
}

static inline uint64_t to_model(uint64_t wall, uint64_t k_milli)
{
    return (uint64_t)(((unsigned __int128)wall * 1000) / k_milli);
}

/* On every block: stay in 64 bits (a constant division) when the product fits. */
static inline uint64_t to_wall(uint64_t model, uint64_t k_milli)
{
    if (__builtin_expect(model < (1ull << 32) && k_milli < (1ull << 31), 1)) {
        return model * k_milli / 1000;
    }
    return (uint64_t)(((unsigned __int128)model * k_milli) / 1000);
}

/* Start over from now: the counters so far are priced, the vCPU is on time. */
static void anchor(struct vcpu *v, uint32_t epoch)
{
    struct pace *p = &v->pace;

    p->insns = v->c[C_INSNS];
    p->lines = v->c[C_LOADS] + v->c[C_STORES] + v->c[C_SPLIT];
    p->mod_ns = v->c[C_MODELLED_NS];
    for (unsigned i = 0; i < g.nlevels; i++) {
        p->miss[i] = v->c[C_MISS0 + i];
    }
    p->seen_ps = p->due_ps = wall_ps();
    p->idle_ps = 0;
    p->k_milli = LOAD(&g.k_milli);
    p->epoch = epoch;
}

/*
 * Model time (ps) of what the counters moved by since the last call.  An
 * access costs the hit time of the level that served it: every line pays
 * level 0's hit time, a level-i miss adds level i+1's hit time minus level
 * i's, and a miss in the last level adds the local memory's latency minus
 * that level's hit time; a remote line's extra (latency - local + queueing)
 * is in C_MODELLED_NS already.  The sum telescopes to exactly one serving
 * level per line, so it is never negative.
 */
static uint64_t price(struct vcpu *v)
{
    struct pace *p = &v->pace;
    uint64_t insns = v->c[C_INSNS], lines = v->c[C_LOADS] + v->c[C_STORES] + v->c[C_SPLIT];
    uint64_t mod = v->c[C_MODELLED_NS], local_ps = LOAD(&g.local_ns) * 1000;
    int64_t ps = (int64_t)((insns - p->insns) * LOAD(&g.cpi_ps) + (mod - p->mod_ns) * 1000);

    if (g.nlevels) {
        ps += (int64_t)((lines - p->lines) * g.levels[0].hit_ps);
        for (unsigned i = 0; i < g.nlevels; i++) {
            uint64_t miss = v->c[C_MISS0 + i];
            uint64_t next = i + 1 < g.nlevels ? g.levels[i + 1].hit_ps : local_ps;
            ps += (int64_t)(miss - p->miss[i]) * ((int64_t)next - (int64_t)g.levels[i].hit_ps);
            p->miss[i] = miss;
        }
    } else {
        ps += (int64_t)((lines - p->lines) * local_ps);
    }
    p->insns = insns;
    p->lines = lines;
    p->mod_ns = mod;
    return ps > 0 ? (uint64_t)ps : 0;
}

/* Wait until wall time reaches due (ps). */
static void wait_until(struct vcpu *v, uint64_t due, uint64_t now)
{
    if (due - now > PACE_SLEEP_MIN_PS) {
        uint64_t ns = (due - now - PACE_SLEEP_EARLY_PS) / 1000;
        struct timespec ts = { (time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull) };

        if (!v->slack_set) {
            prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);  /* the default 50 us would wake late */
            v->slack_set = true;
        }
        while (nanosleep(&ts, &ts) && errno == EINTR) {
        }
    }
    /* Yield rather than spin: other threads of this QEMU (the other vCPUs,
     * the main loop serving the devices) may need this core meanwhile. */
    while (wall_ps() < due) {
        sched_yield();
    }
}

/* Behind by more than the window: count the excess as lag and pull the
 * model clock up to now - window. */
static void lag(struct vcpu *v, uint64_t now, uint64_t window)
{
    struct pace *p = &v->pace;

    if (now > p->due_ps + window) {
        uint64_t model = to_model(now - window - p->due_ps, p->k_milli);
        BUMP(&v->c[C_LAG_PS], model);
        BUMP(&v->c[C_MODEL_PS], model);
        p->due_ps = now - window;
    }
}

/* The wall clock is due for a reading: wait, run on, or lag. */
static void __attribute__((noinline)) check(struct vcpu *v)
{
    struct pace *p = &v->pace;
    uint64_t now = wall_ps();

    BUMP(&v->c[C_WALL_NS], (now - p->seen_ps) / 1000);
    p->seen_ps = now;
    if (p->due_ps > now) {
        uint64_t after;
        wait_until(v, p->due_ps, now);
        after = wall_ps();
        BUMP(&v->c[C_WAIT_NS], (after - now) / 1000);
        BUMP(&v->c[C_WAITS], 1);
        BUMP(&v->c[C_WALL_NS], (after - now) / 1000);
        p->seen_ps = after;
    } else {
        lag(v, now, LOAD(&g.window_ps));
    }
}

void pace_tb(struct vcpu *v)
{
    struct pace *p = &v->pace;
    uint32_t epoch = LOAD(&g.pace_epoch);
    uint64_t ps;

    if (__builtin_expect(p->epoch != epoch, 0)) {
        anchor(v, epoch);
        return;
    }
    ps = price(v);
    BUMP(&v->c[C_MODEL_PS], ps);
    if (!p->k_milli) {
        return;
    }
    p->due_ps += to_wall(ps, p->k_milli);
    if (__builtin_expect(p->due_ps > p->seen_ps + PACE_QUANTUM_PS, 0)) {
        check(v);
    }
}

/* Is v paced right now?  (Mode, activation and anchoring all agree.) */
static bool pacing(const struct vcpu *v)
{
    return LOAD(&g.mode) == MODE_PACED && LOAD(&g.active) && v->pace.epoch == LOAD(&g.pace_epoch);
}

void pace_idle(struct vcpu *v)
{
    struct pace *p = &v->pace;
    uint64_t now, ps;

    if (!pacing(v) || p->idle_ps) {
        return;
    }
    /* What the vCPU did since its last block start has not been priced. */
    ps = price(v);
    BUMP(&v->c[C_MODEL_PS], ps);
    now = wall_ps();
    BUMP(&v->c[C_WALL_NS], (now - p->seen_ps) / 1000);
    p->seen_ps = now;
    if (p->k_milli) {
        p->due_ps += to_wall(ps, p->k_milli);
        if (now > p->due_ps) {
            uint64_t model = to_model(now - p->due_ps, p->k_milli);
            BUMP(&v->c[C_FORGIVEN_PS], model);
            BUMP(&v->c[C_MODEL_PS], model);
            p->due_ps = now;
        }
    }
    p->idle_ps = now ? now : 1;
}

void pace_resume(struct vcpu *v)
{
    struct pace *p = &v->pace;
    uint64_t now, idle;

    if (!p->idle_ps) {
        return;
    }
    if (!pacing(v)) {
        p->idle_ps = 0;     /* a new epoch anchors at the next block */
        return;
    }
    now = wall_ps();
    idle = now - p->idle_ps;
    BUMP(&v->c[C_WALL_NS], (now - p->seen_ps) / 1000);
    BUMP(&v->c[C_IDLE_NS], idle / 1000);
    if (p->k_milli) {
        uint64_t model = to_model(idle, p->k_milli);
        BUMP(&v->c[C_IDLE_MODEL_PS], model);
        BUMP(&v->c[C_MODEL_PS], model);
    }
    p->due_ps += idle;
    p->seen_ps = now;
    p->idle_ps = 0;
}

uint64_t pace_model_now_ps(const struct vcpu *v)
{
    return to_model(v->pace.due_ps, v->pace.k_milli);
}

uint64_t pace_real_now_ps(const struct vcpu *v)
{
    return to_model(v->pace.seen_ps, v->pace.k_milli);
}

void pace_reanchor(void)
{
    __atomic_fetch_add(&g.pace_epoch, 1, __ATOMIC_RELEASE);
}

/* dilation, cpi_ns and window_us, from the options and from set_pacing;
 * NULL leaves a value as it is.  A new k or cpi re-anchors every vCPU. */
int pace_set(const double *dilation, const double *cpi_ns, const uint64_t *window_us, char *err,
             size_t errlen)
{
    if (dilation && !(*dilation == 0 || (*dilation >= 1 && *dilation <= 100000))) {
        return fail(err, errlen, "dilation %g: want 1..100000 (or 0: free-running, no waits)", *dilation);
    }
    if (cpi_ns && !(*cpi_ns >= 0.001 && *cpi_ns <= 1000000)) {
        return fail(err, errlen, "cpi_ns %g: want 0.001..1000000 ns per instruction", *cpi_ns);
    }
    if (window_us && *window_us > 10000000) {
        return fail(err, errlen, "window_us %llu: want 0..10000000 (10 s)", (unsigned long long)*window_us);
    }
    if (dilation) {
        uint64_t k = (uint64_t)(*dilation * 1000 + 0.5);
        if (k != LOAD(&g.k_milli)) {
            STORE(&g.k_milli, k);
            links_reset();  /* the link's slots are in model time */
        }
    }
    if (cpi_ns) {
        STORE(&g.cpi_ps, (uint64_t)(*cpi_ns * 1000 + 0.5));
    }
    if (window_us) {
        STORE(&g.window_ps, *window_us * 1000000);
    }
    pace_reanchor();
    return 0;
}
