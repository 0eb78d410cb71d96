/*
 * ddc-stream: multi-threaded streaming bandwidth, in GB/s (10^9 bytes/s).
 *
 *   ddc-stream [-t THREADS] [-s SIZE] [-d SECONDS] [-m read|write|copy|lines]
 *
 * Each thread owns SIZE/THREADS bytes (default 256M in all) and sweeps it in
 * 8-byte words until the time is up (default 3 s): `read` sums it, `write`
 * stores it, `copy` copies one half onto the other.  `lines` reads one word
 * of each 64-byte line and counts the whole line: what a memory link carries
 * is lines, so this measures the link with an eighth of the loads (under
 * emulation each load costs far more than on hardware).  Placement is left to the
 * caller (numactl). Prints per-thread lines and one total:
 *
 *   threads=2 mode=read bytes=... seconds=3.00 gbps=1.02
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

enum mode { READ, WRITE, COPY, LINES };

struct worker {
    pthread_t thread;
    uint64_t *buf;
    size_t words;
    double seconds;
    enum mode mode;
    uint64_t bytes;
    double elapsed;
    uint64_t sink;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *run(void *arg)
{
    struct worker *w = arg;
    uint64_t sum = 0, bytes = 0;
    size_t half = w->words / 2;
    double start = now_s(), t;
    do {
        switch (w->mode) {
        case READ:
            for (size_t i = 0; i < w->words; i++)
                sum += w->buf[i];
            bytes += w->words * 8;
            break;
        case WRITE:
            for (size_t i = 0; i < w->words; i++)
                w->buf[i] = i;
            bytes += w->words * 8;
            break;
        case COPY:
            memcpy(w->buf, w->buf + half, half * 8);
            bytes += half * 16;
            break;
        case LINES:
            for (size_t i = 0; i < w->words; i += 8)
                sum += w->buf[i];
            bytes += w->words / 8 * 64;
            break;
        }
        t = now_s();
    } while (t - start < w->seconds);
    w->bytes = bytes;
    w->elapsed = t - start;
    w->sink = sum;
    return NULL;
}

static size_t parse_size(const char *s)
{
    char *end;
    double v = strtod(s, &end);
    if (*end == 'K' || *end == 'k') v *= 1024;
    else if (*end == 'M' || *end == 'm') v *= 1024 * 1024;
    else if (*end == 'G' || *end == 'g') v *= 1024.0 * 1024 * 1024;
    else if (*end) { fprintf(stderr, "ddc-stream: bad size '%s'\n", s); exit(2); }
    return (size_t)v;
}

int main(int argc, char **argv)
{
    int threads = 1, opt;
    size_t size = 256u << 20;
    double seconds = 3;
    enum mode mode = READ;

    while ((opt = getopt(argc, argv, "t:s:d:m:")) != -1) {
        switch (opt) {
        case 't': threads = atoi(optarg); break;
        case 's': size = parse_size(optarg); break;
        case 'd': seconds = atof(optarg); break;
        case 'm':
            if (!strcmp(optarg, "read")) mode = READ;
            else if (!strcmp(optarg, "write")) mode = WRITE;
            else if (!strcmp(optarg, "copy")) mode = COPY;
            else if (!strcmp(optarg, "lines")) mode = LINES;
            else { fprintf(stderr, "ddc-stream: -m read|write|copy|lines\n"); return 2; }
            break;
        default:
            fprintf(stderr, "usage: %s [-t THREADS] [-s SIZE] [-d SECONDS] [-m read|write|copy|lines]\n", argv[0]);
            return 2;
        }
    }
    if (threads < 1 || threads > 256 || size / threads < 4096 || seconds <= 0) {
        fprintf(stderr, "ddc-stream: need 1..256 threads, at least 4K per thread, SECONDS > 0\n");
        return 2;
    }
    struct worker *w = calloc(threads, sizeof(*w));
    size_t per = size / threads / 64 * 8; /* whole lines */
    for (int i = 0; i < threads; i++) {
        w[i].buf = mmap(NULL, per * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (w[i].buf == MAP_FAILED) { perror("ddc-stream: mmap"); return 1; }
        memset(w[i].buf, 1, per * 8); /* fault every page in before timing */
        w[i].words = per;
        w[i].seconds = seconds;
        w[i].mode = mode;
    }
    for (int i = 0; i < threads; i++)
        pthread_create(&w[i].thread, NULL, run, &w[i]);
    uint64_t bytes = 0;
    double longest = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(w[i].thread, NULL);
        printf("thread=%d bytes=%llu seconds=%.3f gbps=%.3f\n", i, (unsigned long long)w[i].bytes,
               w[i].elapsed, w[i].bytes / w[i].elapsed / 1e9);
        bytes += w[i].bytes;
        if (w[i].elapsed > longest) longest = w[i].elapsed;
    }
    static const char *names[] = {"read", "write", "copy", "lines"};
    printf("threads=%d mode=%s bytes=%llu seconds=%.3f gbps=%.3f\n", threads, names[mode],
           (unsigned long long)bytes, longest, bytes / longest / 1e9);
    return 0;
}
