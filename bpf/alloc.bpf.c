// SPDX-License-Identifier: GPL-2.0
/* Allocation tracing. Every program here is attached per target pid by user
 * space (never for all pids), so a process that is not a target pays nothing.
 * Counters are per target and per CPU; user space reads them once a tick.
 *
 * The hot path is what a traced malloc/free pays beyond the trap itself, so
 * it is kept to the minimum measured here (bench/alloc.sh, bpf_stats): the
 * attach cookie carries the function, the target's settings and its stats
 * slot, and the per-CPU array lookup by slot is inlined by the verifier. No
 * hash lookup and no pid lookup remain in glibc header mode; what is left is
 * the read of the chunk header, the one helper call that costs (~100 ns).
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

/* Indexed by slot (cookie bits 32..63); sized by the loader. */
struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
  __uint(max_entries, 1024);
  __type(key, __u32);
  __type(value, struct alloc_stats);
} stats SEC(".maps");

/* Slots not in use, zeroed on every CPU. User space takes one per target
 * and gives it back once the target's links are gone; the fork hold takes
 * one for a child in the kernel. */
struct {
  __uint(type, BPF_MAP_TYPE_QUEUE);
  __uint(max_entries, 1024);
  __uint(value_size, sizeof(__u32));
} free_slots SEC(".maps");

/* Duty mode: 1 while the slot's on-phase runs. Probes are attached a little
 * before and detached a little after (a detach waits for a grace period), so
 * counting follows this flag, which user space flips on time. */
struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 1024);
  __type(key, __u32);
  __type(value, __u32);
} slot_on SEC(".maps");

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
  __uint(map_flags, BPF_F_MMAPABLE);
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

/* The target's counters for this hit, or NULL when it must not count (duty
 * mode between on-phases). */
static __always_inline struct alloc_stats* slot_stats(__u64 ck) {
  __u32 slot = ck >> CK_SLOT_SHIFT;
  struct alloc_stats* s = bpf_map_lookup_elem(&stats, &slot);
  if (s && (ck & CK_DUTY)) {
    __u32* on = bpf_map_lookup_elem(&slot_on, &slot);
    if (!on || !*on) return 0;
  }
  return s;
}

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

/* A new block `ptr` of `req` requested bytes: count it (and remember it in
 * address mode). */
static __always_inline void on_alloc(void* ctx, __u64 ck, __u64 ptr, __u64 req) {
  if (!ptr) return;
  struct alloc_stats* s = slot_stats(ck);
  if (!s) return;
  __u64 size = req;
  int mmapped = 0;
  if (ck & CK_HEADER) {
    __u64 hdr = read_chunk_header(ptr);
    if (!hdr) {
      s->drops += 1;
      return;
    }
    size = hdr & ~7ULL;
    mmapped = (hdr & 2) != 0;
  }
  if (ck & CK_TRACK) {
    struct alloc_addr_key k = {.pid = tgid(), .ptr = ptr};
    struct alloc_addr_val v = {.size = size, .stack_id = -1};
    if (ck & CK_STACKS) {
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
static __always_inline void on_free(__u64 ck, __u64 ptr) {
  if (!ptr) return;
  struct alloc_stats* s = slot_stats(ck);
  if (!s) return;
  if (ck & CK_TRACK) {
    struct alloc_addr_key k = {.pid = tgid(), .ptr = ptr};
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

static __always_inline void stash_put(struct alloc_stash* st) {
  __u32 t = tid();
  if (bpf_map_update_elem(&stash, &t, st, BPF_ANY) != 0) count_drop(DROP_STASH);
}

/* Takes (and removes) this thread's stash; 0 when there is none. */
static __always_inline int stash_take(struct alloc_stash* out) {
  __u32 t = tid();
  struct alloc_stash* st = bpf_map_lookup_elem(&stash, &t);
  if (!st) return 0;
  *out = *st;
  bpf_map_delete_elem(&stash, &t);
  return 1;
}

/* ---- entry: one program for the family, told apart by the cookie ----
 * Entry probes that only stash a request matter in request-size and address
 * modes; glibc header mode attaches the malloc family's return probes alone
 * (one trap fewer per call), plus realloc's and free's entries. */
SEC("uprobe")
int BPF_KPROBE(alloc_entry, __u64 a0, __u64 a1, __u64 a2) {
  __u64 ck = bpf_get_attach_cookie(ctx);
  struct alloc_stash st = {};
  switch (ck & CK_FN_MASK) {
    case FN_FREE:
      on_free(ck, a0);
      return 0;
    case FN_MALLOC:
      st.size = a0;
      break;
    case FN_CALLOC:
      st.size = a0 * a1;
      break;
    case FN_MEMALIGN: /* memalign(align, size), aligned_alloc(align, size) */
      st.size = a1;
      break;
    case FN_POSIX_MEMALIGN: /* (void **memptr, size_t align, size_t size) */
      st.size = a2;
      st.memptr = a0;
      st.kind = STASH_MEMALIGN;
      break;
    case FN_REALLOC:
      st.size = a1;
      st.old_ptr = a0;
      st.kind = STASH_REALLOC;
      /* Header mode: the old chunk's size must be read before realloc runs
       * (it may free or reuse the chunk). */
      if (a0 && (ck & CK_HEADER) && !(ck & CK_TRACK)) {
        __u64 hdr = read_chunk_header(a0);
        st.old_size = hdr & ~7ULL;
        st.old_mmapped = (hdr & 2) != 0;
      }
      break;
    default:
      return 0;
  }
  if (!st.kind) st.kind = STASH_MALLOC;
  stash_put(&st);
  return 0;
}

/* posix_memalign stores the block through memptr; its return value is an
 * error code. */
static __always_inline void posix_memalign_ret(void* ctx, __u64 ck, int ret) {
  struct alloc_stash st;
  if (!stash_take(&st) || ret != 0) return;
  __u64 ptr = 0;
  if (bpf_probe_read_user(&ptr, sizeof(ptr), (void*)st.memptr) != 0) return;
  on_alloc(ctx, ck, ptr, st.size);
}

/* realloc(p, n) == NULL with n > 0 failed and left p alone; with n == 0
 * glibc freed p. Otherwise it is a free of the old block plus an allocation
 * of the new one (possibly at the same address). */
static __always_inline void realloc_ret(void* ctx, __u64 ck, __u64 ret) {
  struct alloc_stash st;
  if (!stash_take(&st)) return;
  if (!ret && st.size != 0) return;
  if (st.old_ptr) {
    if (ck & CK_TRACK) {
      on_free(ck, st.old_ptr);
    } else {
      struct alloc_stats* s = slot_stats(ck);
      if (s && st.old_size) account_free(s, st.old_size, st.old_mmapped);
    }
  }
  on_alloc(ctx, ck, ret, st.size);
}

SEC("uretprobe")
int BPF_KRETPROBE(alloc_return, __u64 ret) {
  __u64 ck = bpf_get_attach_cookie(ctx);
  struct alloc_stash st = {};
  switch (ck & (CK_FN_MASK | FN_HEADER_ONLY)) {
    case FN_MALLOC | FN_HEADER_ONLY:
    case FN_CALLOC | FN_HEADER_ONLY:
    case FN_MEMALIGN | FN_HEADER_ONLY:
      /* No entry probe stashed anything: skip the lookup (every malloc). */
      on_alloc(ctx, ck, ret, 0);
      return 0;
    case FN_MALLOC:
    case FN_CALLOC:
    case FN_MEMALIGN:
      stash_take(&st);
      on_alloc(ctx, ck, ret, st.size);
      return 0;
    case FN_POSIX_MEMALIGN:
      posix_memalign_ret(ctx, ck, (int)ret);
      return 0;
    case FN_REALLOC:
      realloc_ret(ctx, ck, ret);
      return 0;
  }
  return 0;
}

/* ---- holds ----
 * A hold slot is claimed by compare-and-swap of its pid from 0, after its
 * start time is written (the watchdog reads both). */
static __always_inline struct hold_slot* claim_hold(__u32 pid) {
  __u32 idx = pid % ALLOC_HOLD_SLOTS;
  struct hold_slot* slot = bpf_map_lookup_elem(&hold_slots, &idx);
  if (!slot) return 0;
  if (slot->pid != 0) {
    count_drop(DROP_HOLD_SLOT);  // not held: traced "since attach" instead
    return 0;
  }
  slot->since_ns = bpf_ktime_get_ns();
  if (__sync_val_compare_and_swap(&slot->pid, 0, pid) != 0) {
    count_drop(DROP_HOLD_SLOT);
    return 0;
  }
  return slot;
}

/* A process whose new comm is configured as a target is stopped before its
 * first user instruction so its probes are in place before its first
 * malloc. */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(hold_on_exec, struct task_struct* p, pid_t old_pid, struct linux_binprm* bprm) {
  char comm[ALLOC_COMM_LEN] = {};
  bpf_get_current_comm(comm, sizeof(comm));
  __u32* entry = bpf_map_lookup_elem(&hold_comms, comm);
  if (!entry) return 0;
  __u32 entry_id = *entry;
  __u32 pid = tgid();
  struct hold_event* e = bpf_ringbuf_reserve(&hold_events, sizeof(*e), 0);
  if (!e) {
    count_drop(DROP_RINGBUF);
    return 0;
  }
  if (!claim_hold(pid)) {
    bpf_ringbuf_discard(e, 0);
    return 0;
  }
  e->pid = pid;
  e->entry = entry_id;
  e->forked = 0;
  e->slot = 0;
  __builtin_memcpy(e->comm, comm, sizeof(comm));
  bpf_send_signal(SIGSTOP);
  bpf_ringbuf_submit(e, 0);
  return 0;
}

/* A traced process (glibc header mode) forks a child that is a target too:
 * the child's heap is a copy of the parent's, so its live bytes start at the
 * parent's, and the child is stopped (it has not run yet) until its own
 * probes are attached. Address mode is not followed: its map entries would
 * have to be copied. Needs the bpf_send_signal_task kfunc (6.13+); without
 * it the loader leaves this program out. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(hold_on_fork, struct task_struct* parent, struct task_struct* child) {
  __u32 ppid = parent->tgid;
  __u32 cpid = child->tgid;
  if (cpid == ppid) return 0; /* a new thread */
  struct alloc_target_cfg* c = bpf_map_lookup_elem(&target_cfg, &ppid);
  if (!c || c->size_source != ALLOC_SIZE_HEADER || c->track_addrs) return 0;
  struct alloc_target_cfg cc = *c;
  char comm[ALLOC_COMM_LEN] = {};
  bpf_probe_read_kernel_str(comm, sizeof(comm), child->comm);
  __u32* entry = bpf_map_lookup_elem(&hold_comms, comm);
  if (!entry) return 0;
  __u32 entry_id = *entry;
  struct hold_event* e = bpf_ringbuf_reserve(&hold_events, sizeof(*e), 0);
  if (!e) {
    count_drop(DROP_RINGBUF);
    return 0;
  }
  __u32 cslot = 0;
  if (bpf_map_pop_elem(&free_slots, &cslot) != 0) {
    count_drop(DROP_NO_SLOT);
    bpf_ringbuf_discard(e, 0);
    return 0;
  }
  /* The parent's live bytes, summed over CPUs. */
  __u64 live = 0, mlive = 0;
  for (__u32 cpu = 0; cpu < 512; cpu++) {
    struct alloc_stats* ps = bpf_map_lookup_percpu_elem(&stats, &cc.slot, cpu);
    if (!ps) break;
    live += ps->alloc_bytes + ps->inherited_bytes - ps->free_bytes;
    mlive += ps->mmap_alloc_bytes + ps->inherited_mmap_bytes - ps->mmap_free_bytes;
  }
  /* The slot is zero on every CPU; this CPU's copy takes the inheritance. */
  struct alloc_stats* cs = bpf_map_lookup_elem(&stats, &cslot);
  cc.slot = cslot;
  if (!cs || bpf_map_update_elem(&target_cfg, &cpid, &cc, BPF_NOEXIST) != 0) {
    bpf_map_push_elem(&free_slots, &cslot, 0);
    bpf_ringbuf_discard(e, 0);
    return 0;
  }
  if (!claim_hold(cpid)) {
    bpf_map_delete_elem(&target_cfg, &cpid);
    bpf_map_push_elem(&free_slots, &cslot, 0);
    bpf_ringbuf_discard(e, 0);
    return 0;
  }
  cs->inherited_bytes = live;
  cs->inherited_mmap_bytes = mlive;
  e->pid = cpid;
  e->entry = entry_id;
  e->forked = 1;
  e->slot = cslot;
  __builtin_memcpy(e->comm, comm, sizeof(comm));
  bpf_send_signal_task(child, SIGSTOP, PIDTYPE_TGID, 0);
  bpf_ringbuf_submit(e, 0);
  return 0;
}
