/* ddc-pages: the guest-physical pages of one NUMA node that processes map.
 *
 *   ddc-pages NODE [-x COMM]...     every such page, once
 *   ddc-pages -1 NODE [-x COMM]...  one page per process: the first of its largest anonymous
 *                                   mapping on the node
 *
 * Prints one hexadecimal guest-physical address per line, each page once: every
 * present page of every process (from /proc/PID/pagemap, which needs root)
 * whose frame lies in one of NODE's memory blocks (/sys/devices/system/node/
 * nodeNODE/memoryM). The Rack MMU injects machine-check errors at these
 * addresses when the memory blade behind NODE fails. Pages that a process named
 * by -x also maps are left out: poisoning a page init maps kills init, and
 * with it the blade.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PAGE 4096ULL
#define PRESENT (1ULL << 63)
#define PFN_MASK ((1ULL << 55) - 1)

static uint64_t block_pages;
static unsigned char *in_node; /* one flag per memory block */
static size_t nblocks;
static unsigned char *seen;    /* one bit per page of the node's blocks, by pfn */
static int one_each;
static uint64_t max_pfn;

static void load_node(int node)
{
    FILE *f = fopen("/sys/devices/system/memory/block_size_bytes", "r");
    unsigned long long bytes = 0;
    if (!f || fscanf(f, "%llx", &bytes) != 1) {
        perror("block_size_bytes");
        exit(1);
    }
    fclose(f);
    block_pages = bytes / PAGE;
    char path[128];
    snprintf(path, sizeof(path), "/sys/devices/system/node/node%d", node);
    DIR *d = opendir(path);
    if (!d) {
        perror(path);
        exit(1);
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        unsigned long m;
        if (sscanf(e->d_name, "memory%lu", &m) != 1)
            continue;
        if (m >= nblocks) {
            size_t n = m + 1;
            in_node = realloc(in_node, n);
            memset(in_node + nblocks, 0, n - nblocks);
            nblocks = n;
        }
        in_node[m] = 1;
    }
    closedir(d);
    max_pfn = nblocks * block_pages;
    seen = calloc(max_pfn / 8 + 1, 1);
    if (!seen) {
        perror("calloc");
        exit(1);
    }
}

static int excluded(const char *pid, int argc, char **argv)
{
    char path[300], comm[64] = "";
    snprintf(path, sizeof(path), "/proc/%s/comm", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    if (fgets(comm, sizeof(comm), f))
        comm[strcspn(comm, "\n")] = 0;
    fclose(f);
    for (int i = 2; i + 1 < argc; i += 2)
        if (!strcmp(argv[i], "-x") && !strcmp(argv[i + 1], comm))
            return 1;
    return 0;
}

/* Mark (and with print, print) the node's present pages of one process. */
static void scan(const char *pid, int print)
{
    char path[300];
    snprintf(path, sizeof(path), "/proc/%s/maps", pid);
    FILE *maps = fopen(path, "r");
    snprintf(path, sizeof(path), "/proc/%s/pagemap", pid);
    int pm = open(path, O_RDONLY);
    if (!maps || pm < 0)
        goto out;
    char line[512];
    /* With -1: the process's largest anonymous mapping on the node is its data
     * (a small one may be a clean, never-written page the kernel just drops). */
    unsigned long long best_size = 0;
    uint64_t best_pfn = 0;
    while (fgets(line, sizeof(line), maps)) {
        unsigned long long lo, hi;
        if (sscanf(line, "%llx-%llx", &lo, &hi) != 2 || strstr(line, "[vsyscall]"))
            continue;
        /* With -1, anonymous memory only: a clean file page is dropped and read
         * again from disk ("recovered"), so poisoning it tells the process nothing. */
        if (one_each && strchr(line, '/'))
            continue;
        static uint64_t chunk[4096];
        size_t have = 0, at = 0;
        for (unsigned long long va = lo; va < hi; va += PAGE, at++) {
            if (at == have) { /* one read per 4096 pages, not one per page */
                size_t want = (size_t)((hi - va) / PAGE);
                if (want > 4096)
                    want = 4096;
                ssize_t got = pread(pm, chunk, want * 8, (off_t)(va / PAGE * 8));
                if (got <= 0)
                    break;
                have = (size_t)got / 8;
                at = 0;
            }
            uint64_t entry = chunk[at];
            if (!(entry & PRESENT))
                continue;
            uint64_t pfn = entry & PFN_MASK;
            if (!pfn || pfn >= max_pfn || !in_node[pfn / block_pages] || (seen[pfn / 8] & (1 << (pfn % 8))))
                continue;
            if (one_each) { /* a candidate: the first such page of this mapping */
                if (hi - lo > best_size) {
                    best_size = hi - lo;
                    best_pfn = pfn;
                }
                break;
            }
            seen[pfn / 8] |= (unsigned char)(1 << (pfn % 8));
            if (print)
                printf("0x%llx\n", (unsigned long long)(pfn * PAGE));
        }
    }
    if (one_each && print && best_pfn) {
        seen[best_pfn / 8] |= (unsigned char)(1 << (best_pfn % 8));
        printf("0x%llx\n", (unsigned long long)(best_pfn * PAGE));
    }
out:
    if (maps)
        fclose(maps);
    if (pm >= 0)
        close(pm);
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "-1")) {
        one_each = 1;
        argv++;
        argc--;
    }
    if (argc < 2 || argc % 2) {
        fprintf(stderr, "usage: ddc-pages [-1] NODE [-x COMM]...\n");
        return 2;
    }
    load_node(atoi(argv[1]));
    pid_t self = getpid();
    /* Two passes: first the excluded processes' pages (marked, not printed), then the rest. */
    for (int pass = 0; pass < 2; pass++) {
        DIR *proc = opendir("/proc");
        if (!proc) {
            perror("/proc");
            return 1;
        }
        struct dirent *e;
        while ((e = readdir(proc))) {
            if (e->d_name[0] < '1' || e->d_name[0] > '9' || atoi(e->d_name) == self)
                continue;
            int ex = !strcmp(e->d_name, "1") || excluded(e->d_name, argc, argv);
            if (ex == (pass == 0))
                scan(e->d_name, pass == 1);
        }
        closedir(proc);
    }
    return 0;
}
