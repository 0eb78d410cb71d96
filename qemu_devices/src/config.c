/*
 * Plugin options (key=value, from qemu_plugin_install) and the validated
 * setters the control protocol shares with them: blades, the address map.
 */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "ddc.h"

#define DEFAULT_CACHE "l1d:32K:8:64:private;l2:1M:16:64:private;llc:16M:16:64:shared"

int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

int parse_u64(const char *s, uint64_t *out, int base)
{
    char *end;

    if (!s || !*s || *s == '-' || isspace((unsigned char)*s)) {
        return -1;
    }
    errno = 0;
    *out = strtoull(s, &end, base);
    return (errno || *end) ? -1 : 0;
}

/* A finite decimal number, e.g. 0.4 or 15. */
int parse_double(const char *s, double *out)
{
    char *end;

    if (!s || !*s || isspace((unsigned char)*s)) {
        return -1;
    }
    errno = 0;
    *out = strtod(s, &end);
    return (errno || *end || *out != *out || *out > 1e300 || *out < -1e300) ? -1 : 0;
}

const char *mode_name(int mode)
{
    static const char *const names[] = { [MODE_INJECT] = "inject", [MODE_ACCOUNT] = "account",
                                         [MODE_PACED] = "paced" };

    return mode >= 0 && mode <= MODE_PACED ? names[mode] : "?";
}

int mode_parse(const char *s)
{
    for (int m = MODE_INJECT; m <= MODE_PACED; m++) {
        if (!strcmp(s, mode_name(m))) {
            return m;
        }
    }
    return -1;
}

/* The mode option, also set at run time (set_mode).  Paced mode prices
 * instructions at every block, so it needs them counted; entering it
 * anchors every vCPU afresh, and the links start a new schedule, since paced
 * links run on model time and the others on real time. */
int mode_set(int mode, char *err, size_t errlen)
{
    if (mode == MODE_PACED && !g.count_insns) {
        return fail(err, errlen, "mode paced needs instructions counted; drop insns=off");
    }
    if ((mode == MODE_PACED) != (LOAD(&g.mode) == MODE_PACED)) {
        links_reset();
    }
    STORE(&g.mode, mode);
    pace_reanchor();
    return 0;
}

/* 32K, 1M, 16M, 4096: binary multiples, as cache sizes are quoted. */
int parse_size(const char *s, uint64_t *out)
{
    char *end;
    uint64_t v, mul = 1;

    if (!s || !isdigit((unsigned char)*s)) {
        return -1;
    }
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno) {
        return -1;
    }
    switch (toupper((unsigned char)*end)) {
    case 0:   break;
    case 'K': mul = 1ULL << 10; end++; break;
    case 'M': mul = 1ULL << 20; end++; break;
    case 'G': mul = 1ULL << 30; end++; break;
    default:  return -1;
    }
    if (*end == 'B' || *end == 'b') {
        end++;
    }
    if (*end || v > UINT64_MAX / mul) {
        return -1;
    }
    *out = v * mul;
    return 0;
}

static bool valid_name(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n >= NAME_LEN || !isalpha((unsigned char)s[0])) {
        return false;
    }
    for (; *s; s++) {
        if (!isalnum((unsigned char)*s) && *s != '_' && *s != '-' && *s != '.') {
            return false;
        }
    }
    return true;
}

/* Split s at sep into at most max fields (in place); returns the count. */
static int split(char *s, char sep, char **f, int max)
{
    int n = 0;

    f[n++] = s;
    for (; *s; s++) {
        if (*s == sep) {
            if (n == max) {
                return max + 1;
            }
            *s = 0;
            f[n++] = s + 1;
        }
    }
    return n;
}

static int parse_level(char *spec, struct level_cfg *l, char *err, size_t errlen)
{
    char *f[7];
    uint64_t ways, line;
    int n = split(spec, ':', f, 6);

    if (n != 5 && n != 6) {
        return fail(err, errlen, "cache level '%s': want NAME:SIZE:WAYS:LINE:private|shared[:HIT_NS]", spec);
    }
    if (!valid_name(f[0])) {
        return fail(err, errlen, "cache level name '%s': use letters, digits, _ - . (max %d)",
                    f[0], NAME_LEN - 1);
    }
    snprintf(l->name, sizeof(l->name), "%s", f[0]);
    if (parse_size(f[1], &l->size) || l->size == 0) {
        return fail(err, errlen, "cache level %s: size '%s' is not a size; use e.g. 32K, 1M", f[0], f[1]);
    }
    if (parse_u64(f[2], &ways, 10) || ways == 0 || ways > 64) {
        return fail(err, errlen, "cache level %s: ways '%s' must be 1..64", f[0], f[2]);
    }
    if (parse_u64(f[3], &line, 10) || line < 8 || line > 4096 || (line & (line - 1))) {
        return fail(err, errlen, "cache level %s: line '%s' must be a power of two in 8..4096",
                    f[0], f[3]);
    }
    if (!strcmp(f[4], "private")) {
        l->shared = false;
    } else if (!strcmp(f[4], "shared")) {
        l->shared = true;
    } else {
        return fail(err, errlen, "cache level %s: '%s' must be private or shared", f[0], f[4]);
    }
    l->hit_ps = 0;
    if (n == 6) {
        double hit;
        if (parse_double(f[5], &hit) || !(hit >= 0 && hit <= 1000000)) {
            return fail(err, errlen, "cache level %s: hit time '%s' must be 0..1000000 ns", f[0], f[5]);
        }
        l->hit_ps = (uint64_t)(hit * 1000 + 0.5);
    }
    if (l->size % (ways * line)) {
        return fail(err, errlen, "cache level %s: size %s is not a multiple of ways*line (%llu)",
                    f[0], f[1], (unsigned long long)(ways * line));
    }
    l->ways = (uint32_t)ways;
    l->line = (uint32_t)line;
    l->line_shift = (uint32_t)__builtin_ctzll(line);
    l->sets = l->size / (ways * line);
    l->set_mask = (l->sets & (l->sets - 1)) ? 0 : l->sets - 1;
    return 0;
}

/* Levels are separated by ';' or ',' (QEMU splits plugin options at single
 * commas, so a comma must be written ',,' on the command line). */
int parse_cache_spec(const char *spec, char *err, size_t errlen)
{
    char buf[1024], *lv[MAX_LEVELS + 1], *s;
    int n = 0, i;

    if (strlen(spec) >= sizeof(buf)) {
        return fail(err, errlen, "cache spec too long");
    }
    g.nlevels = 0;
    if (!strcmp(spec, "none")) {
        return 0;
    }
    snprintf(buf, sizeof(buf), "%s", spec);
    for (s = buf; *s; s++) {
        if (*s == ',') {
            *s = ';';
        }
    }
    n = split(buf, ';', lv, MAX_LEVELS);
    if (n > MAX_LEVELS) {
        return fail(err, errlen, "cache: at most %d levels", MAX_LEVELS);
    }
    for (i = 0; i < n; i++) {
        struct level_cfg *l = &g.levels[i];
        if (parse_level(lv[i], l, err, errlen)) {
            return -1;
        }
        if (i == 0 && l->shared) {
            return fail(err, errlen, "cache: the first level (%s) must be private", l->name);
        }
        if (i > 0 && !l->shared && g.levels[i - 1].shared) {
            return fail(err, errlen, "cache: private level %s follows a shared level", l->name);
        }
        for (int j = 0; j < i; j++) {
            if (!strcmp(g.levels[j].name, l->name)) {
                return fail(err, errlen, "cache: level name %s used twice", l->name);
            }
        }
    }
    g.nlevels = (unsigned)n;
    return 0;
}

uint64_t llc_line_bytes(void)
{
    return g.nlevels ? g.levels[g.nlevels - 1].line : 64;
}

int blade_find(const char *name)
{
    unsigned n = __atomic_load_n(&g.nblades, __ATOMIC_ACQUIRE);

    for (unsigned i = 0; i < n; i++) {
        if (!strcmp(g.blades[i].name, name)) {
            return (int)i;
        }
    }
    return -1;
}

/* The batch_ns option, also set at run time (set_batch). */
int batch_set(uint64_t ns, char *err, size_t errlen)
{
    if (ns > MAX_BATCH_NS) {
        return fail(err, errlen, "batch_ns must be 0..%llu", (unsigned long long)MAX_BATCH_NS);
    }
    STORE(&g.batch_ns, ns);
    return 0;
}

static void link_reset(struct blade *b);

/* Create or update a blade; NULL leaves a field as it is.  Caller holds
 * g.ctl_lock (or runs before any vCPU exists). */
int blade_set(const char *name, const uint64_t *latency_ns, const double *bw_gbps,
              char *err, size_t errlen)
{
    int i = blade_find(name);
    struct blade *b;

    if (bw_gbps && !(*bw_gbps >= 0 && *bw_gbps < 1e6)) {
        return fail(err, errlen, "blade %s: bandwidth must be >= 0 GB/s (0 = unlimited)", name);
    }
    if (latency_ns && *latency_ns > 1000000000ULL) {
        return fail(err, errlen, "blade %s: latency %llu ns is over 1 s", name,
                    (unsigned long long)*latency_ns);
    }
    if (i < 0) {
        if (!valid_name(name)) {
            return fail(err, errlen, "blade name '%s': start with a letter; letters, digits, _ - . "
                        "(max %d)", name, NAME_LEN - 1);
        }
        if (g.nblades >= MAX_BLADES) {
            return fail(err, errlen, "too many blades (max %d)", MAX_BLADES);
        }
        i = (int)g.nblades;
        b = &g.blades[i];
        memset(b, 0, sizeof(*b));
        snprintf(b->name, sizeof(b->name), "%s", name);
        b->latency_ns = g.local_ns;
        /* Fields first, then the count, so the access path never sees a
         * half-made blade. */
        __atomic_store_n(&g.nblades, g.nblades + 1, __ATOMIC_RELEASE);
    }
    b = &g.blades[i];
    if (latency_ns) {
        STORE(&b->latency_ns, *latency_ns);
    }
    if (bw_gbps && *bw_gbps != b->bandwidth_gbps) {
        /* Only a new bandwidth resets the link: the same one again (a campaign
         * sets every link before each run) keeps its schedule and burst.
         * GB/s is bytes per ns; keep picoseconds so 64 B at 25 GB/s is 2560 ps. */
        uint64_t tx = *bw_gbps > 0 ? (uint64_t)(llc_line_bytes() * 1000.0 / *bw_gbps + 0.5) : 0;
        b->bandwidth_gbps = *bw_gbps;
        if (tx) {
            link_clock_init();
            /* The slot shape, from tx: the access path only reads it. */
            uint64_t cap = (LINK_SLOT_PS + tx - 1) / tx, slot = cap * tx, burst = LINK_BURST_PS / slot;
            STORE(&b->slot_cap, cap);
            STORE(&b->slot_ps, slot);
            STORE(&b->burst_slots, burst < LINK_SLOTS / 4 ? burst : LINK_SLOTS / 4);
            STORE(&b->lease, (uint32_t)(cap >= 16 ? 8 : cap >= 2 ? cap / 2 : 1));
        }
        __atomic_store_n(&b->tx_ps, tx, __ATOMIC_RELEASE);
        /* Slot numbers depend on tx: forget the old schedule. */
        link_reset(b);
    }
    return i;
}

/* A vCPU booking concurrently may leave one stale word, which reads as a
 * free slot or, at worst, one slot of the ring misjudged once; a new gen
 * ends every lease. */
static void link_reset(struct blade *b)
{
    STORE(&b->gen, LOAD(&b->gen) + 1);
    for (unsigned k = 0; k < LINK_SLOTS; k++) {
        STORE(&b->slots[k], 0);
    }
    STORE(&b->first_open, 0);
}

void links_reset(void)
{
    unsigned n = __atomic_load_n(&g.nblades, __ATOMIC_ACQUIRE);

    for (unsigned i = 0; i < n; i++) {
        link_reset(&g.blades[i]);
    }
}

static int range_cmp(const void *a, const void *b)
{
    const struct range *x = a, *y = b;

    return x->start < y->start ? -1 : x->start > y->start;
}

int map_publish(const struct range *r, unsigned n, char *err, size_t errlen)
{
    struct map *m, *old;

    if (n > MAX_RANGES) {
        return fail(err, errlen, "too many ranges (%u, max %d)", n, MAX_RANGES);
    }
    m = calloc(1, sizeof(*m));
    if (!m) {
        return fail(err, errlen, "out of memory");
    }
    memcpy(m->r, r, n * sizeof(*r));
    m->n = n;
    qsort(m->r, n, sizeof(*r), range_cmp);
    for (unsigned i = 0; i < n; i++) {
        const struct range *x = &m->r[i];
        int rc = 0;
        if (x->start >= x->end) {
            rc = fail(err, errlen, "range 0x%llx-0x%llx is empty", (unsigned long long)x->start,
                      (unsigned long long)x->end);
        } else if (x->node >= MAX_NODES) {
            rc = fail(err, errlen, "range 0x%llx: node %u is over the maximum %d",
                      (unsigned long long)x->start, x->node, MAX_NODES - 1);
        } else if (x->blade >= (int)g.nblades) {
            rc = fail(err, errlen, "range 0x%llx: no blade %d", (unsigned long long)x->start, x->blade);
        } else if (i && x->start < m->r[i - 1].end) {
            rc = fail(err, errlen, "ranges 0x%llx-0x%llx and 0x%llx-0x%llx overlap",
                      (unsigned long long)m->r[i - 1].start, (unsigned long long)m->r[i - 1].end,
                      (unsigned long long)x->start, (unsigned long long)x->end);
        }
        if (rc) {
            free(m);
            return rc;
        }
    }
    old = __atomic_exchange_n(&g.map, m, __ATOMIC_ACQ_REL);
    if (old) {
        old->retired_next = g.retired;
        g.retired = old;
    }
    return 0;
}

/*
 * Publish a copy of the current map.  The access path compares the map
 * pointer on every access, so this sends every vCPU through its slow path
 * once, which is where it notices a pending deactivation (ddc.c).
 */
int map_republish(void)
{
    const struct map *m = __atomic_load_n(&g.map, __ATOMIC_ACQUIRE);
    char err[256];

    return map_publish(m->r, m->n, err, sizeof(err));
}

/* START:END:NODE[:BLADE], START and END in hex (0x optional), BLADE a name
 * or an index. */
static int parse_range(const char *spec, struct range *r, char *err, size_t errlen)
{
    char buf[256], *f[5];
    uint64_t node;
    int n;

    snprintf(buf, sizeof(buf), "%s", spec);
    n = split(buf, ':', f, 4);
    if (n < 3 || n > 4) {
        return fail(err, errlen, "range '%s': want START:END:NODE[:BLADE] (hex addresses)", spec);
    }
    if (parse_u64(f[0], &r->start, 16) || parse_u64(f[1], &r->end, 16)) {
        return fail(err, errlen, "range '%s': START and END must be hex, e.g. 0x100000000", spec);
    }
    if (parse_u64(f[2], &node, 10) || node >= MAX_NODES) {
        return fail(err, errlen, "range '%s': NODE must be 0..%d", spec, MAX_NODES - 1);
    }
    r->node = (uint32_t)node;
    r->blade = -1;
    if (n == 4) {
        uint64_t idx;
        if (!parse_u64(f[3], &idx, 10)) {
            if (idx >= g.nblades) {
                return fail(err, errlen, "range '%s': no blade with index %llu", spec,
                            (unsigned long long)idx);
            }
            r->blade = (int)idx;
        } else if ((r->blade = blade_find(f[3])) < 0) {
            return fail(err, errlen, "range '%s': no blade named '%s' (define it with blade=)", spec, f[3]);
        }
    }
    return 0;
}

static int parse_blade(const char *spec, char *err, size_t errlen)
{
    char buf[256], *f[4];
    uint64_t lat;
    double bw = 0;
    char *end;
    int n;

    snprintf(buf, sizeof(buf), "%s", spec);
    n = split(buf, ':', f, 3);
    if (n < 2 || n > 3) {
        return fail(err, errlen, "blade '%s': want NAME:LATENCY_NS[:BANDWIDTH_GBPS]", spec);
    }
    if (blade_find(f[0]) >= 0) {
        return fail(err, errlen, "blade '%s' defined twice", f[0]);
    }
    if (parse_u64(f[1], &lat, 10)) {
        return fail(err, errlen, "blade '%s': latency '%s' is not a whole number of ns", spec, f[1]);
    }
    if (n == 3) {
        errno = 0;
        bw = strtod(f[2], &end);
        if (errno || *end || end == f[2]) {
            return fail(err, errlen, "blade '%s': bandwidth '%s' is not a number (GB/s)", spec, f[2]);
        }
    }
    return blade_set(f[0], &lat, &bw, err, errlen) < 0 ? -1 : 0;
}

int parse_options(int argc, char **argv, char *err, size_t errlen)
{
    const char *ranges[MAX_RANGES];
    const char *blades[MAX_BLADES];
    const char *cache = DEFAULT_CACHE;
    unsigned nranges = 0, nblades = 0;
    int mode = -1;
    bool seen_cache = false;
    struct range r[MAX_RANGES];

    for (int i = 0; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        const char *v;
        size_t klen;

        if (!eq) {
            return fail(err, errlen, "option '%s' is not key=value", argv[i]);
        }
        klen = (size_t)(eq - argv[i]);
        v = eq + 1;
#define KEY(k) (klen == strlen(k) && !strncmp(argv[i], k, klen))
        if (KEY("mode")) {
            if ((mode = mode_parse(v)) < 0) {
                return fail(err, errlen, "mode=%s: use inject, account or paced", v);
            }
        } else if (KEY("dilation") || KEY("cpi_ns")) {
            double x;
            if (parse_double(v, &x) ||
                pace_set(KEY("dilation") ? &x : NULL, KEY("cpi_ns") ? &x : NULL, NULL, err, errlen)) {
                return fail(err, errlen, "%.*s=%s: %s", (int)klen, argv[i], v,
                            KEY("dilation") ? "want a number, 1..100000 (0: free-running)"
                                            : "want a number of ns, 0.001..1000000");
            }
        } else if (KEY("window_us")) {
            uint64_t us;
            if (parse_u64(v, &us, 10) || pace_set(NULL, NULL, &us, err, errlen)) {
                return fail(err, errlen, "window_us=%s: want 0..10000000 us", v);
            }
        } else if (KEY("local_ns")) {
            if (parse_u64(v, &g.local_ns, 10)) {
                return fail(err, errlen, "local_ns=%s: not a whole number of ns", v);
            }
        } else if (KEY("batch_ns")) {
            uint64_t ns;
            if (parse_u64(v, &ns, 10) || batch_set(ns, err, errlen)) {
                return fail(err, errlen, "batch_ns=%s: want 0..%llu ns", v, (unsigned long long)MAX_BATCH_NS);
            }
        } else if (KEY("insns")) {
            if (!strcmp(v, "on")) {
                g.count_insns = true;
            } else if (!strcmp(v, "off")) {
                g.count_insns = false;
            } else {
                return fail(err, errlen, "insns=%s: use on or off", v);
            }
        } else if (KEY("active")) {
            if (!strcmp(v, "on")) {
                g.active = g.want = true;
            } else if (!strcmp(v, "off")) {
                g.active = g.want = false;
            } else {
                return fail(err, errlen, "active=%s: use on or off", v);
            }
        } else if (KEY("blade")) {
            if (nblades == MAX_BLADES) {
                return fail(err, errlen, "too many blade= options (max %d)", MAX_BLADES);
            }
            blades[nblades++] = v;
        } else if (KEY("range")) {
            if (nranges == MAX_RANGES) {
                return fail(err, errlen, "too many range= options (max %d)", MAX_RANGES);
            }
            ranges[nranges++] = v;
        } else if (KEY("cache")) {
            if (seen_cache) {
                return fail(err, errlen, "cache= given twice; list every level in one cache= "
                            "(levels separated by ';' or ',,')");
            }
            seen_cache = true;
            cache = v;
        } else if (KEY("sock")) {
            if (!*v || strlen(v) >= sizeof(g.sock_path)) {
                return fail(err, errlen, "sock=%s: path empty or longer than %zu bytes", v,
                            sizeof(g.sock_path) - 1);
            }
            snprintf(g.sock_path, sizeof(g.sock_path), "%s", v);
        } else if (KEY("stats")) {
            if (!*v || strlen(v) >= sizeof(g.stats_path)) {
                return fail(err, errlen, "stats=%s: path empty or too long", v);
            }
            snprintf(g.stats_path, sizeof(g.stats_path), "%s", v);
        } else {
            return fail(err, errlen, "unknown option '%.*s' (valid: mode, local_ns, batch_ns, insns, "
                        "active, blade, range, cache, sock, stats, dilation, cpi_ns, window_us)",
                        (int)klen, argv[i]);
        }
#undef KEY
    }
    if (mode >= 0 && mode_set(mode, err, errlen)) {
        return -1;
    }
    /* The cache first: a blade's transfer time depends on the LLC line. */
    if (parse_cache_spec(cache, err, errlen)) {
        return -1;
    }
    for (unsigned i = 0; i < nblades; i++) {
        if (parse_blade(blades[i], err, errlen)) {
            return -1;
        }
    }
    for (unsigned i = 0; i < nranges; i++) {
        if (parse_range(ranges[i], &r[i], err, errlen)) {
            return -1;
        }
    }
    return map_publish(r, nranges, err, errlen);
}
