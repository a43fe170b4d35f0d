/* The page libmemlens-sampler.so keeps in its own process and memlensd reads
 * from outside (process_vm_readv on the exported symbol
 * `memlens_sampler_page`): exact allocation counts, per thread, with no
 * trap. Plain C, fixed-width types: shared by the library and memlensd.
 *
 * Each slot is an accumulator owned by one thread at a time (its only
 * writer, plain stores); a thread that exits gives its slot back with its
 * counts in it, and the next thread to take the slot adds to them, so the
 * sum over slots only grows. Threads beyond the slots share slot 0 with
 * atomic adds. A reader sums every slot: each 8-byte field is read whole on
 * x86-64, a sum may lag by the allocations of the moment, never go back.
 *
 * The page also says where the process keeps its sampled call sites (a
 * table memlensd reads the same way, every few seconds, for heap profiles):
 * a sample costs the process a walk of its own frame pointers and a few
 * stores, and no kernel entry. */
#ifndef MEMLENS_SAMPLER_H
#define MEMLENS_SAMPLER_H

#include <stdint.h>

#define MEMLENS_SAMPLER_MAGIC 0x31736e656c6d656dULL /* "memlens1" */
#define MEMLENS_SAMPLER_VERSION 2
#define MEMLENS_SAMPLER_SLOTS 254
#define MEMLENS_SAMPLER_PAGE_BYTES 8192
#define MEMLENS_SAMPLER_DEPTH 64       /* return addresses kept per site */
#define MEMLENS_SAMPLER_MAX_SITES 4096 /* sites a process can keep (MEMLENS_SAMPLER_SITES lowers it) */

struct memlens_sampler_slot {
  uint64_t allocs;      /* calls that returned memory (realloc counts one) */
  uint64_t frees;       /* free of a non-NULL pointer (realloc's old block counts one) */
  uint64_t alloc_bytes; /* bytes asked for */
  uint64_t sampled;     /* sampled allocations kept in the site table */
};

/* One call stack that allocated sampled blocks: what its samples stand for,
 * allocated in all and still live. Sites are appended, never moved or
 * removed (until a fork's child starts its books over); one is complete
 * before `sites_count` counts it, and its stack never changes after. The
 * figures change under the sampler's lock, one aligned 8-byte store each. */
struct memlens_sampler_site {
  uint64_t alloc_space;   /* bytes the samples stand for (their weights) */
  uint64_t alloc_objects; /* allocations they stand for, x1000 (weight / size) */
  int64_t inuse_space;    /* the same, of the blocks not freed yet */
  int64_t inuse_objects;  /* x1000 */
  uint64_t samples;
  uint64_t hash;          /* of the stack */
  uint32_t depth;         /* return addresses in pc */
  uint32_t pad;
  uint64_t pc[MEMLENS_SAMPLER_DEPTH]; /* leaf first, walked by frame pointers */
};

struct memlens_sampler_page {
  uint64_t magic;
  uint32_t version;
  uint32_t slots;          /* MEMLENS_SAMPLER_SLOTS */
  int32_t pid;             /* the process these counts belong to (reset in a forked child) */
  uint32_t enabled;        /* 0: MEMLENS_SAMPLER=0, counting only */
  uint64_t mean_interval;  /* bytes between samples, on average */
  uint64_t dropped;        /* sampled allocations not kept: the table of sampled blocks or of sites was full */
  uint64_t fired;          /* of the kept, those also fired as otel_memory:alloc (a consumer was attached) */
  uint64_t sites_addr;     /* where the sites are (struct memlens_sampler_site[sites_max]) */
  uint32_t sites_count;    /* sites filled, from the first */
  uint32_t sites_max;
  struct memlens_sampler_slot slot[MEMLENS_SAMPLER_SLOTS];
};

#ifdef __cplusplus
static_assert(sizeof(memlens_sampler_page) <= MEMLENS_SAMPLER_PAGE_BYTES, "the page holds its slots");
#endif

#endif
