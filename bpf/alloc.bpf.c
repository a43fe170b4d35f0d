// SPDX-License-Identifier: GPL-2.0
/* Allocation tracing. Every program here is attached per target pid by user
 * space (never for all pids), so a process that is not a target pays nothing.
 * Counters are per target and per CPU; user space reads them once a tick.
 *
 * Two ways to learn a block's size:
 *  - header (glibc): the chunk size sits in the 8 bytes before the pointer
 *    (low 3 bits are flags, bit 1 = mmapped). free reads it at entry, malloc
 *    at return, so both sides see the same number and the live heap is exact
 *    whatever bin or mmap path glibc took.
 *  - address (any allocator, or leak sites): the return probe stores
 *    ptr -> size in a bounded hash map, free looks it up. */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "alloc.h"

char LICENSE[] SEC("license") = "GPL";

#define SIGSTOP 19

extern int bpf_send_signal_task(struct task_struct* task, int sig, enum pid_type type, __u64 value) __ksym;

/* Set by the loader before load. */
const volatile __u32 hold_enabled = 0;

struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
  __uint(max_entries, 1024); /* resized from config.bpf.max_targets */
  __type(key, __u32);
  __type(value, struct alloc_stats);
} stats SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 1024);
  __type(key, __u32);
  __type(value, struct alloc_target_cfg);
} target_cfg SEC(".maps");

/* Not preallocated: memory follows the blocks tracked, up to the bound. */
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __uint(max_entries, 262144); /* config.bpf.max_tracked_allocs */
  __type(key, struct alloc_addr_key);
  __type(value, struct alloc_addr_val);
} addrs SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_STACK_TRACE);
  __uint(max_entries, 16384); /* config.bpf.max_stacks */
  __uint(key_size, sizeof(__u32));
  __uint(value_size, 127 * sizeof(__u64));
} stacks SEC(".maps");

/* Entry -> return hand-over, per thread. LRU: a thread that dies between the
 * two probes cannot leak an entry for ever. */
struct {
  __uint(type, BPF_MAP_TYPE_LRU_HASH);
  __uint(max_entries, 8192);
  __type(key, __u32);
  __type(value, struct alloc_stash);
} stash SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
  __uint(max_entries, DROP_REASONS);
  __type(key, __u32);
  __type(value, __u64);
} drops SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 64);
  __type(key, char[ALLOC_COMM_LEN]);
  __type(value, __u32);
} hold_comms SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, ALLOC_HOLD_SLOTS);
  __type(key, __u32);
  __type(value, struct hold_slot);
} hold_slots SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_RINGBUF);
  __uint(max_entries, 1 << 16);
} hold_events SEC(".maps");

static __always_inline void count_drop(__u32 reason) {
  __u64* v = bpf_map_lookup_elem(&drops, &reason);
  if (v) *v += 1;
}

static __always_inline __u32 tgid(void) { return bpf_get_current_pid_tgid() >> 32; }
static __always_inline __u32 tid(void) { return (__u32)bpf_get_current_pid_tgid(); }

/* glibc chunk header: size with flag bits. 0 when unreadable. */
static __always_inline __u64 read_chunk_header(__u64 ptr) {
  __u64 hdr = 0;
  if (bpf_probe_read_user(&hdr, sizeof(hdr), (void*)(ptr - 8)) != 0) {
    count_drop(DROP_HEADER_READ);
    return 0;
  }
  return hdr;
}

static __always_inline void account_alloc(struct alloc_stats* s, __u64 size, int mmapped) {
  s->alloc_bytes += size;
  s->allocs += 1;
  if (mmapped) s->mmap_alloc_bytes += size;
  __u32 b = alloc_hist_bucket(size);
  if (b < ALLOC_HIST_BUCKETS) s->hist[b] += 1;
}

static __always_inline void account_free(struct alloc_stats* s, __u64 size, int mmapped) {
  s->free_bytes += size;
  s->frees += 1;
  if (mmapped) s->mmap_free_bytes += size;
}

/* A target's settings: from the cookie of a multi-uprobe link, else from
 * the target_cfg map (classic links carry no settings). */
struct tcfg {
  __u32 header, track, stacks;
};

static __always_inline int get_cfg(__u32 pid, __u64 cookie, struct tcfg* out) {
  if (cookie & CK_VALID) {
    out->header = (cookie & CK_HEADER) != 0;
    out->track = (cookie & CK_TRACK) != 0;
    out->stacks = (cookie & CK_STACKS) != 0;
    return 0;
  }
  struct alloc_target_cfg* c = bpf_map_lookup_elem(&target_cfg, &pid);
  if (!c) return -1;
  out->header = c->size_source == ALLOC_SIZE_HEADER;
  out->track = c->track_addrs;
  out->stacks = c->capture_stacks;
  return 0;
}

/* A new block `ptr` of `req` requested bytes: count it (and remember it in
 * address mode). */
static __always_inline void on_alloc(void* ctx, __u32 pid, __u64 ptr, __u64 req, __u64 cookie) {
  if (!ptr) return;
  struct alloc_stats* s = bpf_map_lookup_elem(&stats, &pid);
  struct tcfg cf;
  if (!s || get_cfg(pid, cookie, &cf) != 0) return;
  struct tcfg* c = &cf;
  __u64 size = req;
  int mmapped = 0;
  if (c->header) {
    __u64 hdr = read_chunk_header(ptr);
    if (!hdr) {
      s->drops += 1;
      return;
    }
    size = hdr & ~7ULL;
    mmapped = (hdr & 2) != 0;
  }
  if (c->track) {
    struct alloc_addr_key k = {.pid = pid, .ptr = ptr};
    struct alloc_addr_val v = {.size = size, .stack_id = -1};
    if (c->stacks) {
      v.stack_id = bpf_get_stackid(ctx, &stacks, BPF_F_USER_STACK);
      if (v.stack_id < 0) count_drop(DROP_STACK);
    }
    if (bpf_map_update_elem(&addrs, &k, &v, BPF_ANY) != 0) {
      /* Not tracked, so its free will be ignored too: the live sum stays
       * exact for what is tracked, and the drop is counted. */
      count_drop(DROP_ADDR_MAP_FULL);
      s->drops += 1;
      return;
    }
  }
  account_alloc(s, size, mmapped);
}

/* Block `ptr` goes away. */
static __always_inline void on_free(__u32 pid, __u64 ptr, __u64 cookie) {
  if (!ptr) return;
  struct alloc_stats* s = bpf_map_lookup_elem(&stats, &pid);
  struct tcfg c;
  if (!s || get_cfg(pid, cookie, &c) != 0) return;
  if (c.track) {
    struct alloc_addr_key k = {.pid = pid, .ptr = ptr};
    struct alloc_addr_val* v = bpf_map_lookup_elem(&addrs, &k);
    if (!v) {
      s->unknown_frees += 1;  // allocated before attach, or dropped
      return;
    }
    __u64 size = v->size;
    bpf_map_delete_elem(&addrs, &k);
    account_free(s, size, 0);
    return;
  }
  __u64 hdr = read_chunk_header(ptr);
  if (!hdr) {
    s->drops += 1;
    return;
  }
  account_free(s, hdr & ~7ULL, (hdr & 2) != 0);
}

/* ---- malloc family: entry stashes the request, return accounts ---- */

static __always_inline void stash_request(__u64 size) {
  __u32 t = tid();
  struct alloc_stash st = {.size = size, .kind = STASH_MALLOC};
  if (bpf_map_update_elem(&stash, &t, &st, BPF_ANY) != 0) count_drop(DROP_STASH);
}

static __always_inline int alloc_return(void* ctx, __u64 ptr, int header_only, __u64 cookie) {
  __u64 req = 0;
  /* glibc header mode has no entry probe on the malloc family: nothing
   * stashed, so skip the lookup (this runs on every malloc). */
  if (!header_only) {
    __u32 t = tid();
    struct alloc_stash* st = bpf_map_lookup_elem(&stash, &t);
    if (st) {
      req = st->size;
      bpf_map_delete_elem(&stash, &t);
    }
  }
  on_alloc(ctx, tgid(), ptr, req, cookie);
  return 0;
}

/* Entry programs that only matter in request-size mode (glibc header mode
 * attaches the return probes alone: one trap fewer per call's entry work). */
SEC("uprobe")
int BPF_KPROBE(malloc_entry, __u64 size) {
  stash_request(size);
  return 0;
}

SEC("uprobe")
int BPF_KPROBE(calloc_entry, __u64 nmemb, __u64 size) {
  stash_request(nmemb * size);
  return 0;
}

/* memalign(align, size), aligned_alloc(align, size) */
SEC("uprobe")
int BPF_KPROBE(memalign_entry, __u64 align, __u64 size) {
  stash_request(size);
  return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(malloc_return, __u64 ret) { return alloc_return(ctx, ret, 0, 0); }

/* posix_memalign(void **memptr, size_t align, size_t size): the block is
 * stored through memptr; the return value is an error code. */
SEC("uprobe")
int BPF_KPROBE(posix_memalign_entry, __u64 memptr, __u64 align, __u64 size) {
  __u32 t = tid();
  struct alloc_stash st = {.size = size, .memptr = memptr, .kind = STASH_MEMALIGN};
  if (bpf_map_update_elem(&stash, &t, &st, BPF_ANY) != 0) count_drop(DROP_STASH);
  return 0;
}

static __always_inline int posix_memalign_ret(void* ctx, int ret, __u64 cookie) {
  __u32 t = tid();
  struct alloc_stash* st = bpf_map_lookup_elem(&stash, &t);
  if (!st) return 0;
  __u64 memptr = st->memptr, req = st->size;
  bpf_map_delete_elem(&stash, &t);
  if (ret != 0) return 0;
  __u64 ptr = 0;
  if (bpf_probe_read_user(&ptr, sizeof(ptr), (void*)memptr) != 0) return 0;
  on_alloc(ctx, tgid(), ptr, req, cookie);
  return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(posix_memalign_return, int ret) { return posix_memalign_ret(ctx, ret, 0); }

/* ---- free: entry only, at the first emulated instruction ---- */

SEC("uprobe")
int BPF_KPROBE(free_entry, __u64 ptr) {
  on_free(tgid(), ptr, 0);
  return 0;
}

/* ---- realloc: the old block's size at entry, the new one at return ---- */

SEC("uprobe")
int BPF_KPROBE(realloc_entry, __u64 ptr, __u64 size) {
  __u32 t = tid();
  struct alloc_stash st = {.size = size, .old_ptr = ptr, .kind = STASH_REALLOC};
  if (bpf_map_update_elem(&stash, &t, &st, BPF_ANY) != 0) count_drop(DROP_STASH);
  return 0;
}

static __always_inline int realloc_ret(void* ctx, __u64 ret, __u64 cookie) {
  __u32 t = tid();
  __u32 pid = tgid();
  struct alloc_stash* st = bpf_map_lookup_elem(&stash, &t);
  if (!st) return 0;
  __u64 old = st->old_ptr, req = st->size, old_size = st->old_size;
  int old_mmapped = st->old_mmapped != 0;
  bpf_map_delete_elem(&stash, &t);
  /* realloc(p, n) == NULL with n > 0 failed and left p alone; with n == 0
   * glibc freed p. Otherwise it is a free of the old block plus an
   * allocation of the new one (possibly at the same address). */
  struct tcfg c;
  if (get_cfg(pid, cookie, &c) != 0) return 0;
  if (!ret && req != 0) return 0;
  if (old) {
    if (c.track) {
      on_free(pid, old, cookie);
    } else {
      /* Header mode: the old chunk may be gone (moved and freed), so its
       * size was read at entry (realloc_entry_hdr). */
      struct alloc_stats* s = bpf_map_lookup_elem(&stats, &pid);
      if (s && old_size) account_free(s, old_size, old_mmapped);
    }
  }
  on_alloc(ctx, pid, ret, req, cookie);
  return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(realloc_return, __u64 ret) { return realloc_ret(ctx, ret, 0); }

/* Header-mode realloc entry: the old chunk's size must be read before
 * realloc runs (it may free or reuse the chunk). */
SEC("uprobe")
int BPF_KPROBE(realloc_entry_hdr, __u64 ptr, __u64 size) {
  __u32 t = tid();
  struct alloc_stash st = {.size = size, .old_ptr = ptr, .kind = STASH_REALLOC};
  if (ptr) {
    __u64 hdr = read_chunk_header(ptr);
    st.old_size = hdr & ~7ULL;
    st.old_mmapped = (hdr & 2) != 0;
  }
  if (bpf_map_update_elem(&stash, &t, &st, BPF_ANY) != 0) count_drop(DROP_STASH);
  return 0;
}

/* ---- multi-uprobe dispatchers ----
 * One entry and one return program for the whole family, told apart by the
 * attach cookie: a target then needs two links, and detaching it costs two
 * kernel grace periods instead of one per probe. */
SEC("uprobe")
int BPF_KPROBE(alloc_entry_multi, __u64 a0, __u64 a1, __u64 a2) {
  __u64 cookie = bpf_get_attach_cookie(ctx);
  __u32 t = tid();
  switch (cookie & CK_FN_MASK) {
    case FN_MALLOC:
      stash_request(a0);
      break;
    case FN_CALLOC:
      stash_request(a0 * a1);
      break;
    case FN_MEMALIGN:
      stash_request(a1);
      break;
    case FN_POSIX_MEMALIGN: {
      struct alloc_stash st = {.size = a2, .memptr = a0, .kind = STASH_MEMALIGN};
      if (bpf_map_update_elem(&stash, &t, &st, BPF_ANY) != 0) count_drop(DROP_STASH);
      break;
    }
    case FN_REALLOC: {
      struct tcfg c;
      struct alloc_stash st = {.size = a1, .old_ptr = a0, .kind = STASH_REALLOC};
      if (get_cfg(tgid(), cookie, &c) == 0 && a0 && c.header && !c.track) {
        __u64 hdr = read_chunk_header(a0);
        st.old_size = hdr & ~7ULL;
        st.old_mmapped = (hdr & 2) != 0;
      }
      if (bpf_map_update_elem(&stash, &t, &st, BPF_ANY) != 0) count_drop(DROP_STASH);
      break;
    }
    case FN_FREE:
      on_free(tgid(), a0, cookie);
      break;
  }
  return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(alloc_return_multi, __u64 ret) {
  __u64 cookie = bpf_get_attach_cookie(ctx);
  switch (cookie & (CK_FN_MASK | FN_HEADER_ONLY)) {
    case FN_MALLOC:
    case FN_CALLOC:
    case FN_MEMALIGN:
      return alloc_return(ctx, ret, 0, cookie);
    case FN_MALLOC | FN_HEADER_ONLY:
    case FN_CALLOC | FN_HEADER_ONLY:
    case FN_MEMALIGN | FN_HEADER_ONLY:
      return alloc_return(ctx, ret, 1, cookie);
    case FN_POSIX_MEMALIGN:
      return posix_memalign_ret(ctx, (int)ret, cookie);
    case FN_REALLOC:
      return realloc_ret(ctx, ret, cookie);
  }
  return 0;
}

/* ---- entry-only estimate (benchmark variant, glibc) ----
 * Adds glibc's request2size at malloc entry with no return probe. Cheaper by
 * one return trap, but not exact: glibc sometimes hands out a chunk 16 bytes
 * larger (a split remainder below MINSIZE) or a page-rounded mmapped chunk,
 * which free then subtracts in full. Kept to measure that trade-off. */
SEC("uprobe")
int BPF_KPROBE(malloc_entry_estimate, __u64 size) {
  __u32 pid = tgid();
  struct alloc_stats* s = bpf_map_lookup_elem(&stats, &pid);
  if (!s) return 0;
  account_alloc(s, glibc_chunk_size(size), 0);
  return 0;
}

/* ---- exec hold ----
 * A process whose new comm is configured as a target is stopped before its
 * first user instruction so its probes are in place before its first
 * malloc. The stop is recorded in a slot so the watchdog can release it. */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(hold_on_exec, struct task_struct* p, pid_t old_pid, struct linux_binprm* bprm) {
  if (!hold_enabled) return 0;
  char comm[ALLOC_COMM_LEN] = {};
  bpf_get_current_comm(comm, sizeof(comm));
  __u32* policy = bpf_map_lookup_elem(&hold_comms, comm);
  if (!policy) return 0;
  __u32 pid = tgid();
  __u32 slot_idx = pid % ALLOC_HOLD_SLOTS;
  struct hold_slot* slot = bpf_map_lookup_elem(&hold_slots, &slot_idx);
  if (!slot) return 0;
  if (slot->pid != 0) {
    count_drop(DROP_HOLD_SLOT);  // not held: traced "since attach" instead
    return 0;
  }
  struct hold_event* e = bpf_ringbuf_reserve(&hold_events, sizeof(*e), 0);
  if (!e) {
    count_drop(DROP_RINGBUF);
    return 0;
  }
  e->pid = pid;
  e->policy = *policy;
  e->forked = 0;
  e->pad = 0;
  __builtin_memcpy(e->comm, comm, sizeof(comm));
  slot->since_ns = bpf_ktime_get_ns();
  slot->pid = pid;
  bpf_send_signal(SIGSTOP);
  bpf_ringbuf_submit(e, 0);
  return 0;
}

/* ---- fork hold ----
 * A traced process (glibc header mode) forks a child that is a target too:
 * the child's heap is a copy of the parent's, so its live bytes start at the
 * parent's, and the child is stopped (it has not run yet) until its own
 * probes are attached. Address mode is not followed: its map entries would
 * have to be copied. Needs the bpf_send_signal_task kfunc (6.13+); without
 * it the loader leaves this program out. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(hold_on_fork, struct task_struct* parent, struct task_struct* child) {
  if (!hold_enabled) return 0;
  __u32 ppid = parent->tgid;
  __u32 cpid = child->tgid;
  if (cpid == ppid) return 0; /* a new thread */
  struct alloc_target_cfg* c = bpf_map_lookup_elem(&target_cfg, &ppid);
  if (!c || c->size_source != ALLOC_SIZE_HEADER || c->track_addrs) return 0;
  struct alloc_target_cfg cc = *c;
  char comm[ALLOC_COMM_LEN] = {};
  bpf_probe_read_kernel_str(comm, sizeof(comm), child->comm);
  __u32* policy = bpf_map_lookup_elem(&hold_comms, comm);
  if (!policy) return 0;
  __u32 pol = *policy;
  __u32 slot_idx = cpid % ALLOC_HOLD_SLOTS;
  struct hold_slot* slot = bpf_map_lookup_elem(&hold_slots, &slot_idx);
  if (!slot) return 0;
  if (slot->pid != 0) {
    count_drop(DROP_HOLD_SLOT);
    return 0;
  }
  /* The parent's live bytes, summed over CPUs. */
  __u64 live = 0, mlive = 0;
  for (__u32 cpu = 0; cpu < 512; cpu++) {
    struct alloc_stats* ps = bpf_map_lookup_percpu_elem(&stats, &ppid, cpu);
    if (!ps) break;
    live += ps->alloc_bytes + ps->inherited_bytes - ps->free_bytes;
    mlive += ps->mmap_alloc_bytes + ps->inherited_mmap_bytes - ps->mmap_free_bytes;
  }
  struct alloc_stats init = {};
  init.inherited_bytes = live;
  init.inherited_mmap_bytes = mlive;
  if (bpf_map_update_elem(&stats, &cpid, &init, BPF_NOEXIST) != 0) return 0;
  bpf_map_update_elem(&target_cfg, &cpid, &cc, BPF_ANY);
  struct hold_event* e = bpf_ringbuf_reserve(&hold_events, sizeof(*e), 0);
  if (!e) {
    count_drop(DROP_RINGBUF);
    return 0;
  }
  e->pid = cpid;
  e->policy = pol;
  e->forked = 1;
  e->pad = 0;
  __builtin_memcpy(e->comm, comm, sizeof(comm));
  slot->since_ns = bpf_ktime_get_ns();
  slot->pid = cpid;
  bpf_send_signal_task(child, SIGSTOP, PIDTYPE_TGID, 0);
  bpf_ringbuf_submit(e, 0);
  return 0;
}
