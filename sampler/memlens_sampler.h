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
 * x86-64, a sum may lag by the allocations of the moment, never go back. */
#ifndef MEMLENS_SAMPLER_H
#define MEMLENS_SAMPLER_H

#include <stdint.h>

#define MEMLENS_SAMPLER_MAGIC 0x31736e656c6d656dULL /* "memlens1" */
#define MEMLENS_SAMPLER_VERSION 1
#define MEMLENS_SAMPLER_SLOTS 254
#define MEMLENS_SAMPLER_PAGE_BYTES 8192

struct memlens_sampler_slot {
  uint64_t allocs;      /* calls that returned memory (realloc counts one) */
  uint64_t frees;       /* free of a non-NULL pointer (realloc's old block counts one) */
  uint64_t alloc_bytes; /* bytes asked for */
  uint64_t sampled;     /* allocations fired as otel_memory:alloc */
};

struct memlens_sampler_page {
  uint64_t magic;
  uint32_t version;
  uint32_t slots;          /* MEMLENS_SAMPLER_SLOTS */
  int32_t pid;             /* the process these counts belong to (reset in a forked child) */
  uint32_t enabled;        /* 0: MEMLENS_SAMPLER=0, counting only */
  uint64_t mean_interval;  /* bytes between samples, on average */
  uint64_t dropped;        /* sampled allocations not fired: the table of sampled blocks was full */
  uint64_t unlistened;     /* samples drawn while no one listened (semaphore 0): not fired */
  uint64_t reserved[2];
  struct memlens_sampler_slot slot[MEMLENS_SAMPLER_SLOTS];
};

#ifdef __cplusplus
static_assert(sizeof(memlens_sampler_page) <= MEMLENS_SAMPLER_PAGE_BYTES, "the page holds its slots");
#endif

#endif
