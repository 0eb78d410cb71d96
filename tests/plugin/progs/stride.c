/*
 * Strided reads over a working set: stride WS_BYTES STRIDE ACCESSES
 *
 * Reads one word every STRIDE bytes of a WS_BYTES buffer, cycling until
 * ACCESSES loads have been made.  The buffer comes straight from mmap (zero
 * pages, never written) so the only traffic the plugin sees is the sweep,
 * plus the C runtime's start-up.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s WS_BYTES STRIDE ACCESSES\n", argv[0]);
        return 2;
    }
    size_t ws = strtoul(argv[1], NULL, 0), stride = strtoul(argv[2], NULL, 0);
    unsigned long n = strtoul(argv[3], NULL, 0);
    char *buf = mmap(NULL, ws, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned long sum = 0;

    if (buf == MAP_FAILED || stride == 0 || stride > ws) {
        perror("stride: mmap");
        return 1;
    }
    for (;;) {
        for (size_t off = 0; off + sizeof(long) <= ws; off += stride) {
            sum += *(volatile long *)(buf + off);
            if (--n == 0) {
                printf("%lu\n", sum);
                return 0;
            }
        }
    }
}
