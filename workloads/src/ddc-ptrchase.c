/*
 * ddc-ptrchase: nanoseconds per dependent load over a buffer.
 *
 *   ddc-ptrchase [-s SIZE] [-n LOADS] [-r ROUNDS] [-l LINE] [-p random|seq]
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
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
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

int main(int argc, char **argv)
{
    uint64_t size = 256ull << 20, loads = 2000000, line = 64;
    int rounds = 5, opt, sequential = 0;

    while ((opt = getopt(argc, argv, "s:n:r:l:p:")) != -1) {
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
        default:
            fprintf(stderr, "usage: %s [-s SIZE] [-n LOADS] [-r ROUNDS] [-l LINE] [-p random|seq]\n", argv[0]);
            return 2;
        }
    }
    if (line < sizeof(void *) || (line & (line - 1)) || size < 2 * line || rounds < 1 || rounds > 1000) {
        fprintf(stderr, "ddc-ptrchase: need LINE a power of two >= %zu, SIZE >= 2*LINE, 1 <= ROUNDS <= 1000\n",
                sizeof(void *));
        return 2;
    }
    uint64_t cells = size / line;
    /* 2 MiB-aligned and backed by transparent huge pages where the kernel
     * allows: physically contiguous, so a physically indexed cache (like the
     * plugin's) sees the same set conflicts as a virtually indexed one, and
     * TLB misses do not blur the timing. */
    const uint64_t huge = 2ull << 20;
    uint64_t bytes = (cells * line + huge - 1) / huge * huge;
    char *raw = mmap(NULL, bytes + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *buf = raw == MAP_FAILED ? raw : (char *)(((uintptr_t)raw + huge - 1) & ~(uintptr_t)(huge - 1));
    if (buf != MAP_FAILED)
        madvise(buf, bytes, MADV_HUGEPAGE);
    uint32_t *order = malloc(cells * sizeof(*order));
    if (buf == MAP_FAILED || !order) {
        fprintf(stderr, "ddc-ptrchase: cannot allocate %llu bytes: %s\n", (unsigned long long)size,
                strerror(errno));
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
    for (uint64_t i = 0; i < cells; i++)
        *(void **)(buf + (uint64_t)i * line) = buf + (uint64_t)order[i] * line;
    free(order);

    double *ns = calloc(rounds, sizeof(*ns));
    void **p = (void **)buf;
    /* One untimed lap over part of the cycle warms the TLB and page tables. */
    for (uint64_t i = 0; i < loads / 4; i++)
        p = *p;
    for (int r = 0; r < rounds; r++) {
        double t0 = now_ns();
        for (uint64_t i = 0; i < loads; i++)
            p = *p;
        double t1 = now_ns();
        ns[r] = (t1 - t0) / loads;
        printf("round=%d loads=%llu ns_per_load=%.1f\n", r + 1, (unsigned long long)loads, ns[r]);
        fflush(stdout);
    }
    qsort(ns, rounds, sizeof(*ns), cmp_double);
    double median = rounds % 2 ? ns[rounds / 2] : (ns[rounds / 2 - 1] + ns[rounds / 2]) / 2;
    printf("size=%llu line=%llu ns_per_load_median=%.1f end=%p\n", (unsigned long long)size,
           (unsigned long long)line, median, (void *)p);
    return 0;
}
