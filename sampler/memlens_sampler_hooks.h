/* For an allocator that libmemlens-sampler.so cannot reach by LD_PRELOAD:
 * one linked into the program statically, as Rust's tikv-jemallocator links
 * jemalloc (under the _rjem_ prefix, never through a dynamic malloc). Link
 * the library (-lmemlens-sampler) and call these from the allocator's
 * wrapper; the library counts, samples and keeps the sites of those blocks
 * as it does for malloc's, in the same page memlensd reads.
 *
 *   memlens_sampler_alloc(p, size)  after an allocation returned p (NULL:
 *                                   failed, ignored); size: bytes asked for
 *   memlens_sampler_free(p)         before p goes back to the allocator
 *
 * A reallocation is a free of the old block (before it) and an allocation
 * of the new one (after it); if it fails, the old block lives on: tell
 * memlens_sampler_alloc(old, old_size) again. The functions are safe from
 * any thread; like malloc, not from a signal handler. */
#ifndef MEMLENS_SAMPLER_HOOKS_H
#define MEMLENS_SAMPLER_HOOKS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

void memlens_sampler_alloc(void* p, size_t size);
void memlens_sampler_free(void* p);

#ifdef __cplusplus
}
#endif

#endif
