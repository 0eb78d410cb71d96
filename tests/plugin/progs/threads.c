/*
 * threads WS_BYTES STRIDE: the main thread reads one word every STRIDE bytes
 * of a WS_BYTES buffer, then a second thread (a second vCPU under
 * qemu-x86_64) does the same pass.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

static char *buf;
static size_t ws, stride;
static unsigned long sums[2];

static void *sweep(void *arg)
{
    unsigned long *sum = arg;

    for (size_t off = 0; off + sizeof(long) <= ws; off += stride) {
        *sum += *(volatile long *)(buf + off);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    pthread_t t;

    if (argc != 3) {
        fprintf(stderr, "usage: %s WS_BYTES STRIDE\n", argv[0]);
        return 2;
    }
    ws = strtoul(argv[1], NULL, 0);
    stride = strtoul(argv[2], NULL, 0);
    buf = mmap(NULL, ws, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED || stride == 0) {
        perror("threads: mmap");
        return 1;
    }
    sweep(&sums[0]);
    if (pthread_create(&t, NULL, sweep, &sums[1]) || pthread_join(t, NULL)) {
        perror("threads: pthread");
        return 1;
    }
    printf("%lu\n", sums[0] + sums[1]);
    return 0;
}
