/*
 * Sleeps for MS milliseconds in one nanosleep, then exits: a vCPU that is idle
 * (in user mode, blocked in a syscall) for a known time.
 *
 *   sleeper MS
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s MS\n", argv[0]);
        return 2;
    }
    long ms = atol(argv[1]);
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
    return 0;
}
