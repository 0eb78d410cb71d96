/*
 * ddc-calibrate: keep every CPU busy with the kind of work that costs an
 * emulator the most per modelled nanosecond, for paced mode's
 * `dilation: auto` (the orchestrator reads the plugin's counters around it).
 *
 *   ddc-calibrate [-t SECONDS] [-j THREADS]
 *
 * One thread per online CPU (or THREADS), each pinned to its CPU, runs until
 * SECONDS (default 2) have passed, alternating:
 *  - integer work with loads and stores that stay in the L1 (a 4 KiB table
 *    updated by a xorshift generator): instructions and cache hits, which
 *    the model prices at a fraction of a nanosecond while TCG and the plugin
 *    pay several nanoseconds each;
 *  - page faults: a fresh 256 KiB anonymous mapping touched page by page and
 *    unmapped: the kernel's own paths (trap, page allocation, zeroing).
 * Memory that misses the caches is left out on purpose: the model charges it
 * its full latency, so it is the cheapest work to emulate per model
 * nanosecond and would make the host look faster than it is.
 *
 * Prints one line: threads=N seconds=S rounds=R (rounds summed over threads).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define TABLE 512           /* 8-byte words: 4 KiB */
#define MAP_BYTES (256 << 10)

static double seconds = 2;

struct worker {
    pthread_t th;
    int cpu;
    uint64_t rounds, sink;
};

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *work(void *arg)
{
    struct worker *w = arg;
    uint64_t table[TABLE] = { 0 }, x = 88172645463325252ull + (uint64_t)w->cpu;
    long page = sysconf(_SC_PAGESIZE);
    cpu_set_t set;

    CPU_ZERO(&set);
    CPU_SET(w->cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof(set), &set);  /* best effort */
    double end = now_s() + seconds;
    while (now_s() < end) {
        for (int i = 0; i < 20000; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            table[x % TABLE] += x;
            w->sink += table[(x >> 20) % TABLE];
        }
        char *m = mmap(NULL, MAP_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m != MAP_FAILED) {
            for (long off = 0; off < MAP_BYTES; off += page) {
                m[off] = (char)x;
            }
            munmap(m, MAP_BYTES);
        }
        w->rounds++;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int opt, threads = (int)sysconf(_SC_NPROCESSORS_ONLN);

    while ((opt = getopt(argc, argv, "t:j:")) != -1) {
        switch (opt) {
        case 't':
            seconds = atof(optarg);
            break;
        case 'j':
            threads = atoi(optarg);
            break;
        default:
            fprintf(stderr, "usage: %s [-t SECONDS] [-j THREADS]\n", argv[0]);
            return 2;
        }
    }
    if (threads < 1 || threads > 1024 || !(seconds > 0 && seconds <= 3600)) {
        fprintf(stderr, "ddc-calibrate: want 1..1024 threads and 0..3600 seconds\n");
        return 2;
    }
    struct worker *w = calloc((size_t)threads, sizeof(*w));
    uint64_t rounds = 0;
    for (int i = 0; i < threads; i++) {
        w[i].cpu = i;
        if (pthread_create(&w[i].th, NULL, work, &w[i])) {
            fprintf(stderr, "ddc-calibrate: cannot start thread %d\n", i);
            return 1;
        }
    }
    for (int i = 0; i < threads; i++) {
        pthread_join(w[i].th, NULL);
        rounds += w[i].rounds;
    }
    printf("threads=%d seconds=%g rounds=%llu\n", threads, seconds, (unsigned long long)rounds);
    return 0;
}
