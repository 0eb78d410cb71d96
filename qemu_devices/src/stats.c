/*
 * Statistics and configuration as JSON: the same text answers the control
 * socket's stats/config commands and makes the final stats= file.
 *
 * Counters are never zeroed under a running vCPU (it would race with the
 * increment).  A reset snapshots every counter into vcpu->base instead, and
 * everything reported is "current - base".
 */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ddc.h"

static void sb_grow(struct sbuf *b, size_t need)
{
    if (b->len + need + 1 <= b->cap) {
        return;
    }
    while (b->len + need + 1 > b->cap) {
        b->cap = b->cap ? b->cap * 2 : 4096;
    }
    b->p = realloc(b->p, b->cap);
    if (!b->p) {
        abort();
    }
}

void sb_putc(struct sbuf *b, char c)
{
    sb_grow(b, 1);
    b->p[b->len++] = c;
    b->p[b->len] = 0;
}

void sb_puts(struct sbuf *b, const char *s)
{
    size_t n = strlen(s);

    sb_grow(b, n);
    memcpy(b->p + b->len, s, n + 1);
    b->len += n;
}

void sb_printf(struct sbuf *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    sb_grow(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void sb_str(struct sbuf *b, const char *s)
{
    sb_putc(b, '"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            sb_putc(b, '\\');
            sb_putc(b, (char)c);
        } else if (c < 0x20) {
            sb_printf(b, "\\u%04x", c);
        } else {
            sb_putc(b, (char)c);
        }
    }
    sb_putc(b, '"');
}

static unsigned nvcpus(void)
{
    unsigned n = 0;

    for (unsigned i = 0; i < MAX_VCPUS; i++) {
        if (__atomic_load_n(&g.vcpus[i], __ATOMIC_ACQUIRE)) {
            n = i + 1;
        }
    }
    return n;
}

/*
 * Counters of one vCPU since the last reset.
 *
 * The access path does not count level-0 hits nor node-0 accesses (one
 * store less per access); they are derived here from loads + stores.  Those
 * are bumped before anything else an access counts, so reading from the
 * highest index down (acquire loads) never sees a miss or a node access
 * without its load/store: the differences cannot go negative.
 */
static void delta(const struct vcpu *v, uint64_t *d)
{
    uint64_t other = 0;

    for (int i = NCOUNTERS - 1; i >= 0; i--) {
        d[i] = __atomic_load_n(&v->c[i], __ATOMIC_ACQUIRE) - v->base[i];
    }
    for (int n = 1; n < MAX_NODES; n++) {
        other += d[C_NODE_ACC0 + n];
    }
    d[C_NODE_ACC0] = d[C_LOADS] + d[C_STORES] - other;
    d[C_HIT0] = g.nlevels ? d[C_LOADS] + d[C_STORES] + d[C_SPLIT] - d[C_MISS0] : 0;
}

/* Which NUMA nodes to list: 0 and every node in the map or with traffic. */
static bool node_listed(const uint64_t *d, unsigned node, const struct map *m)
{
    if (node == 0 || d[C_NODE_ACC0 + node]) {
        return true;
    }
    for (unsigned i = 0; i < m->n; i++) {
        if (m->r[i].node == node) {
            return true;
        }
    }
    return false;
}

static void render_counters(struct sbuf *b, const uint64_t *d, int64_t owed, const struct map *m)
{
    sb_printf(b, "\"insns\":%llu,\"loads\":%llu,\"stores\":%llu,\"io\":%llu,\"split\":%llu,",
              (unsigned long long)d[C_INSNS], (unsigned long long)d[C_LOADS],
              (unsigned long long)d[C_STORES], (unsigned long long)d[C_IO],
              (unsigned long long)d[C_SPLIT]);
    sb_puts(b, "\"levels\":{");
    for (unsigned i = 0; i < g.nlevels; i++) {
        sb_printf(b, "%s", i ? "," : "");
        sb_str(b, g.levels[i].name);
        sb_printf(b, ":{\"hits\":%llu,\"misses\":%llu}", (unsigned long long)d[C_HIT0 + i],
                  (unsigned long long)d[C_MISS0 + i]);
    }
    sb_puts(b, "},\"nodes\":[");
    bool first = true;
    for (unsigned n = 0; n < MAX_NODES; n++) {
        if (!node_listed(d, n, m)) {
            continue;
        }
        sb_printf(b, "%s{\"node\":%u,\"accesses\":%llu,\"memory\":%llu}", first ? "" : ",", n,
                  (unsigned long long)d[C_NODE_ACC0 + n], (unsigned long long)d[C_NODE_MEM0 + n]);
        first = false;
    }
    sb_printf(b, "],\"modelled_stall_ns\":%llu,\"injected_ns\":%llu,\"stalls\":%llu,\"owed_ns\":%lld",
              (unsigned long long)d[C_MODELLED_NS], (unsigned long long)d[C_INJECTED_NS],
              (unsigned long long)d[C_STALLS], (long long)owed);
    /* paced mode: model time in ns, the rest wall time */
    sb_printf(b, ",\"model_ns\":%llu,\"lag_ns\":%llu,\"forgiven_ns\":%llu,\"idle_model_ns\":%llu,"
              "\"wall_ns\":%llu,\"idle_ns\":%llu,\"wait_ns\":%llu,\"waits\":%llu",
              (unsigned long long)(d[C_MODEL_PS] / 1000), (unsigned long long)(d[C_LAG_PS] / 1000),
              (unsigned long long)(d[C_FORGIVEN_PS] / 1000),
              (unsigned long long)(d[C_IDLE_MODEL_PS] / 1000), (unsigned long long)d[C_WALL_NS],
              (unsigned long long)d[C_IDLE_NS], (unsigned long long)d[C_WAIT_NS],
              (unsigned long long)d[C_WAITS]);
}

static void render_pacing(struct sbuf *b)
{
    sb_printf(b, "\"dilation\":%g,\"cpi_ns\":%g,\"window_us\":%llu,",
              (double)LOAD(&g.k_milli) / 1000, (double)LOAD(&g.cpi_ps) / 1000,
              (unsigned long long)(LOAD(&g.window_ps) / 1000000));
}

void stats_render(struct sbuf *b)
{
    uint64_t tot[NCOUNTERS] = { 0 }, d[NCOUNTERS];
    const struct map *m = __atomic_load_n(&g.map, __ATOMIC_ACQUIRE);
    unsigned nv = nvcpus(), nb = __atomic_load_n(&g.nblades, __ATOMIC_ACQUIRE);
    uint64_t now = mono_ns();
    int64_t owed_tot = 0;

    sb_printf(b, "\"mode\":\"%s\",\"active\":%s,\"uptime_ns\":%llu,\"since_reset_ns\":%llu,"
              "\"active_ns\":%llu,\"resets\":%llu,",
              mode_name(LOAD(&g.mode)),
              LOAD(&g.active) ? "true" : "false",
              (unsigned long long)(now - g.t0_ns), (unsigned long long)(now - g.reset_ns),
              (unsigned long long)active_ns_now(), (unsigned long long)g.resets);
    render_pacing(b);
    sb_puts(b, "\"vcpus\":[");
    bool first = true;
    for (unsigned i = 0; i < nv; i++) {
        const struct vcpu *v = __atomic_load_n(&g.vcpus[i], __ATOMIC_ACQUIRE);
        int64_t owed;
        if (!v) {
            continue;
        }
        delta(v, d);
        owed = LOAD(&v->owed_ns);
        owed_tot += owed;
        for (int k = 0; k < NCOUNTERS; k++) {
            tot[k] += d[k];
        }
        sb_printf(b, "%s{\"vcpu\":%u,", first ? "" : ",", i);
        render_counters(b, d, owed, m);
        sb_putc(b, '}');
        first = false;
    }
    sb_puts(b, "],\"total\":{");
    render_counters(b, tot, owed_tot, m);
    sb_puts(b, "},\"blades\":[");
    for (unsigned i = 0; i < nb; i++) {
        const struct blade *bl = &g.blades[i];
        sb_printf(b, "%s{\"blade\":%u,\"name\":", i ? "," : "", i);
        sb_str(b, bl->name);
        sb_printf(b, ",\"latency_ns\":%llu,\"bandwidth_gbps\":%g,\"accesses\":%llu,\"bytes\":%llu,"
                  "\"stall_ns\":%llu,\"queue_ns\":%llu}",
                  (unsigned long long)LOAD(&bl->latency_ns), bl->bandwidth_gbps,
                  (unsigned long long)tot[C_BLADE_ACC0 + i],
                  (unsigned long long)(tot[C_BLADE_ACC0 + i] * llc_line_bytes()),
                  (unsigned long long)tot[C_BLADE_STALL0 + i],
                  (unsigned long long)tot[C_BLADE_QUEUE0 + i]);
    }
    sb_putc(b, ']');
}

void config_render(struct sbuf *b)
{
    const struct map *m = __atomic_load_n(&g.map, __ATOMIC_ACQUIRE);
    unsigned nb = __atomic_load_n(&g.nblades, __ATOMIC_ACQUIRE);

    sb_printf(b, "\"version\":\"%s\",\"target\":", DDC_VERSION);
    sb_str(b, g.target);
    sb_printf(b, ",\"system_emulation\":%s,\"address\":\"%s\",\"mode\":\"%s\",\"active\":%s,\"local_ns\":%llu,"
              "\"batch_ns\":%llu,\"insns\":%s,\"vcpus\":%u,\"hw_memo\":%s,\"hw_mismatches\":%llu,",
              g.system_emulation ? "true" : "false", g.system_emulation ? "phys" : "virt",
              mode_name(LOAD(&g.mode)),
              LOAD(&g.active) ? "true" : "false", (unsigned long long)LOAD(&g.local_ns), (unsigned long long)LOAD(&g.batch_ns),
              g.count_insns ? "true" : "false", nvcpus(), LOAD(&g.hw_direct) ? "true" : "false",
              (unsigned long long)LOAD(&g.hw_mismatches));
    render_pacing(b);
    sb_puts(b, "\"cache\":[");
    for (unsigned i = 0; i < g.nlevels; i++) {
        const struct level_cfg *l = &g.levels[i];
        sb_printf(b, "%s{\"name\":", i ? "," : "");
        sb_str(b, l->name);
        sb_printf(b, ",\"size\":%llu,\"ways\":%u,\"line\":%u,\"sets\":%llu,\"shared\":%s,\"hit_ns\":%g}",
                  (unsigned long long)l->size, l->ways, l->line, (unsigned long long)l->sets,
                  l->shared ? "true" : "false", (double)l->hit_ps / 1000);
    }
    sb_puts(b, "],\"blades\":[");
    for (unsigned i = 0; i < nb; i++) {
        const struct blade *bl = &g.blades[i];
        sb_printf(b, "%s{\"blade\":%u,\"name\":", i ? "," : "", i);
        sb_str(b, bl->name);
        sb_printf(b, ",\"latency_ns\":%llu,\"bandwidth_gbps\":%g,\"line_transfer_ps\":%llu}",
                  (unsigned long long)LOAD(&bl->latency_ns), bl->bandwidth_gbps,
                  (unsigned long long)LOAD(&bl->tx_ps));
    }
    sb_puts(b, "],\"ranges\":[");
    for (unsigned i = 0; i < m->n; i++) {
        const struct range *r = &m->r[i];
        sb_printf(b, "%s{\"start\":\"0x%llx\",\"end\":\"0x%llx\",\"node\":%u,\"blade\":",
                  i ? "," : "", (unsigned long long)r->start, (unsigned long long)r->end, r->node);
        if (r->blade < 0) {
            sb_puts(b, "null}");
        } else {
            sb_str(b, g.blades[r->blade].name);
            sb_putc(b, '}');
        }
    }
    sb_puts(b, "],\"sock\":");
    sb_str(b, g.sock_path);
    sb_puts(b, ",\"stats\":");
    sb_str(b, g.stats_path);
}

void stats_reset(void)
{
    for (unsigned i = 0; i < MAX_VCPUS; i++) {
        struct vcpu *v = __atomic_load_n(&g.vcpus[i], __ATOMIC_ACQUIRE);
        if (!v) {
            continue;
        }
        for (int k = 0; k < NCOUNTERS; k++) {
            v->base[k] = LOAD(&v->c[k]);
        }
    }
    g.reset_ns = g.active_since = mono_ns();
    g.active_ns = 0;
    g.resets++;
}

/* Write-then-rename, so a reader never sees half a file. */
int stats_write_file(const char *path)
{
    struct sbuf b = { 0 };
    char tmp[4200];
    FILE *f;
    int rc = 0;

    pthread_mutex_lock(&g.ctl_lock);
    sb_putc(&b, '{');
    stats_render(&b);
    sb_puts(&b, ",\"config\":{");
    config_render(&b);
    sb_puts(&b, "}}\n");
    pthread_mutex_unlock(&g.ctl_lock);

    snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid());
    f = fopen(tmp, "w");
    if (!f) {
        free(b.p);
        return -1;
    }
    if (fwrite(b.p, 1, b.len, f) != b.len) {
        rc = -1;
    }
    if (fclose(f)) {
        rc = -1;
    }
    if (rc == 0 && rename(tmp, path)) {
        rc = -1;
    }
    if (rc) {
        unlink(tmp);
    }
    free(b.p);
    return rc;
}
