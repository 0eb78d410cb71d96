/*
 * A dependent-load chase and a counted compute loop, timed by the guest's own
 * clock: what paced mode must make k x the model's time.
 *
 *   chase BASE SIZE LOADS [THREADS]   3 instructions and one load per step
 *                                     along a cyclic random chain through every
 *                                     64-byte line of SIZE bytes mapped at
 *                                     hex BASE; prints "chase NS" per load
 *                                     (each thread chases its own half of the
 *                                     lines when THREADS is 2)
 *   chase 0 0 ITERS                   a loop of ITERS iterations of 2
 *                                     instructions and no data access;
 *                                     prints "loop NS" per iteration
 *
 * The chain is built before the clock starts, so only the chase is timed.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

#define LINE 64

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

struct job {
    char *start;
    unsigned long loads;
    void *end;
};

static void *chase(void *arg)
{
    struct job *j = arg;
    void *p = j->start;
    unsigned long n = j->loads;

    /* Exactly 3 instructions and one load per iteration. */
    __asm__ volatile("1: mov (%0), %0\n\tdec %1\n\tjnz 1b" : "+r"(p), "+r"(n) : : "memory");
    j->end = p;
    return NULL;
}

/* One cycle through lines [first, first + n) in a random order. */
static void link_lines(char *buf, unsigned long first, unsigned long n, unsigned seed)
{
    unsigned long *order = malloc(n * sizeof(*order));

    for (unsigned long i = 0; i < n; i++) {
        order[i] = first + i;
    }
    srand(seed);
    for (unsigned long i = n - 1; i > 0; i--) {
        unsigned long k = (unsigned long)rand() % (i + 1), t = order[i];
        order[i] = order[k];
        order[k] = t;
    }
    for (unsigned long i = 0; i < n; i++) {
        *(void **)(buf + order[i] * LINE) = buf + order[(i + 1) % n] * LINE;
    }
    free(order);
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s BASE SIZE LOADS [THREADS]\n", argv[0]);
        return 2;
    }
    unsigned long base = strtoul(argv[1], NULL, 16), size = strtoul(argv[2], NULL, 0);
    unsigned long loads = strtoul(argv[3], NULL, 0);
    int threads = argc > 4 ? atoi(argv[4]) : 1;
    uint64_t t0, t1;

    if (size == 0) {
        unsigned long n = loads;
        t0 = now_ns();
        /* Exactly 2 instructions and no data access per iteration. */
        __asm__ volatile("1: dec %0\n\tjnz 1b" : "+r"(n));
        t1 = now_ns();
        printf("loop %.3f\n", (double)(t1 - t0) / (double)loads);
        return 0;
    }
    char *buf = mmap((void *)base, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
                     -1, 0);
    if (buf != (char *)base || threads < 1 || threads > 2) {
        fprintf(stderr, "chase: cannot map %lu bytes at 0x%lx (or bad THREADS)\n", size, base);
        return 1;
    }
    unsigned long lines = size / LINE, per = lines / (unsigned long)threads;
    struct job jobs[2];
    pthread_t th[2];
    for (int i = 0; i < threads; i++) {
        link_lines(buf, per * (unsigned long)i, per, 1234u + (unsigned)i);
        jobs[i] = (struct job){ buf + per * (unsigned long)i * LINE, loads, NULL };
    }
    t0 = now_ns();
    for (int i = 0; i < threads; i++) {
        pthread_create(&th[i], NULL, chase, &jobs[i]);
    }
    for (int i = 0; i < threads; i++) {
        pthread_join(th[i], NULL);
    }
    t1 = now_ns();
    printf("chase %.3f\n", (double)(t1 - t0) / (double)loads);
    return 0;
}
