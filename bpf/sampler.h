/* Shared between bpf/sampler.bpf.c and collectors/sampler_collector.cpp:
 * OpenTelemetry's memory USDT contract (otel_memory:alloc(ptr, size,
 * weight), otel_memory:free(ptr)) folded in the kernel into per (pid, stack)
 * profile sites. Plain C, fixed-width types only. */
#ifndef MEMLENS_BPF_SAMPLER_H
#define MEMLENS_BPF_SAMPLER_H

#ifdef __BPF__
#include "vmlinux.h"
#else
#include <linux/types.h>
#endif

#define SAMPLER_STACK_DEPTH 127

/* A sampled block not yet freed. */
struct sampled_key {
  __u32 pid;
  __u32 pad;
  __u64 ptr;
};
struct sampled_val {
  __u64 space;    /* bytes it stands for (the weight) */
  __u64 objects;  /* allocations it stands for, x1000 (weight / size) */
  __s64 stack_id; /* <0: no stack */
};

/* One profile site: what was allocated there and what of it lives. */
struct site_key {
  __u32 pid;
  __s32 stack_id; /* <0: the stack was not captured */
};
struct site_val {
  __u64 alloc_space;
  __u64 alloc_objects;  /* x1000 */
  __s64 inuse_space;    /* signed: a free may land before its alloc is folded */
  __s64 inuse_objects;  /* x1000 */
  __u64 samples;
};

enum sampler_drop {
  SAMPLER_DROP_STACK = 0,        /* stack map full or walk failed */
  SAMPLER_DROP_SAMPLED_FULL = 1, /* the sampled-block map is full: its free cannot be matched */
  SAMPLER_DROP_SITES_FULL = 2,   /* the site map is full */
  SAMPLER_FREE_UNKNOWN = 3,      /* a free for a block not seen sampled (fired before we attached) */
  SAMPLER_DROP_MAX = 4,
};

#endif
