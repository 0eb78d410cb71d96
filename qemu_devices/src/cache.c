/* Allocation of cache levels; the lookups are inline in cache.h. */
#include <stdlib.h>
#include <string.h>

#include "ddc.h"

int cache_init(struct cache *c, const struct level_cfg *cfg)
{
    c->set_mask = cfg->set_mask;
    c->sets = cfg->sets;
    c->ways = cfg->ways;
    c->tags = calloc(cfg->sets * cfg->ways, sizeof(uint64_t));
    if (!c->tags) {
        return -1;
    }
    if (cfg->shared) {
        c->locks = calloc(cfg->sets, 1);
        if (!c->locks) {
            free(c->tags);
            c->tags = NULL;
            return -1;
        }
    }
    return 0;
}
