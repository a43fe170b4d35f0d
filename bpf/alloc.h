/* Shared between bpf/alloc.bpf.c and collectors/alloc_collector.cpp:
 * per-target allocation counters kept in the kernel, the address map used
 * for leak sites and allocators without a size header, and the exec-hold
 * handshake. Plain C, fixed-width types only. */
#ifndef MEMLENS_BPF_ALLOC_H
#define MEMLENS_BPF_ALLOC_H

#ifdef __BPF__
#include "vmlinux.h"
#else
#include <linux/types.h>
#endif

/* Size histogram: bucket i counts blocks of at most 16 << i bytes, the last
 * bucket everything larger (16 B .. 128 MiB, then +Inf). */
#define ALLOC_HIST_BUCKETS 25

/* Per target and CPU, in a per-CPU array indexed by the target's slot (the
 * slot rides in every probe's attach cookie, so the hot path needs no hash
 * lookup); user space sums the CPUs. Sizes are glibc chunk
 * bytes (header included, what the block takes from the heap) where the
 * allocator has a size header, else the requested bytes. */
struct alloc_stats {
  __u64 alloc_bytes;
  __u64 free_bytes;
  __u64 allocs;
  __u64 frees;
  __u64 mmap_alloc_bytes; /* glibc chunks served by mmap (not in the arenas) */
  __u64 mmap_free_bytes;
  __u64 unknown_frees;    /* address mode: blocks from before attach (ignored) */
  __u64 drops;            /* address map full, header unreadable, stash full */
  __u64 inherited_bytes;  /* live bytes copied from the parent at fork */
  __u64 inherited_mmap_bytes;
  __u64 hist[ALLOC_HIST_BUCKETS];
};

/* How sizes are learnt (rodata-free: chosen per program attached). */
enum alloc_size_source {
  ALLOC_SIZE_HEADER = 0,  /* glibc: read the chunk header at ptr - 8 */
  ALLOC_SIZE_REQUEST = 1, /* any allocator: the size asked for */
};

/* Per-target settings (by tgid) written by user space when the target is
 * added; read by the fork hold only (the probes carry them in the cookie). */
struct alloc_target_cfg {
  __u32 size_source;   /* enum alloc_size_source */
  __u32 track_addrs;   /* keep ptr -> size (and stack) for leak sites */
  __u32 capture_stacks;
  __u32 slot;          /* index into stats */
};

/* Address map key/value (address mode). */
struct alloc_addr_key {
  __u32 pid;
  __u32 pad;
  __u64 ptr;
};

struct alloc_addr_val {
  __u64 size;
  __s64 stack_id; /* < 0: none */
};

/* Per-thread stash between an entry probe and its return probe. */
struct alloc_stash {
  __u64 size;    /* requested size */
  __u64 old_ptr; /* realloc: the block being resized */
  __u64 memptr;  /* posix_memalign: where the result is stored */
  __u64 old_size;
  __u32 old_mmapped;
  __u32 kind;
};

/* Which function a multi-uprobe hit is in (its attach cookie). */
enum alloc_fn {
  FN_MALLOC = 1,   /* malloc, valloc, pvalloc: (size) */
  FN_CALLOC = 2,   /* (nmemb, size) */
  FN_MEMALIGN = 3, /* memalign, aligned_alloc: (align, size) */
  FN_POSIX_MEMALIGN = 4,
  FN_REALLOC = 5,
  FN_FREE = 6,
  /* Or-ed into a return probe's cookie when no entry probe stashes a request
   * (glibc header mode). */
  FN_HEADER_ONLY = 0x100,
};

/* The rest of a multi-uprobe cookie: the target's settings, fixed for the
 * life of its links, so the hot path needs no per-target config lookup. */
#define CK_FN_MASK 0xffULL
#define CK_VALID 0x1000ULL   /* the bits below are set */
#define CK_HEADER 0x2000ULL  /* ALLOC_SIZE_HEADER */
#define CK_TRACK 0x4000ULL   /* track_addrs */
#define CK_STACKS 0x8000ULL  /* capture_stacks */
#define CK_DUTY 0x10000ULL   /* duty mode: count only while slot_on[slot] */
#define CK_SLOT_SHIFT 32     /* bits 32..63: the target's stats slot */

enum alloc_stash_kind { STASH_MALLOC = 1, STASH_REALLOC = 2, STASH_MEMALIGN = 3 };

/* Exec hold: a process whose new comm is in hold_comms is stopped at exec
 * (SIGSTOP from BPF) until memlensd has attached its probes; a slot in
 * hold_slots records it so a watchdog can release it after a bound even if
 * memlensd dies. The slot array is memory-mapped by user space: memlensd and
 * the watchdog release a process by compare-and-swap of its pid to 0, so
 * exactly one of them resumes it and memlensd knows whether its probes were
 * in place first. */
#define ALLOC_HOLD_SLOTS 64
#define ALLOC_COMM_LEN 16

struct hold_slot {
  __u64 since_ns; /* bpf_ktime_get_ns() when stopped */
  __u64 pid;      /* 0: free; 64 bits for the BPF compare-and-swap */
};

struct hold_event {
  __u32 pid;
  __u32 entry;  /* value stored in hold_comms for this comm: the stable id
                   user space gave the config entry (never an index) */
  char comm[ALLOC_COMM_LEN];
  __u32 forked; /* 1: held at fork (the allocator is mapped already) */
  __u32 slot;   /* forked: the stats slot the kernel gave the child */
};

/* Global drop counters (per-CPU array). */
enum alloc_drop_reason {
  DROP_ADDR_MAP_FULL = 0,
  DROP_HEADER_READ = 1,
  DROP_STASH = 2,
  DROP_RINGBUF = 3,
  DROP_HOLD_SLOT = 4,
  DROP_STACK = 5,
  DROP_NO_SLOT = 6, /* more traced targets than stats slots */
  DROP_REASONS = 7,
};

/* Returns the histogram bucket of a block size: smallest i with
 * size <= 16 << i, capped at the last bucket. */
static inline __u32 alloc_hist_bucket(__u64 size) {
  /* ceil(log2(size)) - 4 by halving steps (no loop: this runs on every
   * allocation), clamped to [0, ALLOC_HIST_BUCKETS - 1]. */
  if (size <= 16) return 0;
  __u64 v = (size - 1) >> 4; /* bucket = bit length of v */
  __u32 b = 0;
  if (v >> 32) { v >>= 32; b += 32; }
  if (v >> 16) { v >>= 16; b += 16; }
  if (v >> 8) { v >>= 8; b += 8; }
  if (v >> 4) { v >>= 4; b += 4; }
  if (v >> 2) { v >>= 2; b += 2; }
  if (v >> 1) { v >>= 1; b += 1; }
  b += (__u32)v;
  return b < ALLOC_HIST_BUCKETS - 1 ? b : ALLOC_HIST_BUCKETS - 1;
}

#endif /* MEMLENS_BPF_ALLOC_H */
