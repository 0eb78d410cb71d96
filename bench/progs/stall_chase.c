/*
 * stall_chase: does a thread run slower after it has stalled?
 *
 *   stall_chase native ADDED_NS BATCH_NS sleep|spin
 *   stall_chase pair
 *
 * Both chase a random cycle over 64 MiB (one dependent load per step).
 *
 * `native` runs on the host and stalls itself the way libddc stalls a vCPU:
 * ADDED_NS per load is owed, and once BATCH_NS is owed the thread sleeps to
 * an absolute deadline (or spins on the clock) and pays back what it really
 * waited.  It prints ns per load with and without the waits: without them
 * it should equal a run with ADDED_NS = 0.
 *
 * `pair` is for qemu-x86_64 with libddc: it chases two identical buffers at
 * fixed addresses, A at 0x7c0000000 and B at 0x7e0000000 (give the plugin a
 * remote range over B), in alternating rounds, and prints the median of
 * B - A per load, which should equal the added latency.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>

#define SIZE  (64ull << 20)
#define CELLS (SIZE / 64)

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint32_t *random_cycle(void)
{
    uint32_t *next = malloc(CELLS * sizeof(*next));
    uint64_t x = 0x2545F4914F6CDD1Dull;
    for (uint64_t i = 0; i < CELLS; i++)
        next[i] = (uint32_t)i;
    for (uint64_t i = CELLS - 1; i > 0; i--) { /* Sattolo: one cycle */
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        uint64_t j = x % i;
        uint32_t t = next[i]; next[i] = next[j]; next[j] = t;
    }
    return next;
}

static void **link_cycle(char *buf, const uint32_t *next)
{
    for (uint64_t i = 0; i < CELLS; i++)
        *(void **)(buf + i * 64) = buf + (uint64_t)next[i] * 64;
    return (void **)buf;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int native(int64_t added, int64_t batch, int spin)
{
    const long loads = 2000000;
    char *buf = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED)
        return 1;
    madvise(buf, SIZE, MADV_HUGEPAGE);
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    void **p = link_cycle(buf, random_cycle());
    int64_t owed = 0;
    uint64_t waited = 0, t0 = now_ns();
    for (long i = 0; i < loads; i++) {
        p = *p;
        owed += added;
        if (owed >= batch && owed > 0) {
            uint64_t a = now_ns(), end = a + (uint64_t)owed, b;
            if (spin) {
                while ((b = now_ns()) < end) {
                }
            } else {
                struct timespec dl = { (time_t)(end / 1000000000ull), (long)(end % 1000000000ull) };
                clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &dl, NULL);
                b = now_ns();
            }
            owed -= (int64_t)(b - a);
            waited += b - a;
        }
    }
    uint64_t t1 = now_ns();
    printf("added=%lld batch=%lld stall=%s ns_per_load=%.1f without_waits=%.1f end=%p\n", (long long)added,
           (long long)batch, spin ? "spin" : "sleep", (double)(t1 - t0) / loads,
           (double)(t1 - t0 - waited) / loads, (void *)p);
    return 0;
}

static int pair(void)
{
    const long loads = 50000;
    enum { ROUNDS = 21 };
    char *buf[2] = {
        mmap((void *)0x7c0000000ull, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0),
        mmap((void *)0x7e0000000ull, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0),
    };
    if (buf[0] == MAP_FAILED || buf[1] == MAP_FAILED)
        return 1;
    uint32_t *next = random_cycle();
    void **p[2] = { link_cycle(buf[0], next), link_cycle(buf[1], next) };
    double diff[ROUNDS], ns[2] = { 0, 0 };
    for (int r = 0; r < ROUNDS; r++) {
        for (int k = 0; k < 2; k++) {
            int b = r % 2 ? 1 - k : k; /* A B, then B A */
            void **q = p[b];
            uint64_t t0 = now_ns();
            for (long i = 0; i < loads; i++)
                q = *q;
            ns[b] = (double)(now_ns() - t0) / loads;
            p[b] = q;
        }
        diff[r] = ns[1] - ns[0];
    }
    qsort(diff, ROUNDS, sizeof(*diff), cmp_double);
    printf("a_ns_per_load=%.1f diff_ns_median=%.1f end=%p\n", ns[0], diff[ROUNDS / 2], (void *)p[0]);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 5 && !strcmp(argv[1], "native"))
        return native(atoll(argv[2]), atoll(argv[3]), !strcmp(argv[4], "spin"));
    if (argc == 2 && !strcmp(argv[1], "pair"))
        return pair();
    fprintf(stderr, "usage: %s native ADDED_NS BATCH_NS sleep|spin | %s pair\n", argv[0], argv[0]);
    return 2;
}
