/*
 * ddc-ptrchase: nanoseconds per dependent load over a buffer.
 *
 *   ddc-ptrchase [-s SIZE] [-n LOADS] [-r ROUNDS] [-l LINE] [-p random|seq] [-N A,B]
 *
 * The buffer (SIZE bytes, default 256M) is cut into LINE-byte cells (default
 * 64) linked in one random cycle (Sattolo's algorithm), so every load depends
 * on the previous one and the hardware, or the cache model, cannot prefetch.
 * With -p seq the cells are linked in address order instead: a strided sweep,
 * which an LRU cache holds exactly when the buffer fits.
 * Memory placement is left to the caller (numactl --membind=N). Each round
 * chases LOADS pointers and prints one line:
 *
 *   round=1 loads=2000000 ns_per_load=412.3
 *
 * and a final `ns_per_load_median=...` over the rounds.
 *
 * With -N A,B the probe compares two NUMA nodes in one process: it binds one
 * buffer to node A and an identical one (same cycle) to node B, and chases
 * them in alternating rounds (A B, B A, A B, ...), so both see the same host
 * noise within milliseconds.  Each round prints `node=` too, and the summary
 * adds `diff_ns_median=`: the median over rounds of B minus A.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static uint64_t parse_size(const char *s)
{
    char *end;
    double v = strtod(s, &end);
    switch (*end) {
    case 'K': case 'k': v *= 1024; break;
    case 'M': case 'm': v *= 1024 * 1024; break;
    case 'G': case 'g': v *= 1024.0 * 1024 * 1024; break;
    case '\0': break;
    default:
        fprintf(stderr, "ddc-ptrchase: bad size '%s' (use e.g. 256M)\n", s);
        exit(2);
    }
    return (uint64_t)v;
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* xorshift64*: deterministic, so two runs chase the same cycle. */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/*
 * A buffer of `cells` cells linked in one cycle.  2 MiB-aligned and backed by
 * transparent huge pages where the kernel allows: physically contiguous, so a
 * physically indexed cache (like the plugin's) sees the same set conflicts as
 * a virtually indexed one, and TLB misses do not blur the timing.  node >= 0
 * binds it there (mbind, before the first touch); -1 leaves it to the policy
 * of the caller (numactl).
 */
static char *make_cycle(uint64_t cells, uint64_t line, const uint32_t *order, int node)
{
    const uint64_t huge = 2ull << 20;
    uint64_t bytes = (cells * line + huge - 1) / huge * huge;
    char *raw = mmap(NULL, bytes + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED)
        return NULL;
    char *buf = (char *)(((uintptr_t)raw + huge - 1) & ~(uintptr_t)(huge - 1));
    madvise(buf, bytes, MADV_HUGEPAGE);
    if (node >= 0) {
        unsigned long mask[4] = { 0 };
        if (node >= 256)
            return NULL;
        mask[node / 64] = 1ul << (node % 64);
        if (syscall(SYS_mbind, buf, bytes, 2 /* MPOL_BIND */, mask, 257, 0) != 0)
            return NULL;
    }
    for (uint64_t i = 0; i < cells; i++)
        *(void **)(buf + (uint64_t)i * line) = buf + (uint64_t)order[i] * line;
    return buf;
}

/* Chase `loads` pointers from *p; return ns per load. */
static double chase(void ***p, uint64_t loads)
{
    void **q = *p;
    double t0 = now_ns();
    for (uint64_t i = 0; i < loads; i++)
        q = *q;
    double t1 = now_ns();
    *p = q;
    return (t1 - t0) / loads;
}

static double median(double *v, int n)
{
    qsort(v, n, sizeof(*v), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv)
{
    uint64_t size = 256ull << 20, loads = 2000000, line = 64;
    int rounds = 5, opt, sequential = 0, nodes[2] = { -1, -1 }, pair = 0;

    while ((opt = getopt(argc, argv, "s:n:r:l:p:N:")) != -1) {
        switch (opt) {
        case 's': size = parse_size(optarg); break;
        case 'n': loads = strtoull(optarg, NULL, 10); break;
        case 'r': rounds = atoi(optarg); break;
        case 'l': line = parse_size(optarg); break;
        case 'p':
            if (strcmp(optarg, "seq") && strcmp(optarg, "random")) {
                fprintf(stderr, "ddc-ptrchase: -p random|seq\n");
                return 2;
            }
            sequential = !strcmp(optarg, "seq");
            break;
        case 'N':
            if (sscanf(optarg, "%d,%d", &nodes[0], &nodes[1]) != 2 || nodes[0] < 0 || nodes[1] < 0 ||
                nodes[0] > 255 || nodes[1] > 255) {
                fprintf(stderr, "ddc-ptrchase: -N wants two node numbers, e.g. -N 0,1\n");
                return 2;
            }
            pair = 1;
            break;
        default:
            fprintf(stderr, "usage: %s [-s SIZE] [-n LOADS] [-r ROUNDS] [-l LINE] [-p random|seq] [-N A,B]\n",
                    argv[0]);
            return 2;
        }
    }
    if (line < sizeof(void *) || (line & (line - 1)) || size < 2 * line || rounds < 1 || rounds > 1000) {
        fprintf(stderr, "ddc-ptrchase: need LINE a power of two >= %zu, SIZE >= 2*LINE, 1 <= ROUNDS <= 1000\n",
                sizeof(void *));
        return 2;
    }
    uint64_t cells = size / line;
    uint32_t *order = malloc(cells * sizeof(*order));
    if (!order) {
        fprintf(stderr, "ddc-ptrchase: out of memory\n");
        return 1;
    }
    /* Sattolo (applied to the identity): a uniformly random single cycle
     * through every cell. */
    for (uint64_t i = 0; i < cells; i++)
        order[i] = (uint32_t)(sequential ? (i + 1) % cells : i);
    for (uint64_t i = cells - 1; i > 0 && !sequential; i--) {
        uint64_t j = rnd() % i;
        uint32_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    void **p[2] = { NULL, NULL };
    for (int b = 0; b <= pair; b++) {
        p[b] = (void **)make_cycle(cells, line, order, nodes[b]);
        if (!p[b]) {
            fprintf(stderr, "ddc-ptrchase: cannot allocate %llu bytes%s%.0d: %s\n", (unsigned long long)size,
                    pair ? " on node " : "", pair ? nodes[b] : 0, strerror(errno));
            return 1;
        }
    }
    free(order);

    double *ns = calloc(2 * rounds, sizeof(*ns)), *diff = ns + rounds;
    /* One untimed lap over part of each cycle warms the TLB and page tables. */
    for (int b = 0; b <= pair; b++)
        chase(&p[b], loads / 4);
    for (int r = 0; r < rounds; r++) {
        if (!pair) {
            ns[r] = chase(&p[0], loads);
            printf("round=%d loads=%llu ns_per_load=%.1f\n", r + 1, (unsigned long long)loads, ns[r]);
        } else {
            /* A B, then B A: a steady drift of the host cancels in pairs. */
            double t[2];
            for (int k = 0; k < 2; k++) {
                int b = (r % 2) ? 1 - k : k;
                t[b] = chase(&p[b], loads);
            }
            for (int b = 0; b < 2; b++)
                printf("round=%d node=%d loads=%llu ns_per_load=%.1f\n", r + 1, nodes[b],
                       (unsigned long long)loads, t[b]);
            ns[r] = t[0];
            diff[r] = t[1] - t[0];
        }
        fflush(stdout);
    }
    printf("size=%llu line=%llu ns_per_load_median=%.1f", (unsigned long long)size, (unsigned long long)line,
           median(ns, rounds));
    if (pair)
        printf(" diff_ns_median=%.1f", median(diff, rounds));
    printf(" end=%p\n", (void *)(pair ? p[1] : p[0]));
    return 0;
}
