/*
 * Set-associative LRU lookups, inlined into the access path.
 *
 * Policy: write-allocate, non-inclusive/non-exclusive (a miss fills every
 * level it missed in, evictions do not propagate), no write-back traffic.
 * Each set keeps its tags most-recently-used first, so LRU order is the array
 * order: a hit moves the tag to the front, a miss drops the last tag.
 */
#ifndef DDC_CACHE_H
#define DDC_CACHE_H

#include "ddc.h"

static inline uint64_t *set_of(const struct cache *c, uint64_t line)
{
    uint64_t set = c->set_mask ? (line & c->set_mask) : (line % c->sets);
    return c->tags + set * c->ways;
}

/*
 * Look the tag up and update LRU order in one pass; true on a hit.  Walking
 * from the MRU end, each tag moves down one slot until the one we look for
 * (a hit: it lands at the front) or the end (a miss: the LRU tag falls off).
 */
static inline __attribute__((always_inline)) bool lru_walk(uint64_t *t, uint32_t ways, uint64_t tag)
{
    uint64_t prev = t[0];

    if (prev == tag) {
        return true;
    }
    t[0] = tag;
    for (uint32_t i = 1; i < ways; i++) {
        uint64_t cur = t[i];
        t[i] = prev;
        if (cur == tag) {
            return true;
        }
        prev = cur;
    }
    return false;
}

/* The usual associativities get a copy with the way count fixed, which the
 * compiler unrolls. */
static inline __attribute__((always_inline)) bool lru_access(uint64_t *t, uint32_t ways, uint64_t tag)
{
    switch (ways) {
    case 4:
        return lru_walk(t, 4, tag);
    case 8:
        return lru_walk(t, 8, tag);
    case 16:
        return lru_walk(t, 16, tag);
    default:
        return lru_walk(t, ways, tag);
    }
}

static inline bool cache_access_private(struct cache *c, uint64_t line)
{
    return lru_access(set_of(c, line), c->ways, line + 1);
}

/*
 * Shared levels are reached only after every private level missed, so
 * contention is low; a one-byte spinlock per set keeps vCPUs that touch
 * different sets fully independent.
 */
static inline bool cache_access_shared(struct cache *c, uint64_t line)
{
    uint64_t set = c->set_mask ? (line & c->set_mask) : (line % c->sets);
    uint8_t *lock = c->locks + set;
    bool hit;

    /*
     * The lock's atomic exchange was a third of the time of a miss in every
     * level.  With one vCPU nobody else can be in the set.  A second vCPU
     * is created (vcpu_init) by QEMU's main thread before any vCPU runs in
     * system mode, and in user mode by the very thread that then stops in
     * clone(), so no access is in flight when the flag turns on.  (CPU
     * hot-plug under TCG would be the exception; the testbed does not use it.)
     */
    if (!__atomic_load_n(&g.multi_vcpu, __ATOMIC_RELAXED)) {
        return lru_access(c->tags + set * c->ways, c->ways, line + 1);
    }
    while (__atomic_test_and_set(lock, __ATOMIC_ACQUIRE)) {
        while (__atomic_load_n(lock, __ATOMIC_RELAXED)) {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
        }
    }
    hit = lru_access(c->tags + set * c->ways, c->ways, line + 1);
    __atomic_clear(lock, __ATOMIC_RELEASE);
    return hit;
}

#endif
