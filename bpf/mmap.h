/* Shared between bpf/mmap.bpf.c and collectors/mmap_collector.cpp: the
 * large-chunk path (mmap, munmap, mremap, brk, mprotect) per target, measured
 * as changes of the kernel's own count of private writable pages
 * (mm->data_vm, VmData in /proc/PID/status). Plain C, fixed-width types. */
#ifndef MEMLENS_BPF_MMAP_H
#define MEMLENS_BPF_MMAP_H

#ifdef __BPF__
#include "vmlinux.h"
#else
#include <linux/types.h>
#endif

enum mmap_call {
  MMAP_CALL_MMAP = 0,
  MMAP_CALL_MUNMAP = 1,
  MMAP_CALL_MREMAP = 2,
  MMAP_CALL_BRK = 3,
  MMAP_CALL_MPROTECT = 4,
  MMAP_CALLS = 5,
};

/* last_data_pages when no baseline is known (user space could not read
 * VmData when it added the target): the next traced call takes one and is
 * charged nothing. */
#define MMAP_LAST_UNSET (~0ULL)

/* One per target (key: tgid); not per-CPU: a target's threads share it and
 * every field is changed atomically. Pages, not bytes. */
struct mmap_stats {
  __u64 last_data_pages;         /* data_vm at the end of the latest traced call */
  __u64 calls[MMAP_CALLS];       /* successful calls (brk: every call) */
  __u64 grown_pages[MMAP_CALLS]; /* data_vm increases over the call */
  __u64 shrunk_pages[MMAP_CALLS];/* data_vm decreases over the call */
};

/* Why an event could not be recorded (per-CPU counters in mmap_drops). */
enum mmap_drop {
  MMAP_DROP_READ = 0, /* reading task->mm->data_vm failed */
  MMAP_DROP_REASONS = 1,
};

#endif /* MEMLENS_BPF_MMAP_H */
