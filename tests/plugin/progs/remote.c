/*
 * Touches lines of a buffer at a fixed guest address, on command.
 *
 *   remote BASE SIZE            (hex BASE, bytes SIZE)
 *
 * Maps SIZE bytes at BASE (so the test can put BASE in a plugin range), then
 * reads commands from stdin, one per line:
 *
 *   touch FIRST COUNT STRIDE    read one word at BASE + (FIRST + i) * STRIDE
 *                               for i in [0, COUNT); answer "done NS" with
 *                               the loop's CLOCK_MONOTONIC duration
 *   thread FIRST COUNT STRIDE   the same on a new thread (a new vCPU under
 *                               qemu-x86_64), joined before answering
 *   pair FIRST COUNT STRIDE     two threads at once: one touches FIRST..,
 *                               the other the COUNT lines after those
 *
 * and exits 0 at end of input.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static unsigned long long now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

struct touch {
    char *buf;
    unsigned long first, count, stride, sum;
};

static void *touch(void *arg)
{
    struct touch *t = arg;
    unsigned long sum = 0;

    for (unsigned long i = 0; i < t->count; i++) {
        sum += *(volatile long *)(t->buf + (t->first + i) * t->stride);
    }
    t->sum = sum;
    return NULL;
}

int main(int argc, char **argv)
{
    char line[256], verb[16];

    if (argc != 3) {
        fprintf(stderr, "usage: %s BASE SIZE\n", argv[0]);
        return 2;
    }
    unsigned long base = strtoul(argv[1], NULL, 16);
    size_t size = strtoul(argv[2], NULL, 0);
    char *buf = mmap((void *)base, size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf != (char *)base) {
        fprintf(stderr, "remote: could not map %zu bytes at 0x%lx\n", size, base);
        return 1;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    while (fgets(line, sizeof(line), stdin)) {
        struct touch t = { .sum = 0 }, u;
        pthread_t th, th2;
        if (sscanf(line, "%15s %lu %lu %lu", verb, &t.first, &t.count, &t.stride) != 4 ||
            (strcmp(verb, "touch") && strcmp(verb, "thread") && strcmp(verb, "pair")) ||
            (t.first + t.count * (strcmp(verb, "pair") ? 1 : 2)) * t.stride > size) {
            fprintf(stderr, "remote: bad command: %s", line);
            return 2;
        }
        t.buf = buf;
        unsigned long long t0 = now_ns();
        if (!strcmp(verb, "touch")) {
            touch(&t);
        } else if (!strcmp(verb, "pair")) {
            u = t;
            u.first += t.count;
            if (pthread_create(&th, NULL, touch, &t) || pthread_create(&th2, NULL, touch, &u) ||
                pthread_join(th, NULL) || pthread_join(th2, NULL)) {
                perror("remote: pthread");
                return 1;
            }
            t.sum += u.sum;
        } else if (pthread_create(&th, NULL, touch, &t) || pthread_join(th, NULL)) {
            perror("remote: pthread");
            return 1;
        }
        unsigned long long t1 = now_ns();
        printf("done %llu %lu\n", t1 - t0, t.sum);
    }
    return 0;
}
