/* Shared between bpf/gc.bpf.c and collectors/gc_collector.cpp: GC pause
 * histograms kept in the kernel per (pid, runtime, kind). Plain C, fixed-width
 * types only. */
#ifndef MEMLENS_BPF_GC_H
#define MEMLENS_BPF_GC_H

#ifdef __BPF__
#include "vmlinux.h"
#else
#include <linux/types.h>
#endif

enum gc_runtime {
  GC_RT_JVM = 1,
  GC_RT_NODE = 2,
  GC_RT_PYTHON = 3,
};

/* Kind of collection, per runtime:
 *  JVM:    0 young/minor, 1 full     (hotspot:gc__begin's first argument)
 *  Node:   0 other, 1 scavenge, 2 mark-compact (requested AllocationSpace:
 *          NEW_SPACE asks for a scavenge, OLD_SPACE for a full GC)
 *  Python: the generation collected (0, 1, 2) */
#define GC_MAX_KIND 3

/* Fine pause buckets, upper bounds in ns: 22 per decade from 10 us to 10 s
 * (neighbouring bounds are at most 1.17x apart, so quantiles read from them are
 * within a few percent). The exported Prometheus buckets (0.1 ms .. 10 s,
 * 1-2.5-5 steps) are a subset of these bounds, so they are exact. */
#define GC_STEPS_PER_DECADE 22
#define GC_DECADES 6
#define GC_NBOUNDS (GC_STEPS_PER_DECADE * GC_DECADES + 1)
#define GC_NBUCKETS (GC_NBOUNDS + 1) /* last one: above 10 s */
/* Mantissas of one decade, x100. */
#define GC_MANTISSAS \
  100, 110, 120, 130, 140, 150, 160, 180, 200, 225, 250, 275, 300, 350, 400, 450, 500, 550, 600, 700, \
      800, 900
#define GC_FIRST_BOUND_NS 10000ULL /* 10 us */

/* Window for pause max and GC time share: a ring of slots, each covering
 * slot_ns (a loader tunable), so user space sums the slots still in the
 * window without ever writing to the map. */
#define GC_SLOTS 16

struct gc_key {
  __u32 pid; /* tgid */
  __u16 runtime;
  __u16 kind;
};

struct gc_slot {
  __u64 epoch; /* now / slot_ns when this slot was last (re)started */
  __u64 max_ns;
  __u64 sum_ns;
  __u64 count;
};

struct gc_hist {
  __u64 count;
  __u64 sum_ns;
  __u64 buckets[GC_NBUCKETS];
  struct gc_slot slots[GC_SLOTS];
};

/* One open pause, keyed by thread id (pid_tgid). */
struct gc_open {
  __u64 start_ns;
  __u16 runtime;
  __u16 kind;
  __u32 depth; /* nested entries (V8 CollectGarbage may recurse) */
};

/* V8's own heap figures of one thread's isolate, from uretprobes on
 * Heap::SizeOfObjects() and Heap::CommittedMemory(), which V8's GC tracer
 * calls at the start and end of every collection (what
 * v8.getHeapStatistics() reports as used_heap_size and total_heap_size).
 * Keyed by pid_tgid: each Node worker thread has its own isolate; user
 * space sums the threads of a process. */
struct v8_heap {
  __u64 used;           /* at the end of the last collection */
  __u64 committed;
  __u64 collections;    /* collections that ended with both figures read */
  __u64 last_used;      /* the latest calls, inside the collection still open */
  __u64 last_committed;
};

/* Indexes into the per-CPU error counter map. */
enum gc_err {
  GC_ERR_HIST_FULL = 0, /* no room for a new (pid, kind) histogram */
  GC_ERR_OPEN_FULL = 1, /* no room for an open pause */
  GC_ERR_UNMATCHED = 2, /* an end without a begin in a process started after
                           the probes were attached: a begin was lost */
  GC_ERR_V8_FULL = 3,   /* no room for a thread's V8 heap figures */
  GC_ERR_MID_PAUSE = 4, /* an end without a begin in a process that was
                           mid-pause when the probes were attached */
  GC_ERR_MAX = 5,
};

#endif
