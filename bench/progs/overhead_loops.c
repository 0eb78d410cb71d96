/*
 * Guest workloads for bench/plugin_overhead.py (static, run under qemu-x86_64):
 *
 *   overhead_loops chase  N   N dependent loads chasing a random cycle over
 *                             256 KiB, one line per step (misses a 32 KiB
 *                             L1, hits a 1 MiB L2; small enough to stay in
 *                             the host's L2, so the host's own memory
 *                             latency does not hide the plugin's cost)
 *   overhead_loops stream N   N loads, one every 16 bytes, cycling over 32 MiB
 *   overhead_loops store  N   N 8-byte stores cycling over 256 KiB
 *
 *   overhead_loops all SPEC...  run each SPEC in turn, timed by the guest
 *                             (CLOCK_MONOTONIC), and print "overhead_loops:
 *                             NAME SECONDS" for each.  SPEC is WORKLOAD=N
 *                             for the loops above, or NAME=PROGRAM,ARG,...
 *                             for another program, started and waited for
 *                             (its whole run is timed; a failure prints
 *                             "overhead_loops: NAME failed"). Run as PID 1
 *                             (the /init of bench/plugin_overhead.py
 *                             --system's initramfs) it then powers the
 *                             machine off
 *
 * Prints a checksum so the loops cannot be optimised away.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/reboot.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LINE 64

static void *map(size_t n)
{
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

    if (p == MAP_FAILED) {
        perror("overhead_loops: mmap");
        exit(1);
    }
    return p;
}

static unsigned long chase(unsigned long n)
{
    size_t lines = (256u << 10) / LINE;
    char *buf = map(lines * LINE);
    size_t *order = malloc(lines * sizeof(*order));
    unsigned long seed = 12345;
    void **p;

    /* a random single cycle through every line (Sattolo's shuffle) */
    for (size_t i = 0; i < lines; i++) {
        order[i] = i;
    }
    for (size_t i = lines - 1; i > 0; i--) {
        size_t j, t;
        seed = seed * 6364136223846793005UL + 1442695040888963407UL;
        j = (seed >> 33) % i;
        t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    for (size_t i = 0; i < lines; i++) {
        *(void **)(buf + order[i] * LINE) = buf + order[(i + 1) % lines] * LINE;
    }
    p = (void **)buf;
    while (n--) {
        p = *p;
    }
    return (unsigned long)((char *)p - buf);
}

static unsigned long stream(unsigned long n)
{
    size_t size = 32u << 20;
    const char *buf = map(size);
    unsigned long sum = 0;

    for (;;) {
        for (size_t off = 0; off < size; off += 16) {
            sum += *(const volatile long *)(buf + off);
            if (--n == 0) {
                return sum;
            }
        }
    }
}

static unsigned long store(unsigned long n)
{
    size_t words = (256u << 10) / sizeof(long);
    volatile long *buf = map(words * sizeof(long));

    for (unsigned long i = 0;; i++) {
        for (size_t w = 0; w < words; w++) {
            buf[w] = (long)(i + w);
            if (--n == 0) {
                return (unsigned long)buf[0];
            }
        }
    }
}

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* NAME=PROGRAM,ARG,...: run it with its output on ours; 0 if it exited 0. */
static int spawn(char *spec)
{
    char *argv[64];
    int argc = 0, status;
    pid_t pid;

    for (char *tok = strtok(spec, ","); tok && argc < 63; tok = strtok(NULL, ",")) {
        argv[argc++] = tok;
    }
    argv[argc] = NULL;
    if (!argc) {
        return -1;
    }
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        /* the initramfs keeps a program's libraries in /lib */
        setenv("LD_LIBRARY_PATH", "/lib", 0);
        execv(argv[0], argv);
        perror(argv[0]);
        _exit(127);
    }
    if (pid < 0 || waitpid(pid, &status, 0) != pid) {
        return -1;
    }
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

static int all(int n, char **specs)
{
    static const char *const names[] = { "chase", "stream", "store" };
    static unsigned long (*const fns[])(unsigned long) = { chase, stream, store };
    int rc = 0;

    for (int i = 0; i < n; i++) {
        char *name = specs[i], *arg = strchr(name, '=');
        double t0 = now_s();
        int k;

        if (!arg) {
            fprintf(stderr, "overhead_loops: %s: want NAME=N or NAME=PROGRAM,ARG,...\n", name);
            rc = 2;
            continue;
        }
        *arg++ = '\0';
        for (k = 0; k < 3 && strcmp(name, names[k]); k++) {
        }
        if (k < 3) {
            unsigned long sum = fns[k](strtoul(arg, NULL, 0));
            printf("overhead_loops: %s %.6f %lu\n", name, now_s() - t0, sum);
        } else if (spawn(arg) == 0) {
            printf("overhead_loops: %s %.6f\n", name, now_s() - t0);
        } else {
            printf("overhead_loops: %s failed\n", name);
            rc = 1;
        }
        fflush(stdout);
    }
    if (getpid() == 1) {
        reboot(RB_POWER_OFF);
    }
    return rc;
}

int main(int argc, char **argv)
{
    unsigned long n;

    if (argc >= 2 && !strcmp(argv[1], "all")) {
        return all(argc - 2, argv + 2);
    }

    if (argc != 3 || !(n = strtoul(argv[2], NULL, 0))) {
        fprintf(stderr, "usage: %s chase|stream|store N\n", argv[0]);
        return 2;
    }
    if (!strcmp(argv[1], "chase")) {
        printf("%lu\n", chase(n));
    } else if (!strcmp(argv[1], "stream")) {
        printf("%lu\n", stream(n));
    } else if (!strcmp(argv[1], "store")) {
        printf("%lu\n", store(n));
    } else {
        fprintf(stderr, "overhead_loops: unknown workload %s\n", argv[1]);
        return 2;
    }
    return 0;
}
