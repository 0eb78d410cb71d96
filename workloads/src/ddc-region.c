/* ddc-region: read and write a Rack MMU memory region from inside a blade.
 *
 * A region is a memory blade's shared memory, hot-plugged into the blade as an
 * ivshmem PCI device; the orchestrator names it /run/ddc/regions/<name> (a link
 * to the device's BAR 2 resource file). This tool maps it and moves a byte
 * stream in or out, so that shell tests and programs need no PCI knowledge:
 *
 *   ddc-region put NAME|PATH < data     store data: an 8-byte length, then the bytes
 *   ddc-region get NAME|PATH > data     the bytes last stored
 *   ddc-region size NAME|PATH           the region's size in bytes
 *   ddc-region hold NAME|PATH           keep it mapped until killed (a user the Rack MMU must respect)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define HEADER 8

static void die(const char *what)
{
    fprintf(stderr, "ddc-region: %s: %s\n", what, strerror(errno));
    exit(1);
}

static int usage(void)
{
    fprintf(stderr, "usage: ddc-region put|get|size|hold NAME|PATH\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc != 3)
        return usage();
    char path[4096];
    if (strchr(argv[2], '/'))
        snprintf(path, sizeof(path), "%s", argv[2]);
    else
        snprintf(path, sizeof(path), "/run/ddc/regions/%s", argv[2]);

    int fd = open(path, O_RDWR | O_SYNC);
    if (fd < 0)
        die(path);
    struct stat st;
    if (fstat(fd, &st) < 0)
        die("fstat");
    size_t size = (size_t)st.st_size;
    if (!strcmp(argv[1], "size")) {
        printf("%zu\n", size);
        return 0;
    }
    if (size <= HEADER) {
        fprintf(stderr, "ddc-region: %s: %zu bytes is too small\n", path, size);
        return 1;
    }
    unsigned char *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (mem == MAP_FAILED)
        die("mmap");

    if (!strcmp(argv[1], "hold")) {
        printf("%d\n", (int)getpid());
        fflush(stdout);
        for (;;)
            pause();
    }
    if (!strcmp(argv[1], "put")) {
        uint64_t n = 0;
        for (;;) {
            if (HEADER + n == size) {
                char extra;
                if (read(0, &extra, 1) > 0) {
                    fprintf(stderr, "ddc-region: input larger than the region (%zu bytes)\n", size - HEADER);
                    return 1;
                }
                break;
            }
            ssize_t got = read(0, mem + HEADER + n, size - HEADER - n);
            if (got < 0)
                die("read");
            if (got == 0)
                break;
            n += (uint64_t)got;
        }
        memcpy(mem, &n, HEADER);
        if (msync(mem, size, MS_SYNC) < 0 && errno != EINVAL)
            die("msync");
        printf("%llu\n", (unsigned long long)n);
        return 0;
    }
    if (!strcmp(argv[1], "get")) {
        uint64_t n;
        memcpy(&n, mem, HEADER);
        if (n > size - HEADER) {
            fprintf(stderr, "ddc-region: no data stored (length field %llu)\n", (unsigned long long)n);
            return 1;
        }
        for (uint64_t done = 0; done < n;) {
            ssize_t put = write(1, mem + HEADER + done, n - done);
            if (put < 0)
                die("write");
            done += (uint64_t)put;
        }
        return 0;
    }
    return usage();
}
