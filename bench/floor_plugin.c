/*
 * The floor for plugin-overhead benchmarks: the least a remote-memory plugin
 * must do.  It registers one callback per guest memory access, resolves the
 * physical address (the virtual one in user mode, where there is none) and
 * checks it against one range.  libddc's overhead is measured against this.
 *
 * Option: range=START:END (hex), default 0x100000000:0x200000000.
 * Built by `make -C qemu_devices` as qemu_devices/build/libfloor.so.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

#define MAX_VCPUS 1024

static uint64_t lo = 0x100000000ULL, hi = 0x200000000ULL;

/* One counter per cache line and vCPU, so vCPU threads never share a line. */
static struct { uint64_t in_range; } __attribute__((aligned(64))) hits[MAX_VCPUS];

static void vcpu_mem(unsigned int idx, qemu_plugin_meminfo_t info, uint64_t vaddr, void *ud)
{
    struct qemu_plugin_hwaddr *hw = qemu_plugin_get_hwaddr(info, vaddr);
    uint64_t a = hw ? qemu_plugin_hwaddr_phys_addr(hw) : vaddr;

    if (a - lo < hi - lo && idx < MAX_VCPUS) {
        hits[idx].in_range++;
    }
}

static void vcpu_tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);

    for (size_t i = 0; i < n; i++) {
        qemu_plugin_register_vcpu_mem_cb(qemu_plugin_tb_get_insn(tb, i), vcpu_mem,
                                         QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_MEM_RW, NULL);
    }
}

static void plugin_exit(qemu_plugin_id_t id, void *p)
{
    uint64_t n = 0;

    for (int i = 0; i < MAX_VCPUS; i++) {
        n += hits[i].in_range;
    }
    /* Printed so the work cannot be optimised away, and to cross-check. */
    fprintf(stderr, "floor: %llu accesses in range\n", (unsigned long long)n);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc,
                                           char **argv)
{
    for (int i = 0; i < argc; i++) {
        char *end;
        if (strncmp(argv[i], "range=", 6) != 0) {
            fprintf(stderr, "floor: unknown option '%s' (valid: range=START:END)\n", argv[i]);
            return -1;
        }
        lo = strtoull(argv[i] + 6, &end, 16);
        if (*end != ':' || (hi = strtoull(end + 1, &end, 16), *end) || lo >= hi) {
            fprintf(stderr, "floor: range '%s' is not START:END in hex\n", argv[i] + 6);
            return -1;
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, vcpu_tb_trans);
    qemu_plugin_register_atexit_cb(id, plugin_exit, NULL);
    return 0;
}
