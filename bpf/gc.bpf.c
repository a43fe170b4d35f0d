// SPDX-License-Identifier: GPL-2.0
/* GC pause timing for the JVM, Node.js (V8) and CPython. The loader attaches
 * the probes of a runtime binary for every process that maps it (they fire
 * once or twice per collection), so a runtime started later is timed from
 * its first collection, before discovery sees it. What is kept here is only
 * for processes that are watched (`watched`, kept by user space) or young
 * (started less than young_ns ago: not yet found by discovery); user space
 * deletes what a young process left once it is neither.
 * A pause is timed per thread: the begin probe stores the start in `open_pauses`
 * keyed by pid_tgid, the end probe folds the duration into the
 * (pid, runtime, kind) histogram that user space reads each tick. */
#include "vmlinux.h"

#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/usdt.bpf.h>

#include "gc.h"

char LICENSE[] SEC("license") = "GPL";

/* Tunables set by the loader before load. */
const volatile __u64 slot_ns = 4000000000ULL; /* window slot length */
const volatile __u64 gc_bounds[GC_NBOUNDS] = {}; /* bucket upper bounds, ns */
const volatile __u64 young_ns = 30000000000ULL; /* how long a process is young */

/* When a probe was last attached (CLOCK_MONOTONIC ns), set by user space:
 * an end without a begin in a process started before it is a pause that was
 * open when the probes came, not a lost begin. */
volatile __u64 armed_at_ns = 0;

/* Processes whose pauses user space reads (tgid -> 1). */
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 1024); /* resized by the loader */
  __type(key, __u32);
  __type(value, __u8);
} watched SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 4096); /* resized by the loader */
  __type(key, struct gc_key);
  __type(value, struct gc_hist);
} hists SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 4096);
  __type(key, __u64);
  __type(value, struct gc_open);
} open_pauses SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 4096);
  __type(key, __u64);
  __type(value, struct v8_heap);
} v8_heaps SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
  __uint(max_entries, GC_ERR_MAX);
  __type(key, __u32);
  __type(value, __u64);
} errors SEC(".maps");

/* Never written: the initial value of a new histogram (too big for the
 * 512-byte BPF stack). */
struct gc_hist zero_hist = {};

static __always_inline void count_error(__u32 which) {
  __u64* v = bpf_map_lookup_elem(&errors, &which);
  if (v) *v += 1;
}

static __always_inline __u64 process_start_ns(void) {
  struct task_struct* task = (struct task_struct*)bpf_get_current_task();
  return BPF_CORE_READ(task, group_leader, start_time);
}

/* Is the current process watched, or young enough to be found soon? */
static __always_inline bool wanted(__u64 tid) {
  __u32 tgid = tid >> 32;
  if (bpf_map_lookup_elem(&watched, &tgid)) return true;
  return bpf_ktime_get_ns() - process_start_ns() < young_ns;
}

/* ---- begin / end of a pause ---- */

static __always_inline int pause_begin(__u16 runtime, __u16 kind) {
  __u64 tid = bpf_get_current_pid_tgid();
  if (!wanted(tid)) return 0;
  struct gc_open* o = bpf_map_lookup_elem(&open_pauses, &tid);
  if (o) {
    /* Nested entry (V8 may re-enter CollectGarbage): the outer one times it. */
    o->depth += 1;
    return 0;
  }
  struct gc_open n = {.start_ns = bpf_ktime_get_ns(), .runtime = runtime, .kind = kind, .depth = 1};
  if (bpf_map_update_elem(&open_pauses, &tid, &n, BPF_NOEXIST) != 0) count_error(GC_ERR_OPEN_FULL);
  return 0;
}

/* First bucket whose upper bound is >= ns (GC_NBOUNDS: above the last). */
static __always_inline __u32 bucket_of(__u64 ns) {
  __u32 lo = 0, hi = GC_NBOUNDS;
  for (int it = 0; it < 9; it++) {
    if (lo >= hi) break;
    __u32 mid = (lo + hi) / 2;
    if (mid >= GC_NBOUNDS) break;
    if (ns <= gc_bounds[mid])
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo > GC_NBOUNDS ? GC_NBOUNDS : lo;
}

static __always_inline int pause_end(void) {
  __u64 tid = bpf_get_current_pid_tgid();
  struct gc_open* o = bpf_map_lookup_elem(&open_pauses, &tid);
  if (!o) {
    if (wanted(tid)) count_error(process_start_ns() < armed_at_ns ? GC_ERR_MID_PAUSE : GC_ERR_UNMATCHED);
    return 0;
  }
  if (o->depth > 1) {
    o->depth -= 1;
    return 0;
  }
  __u64 now = bpf_ktime_get_ns();
  __u64 ns = now - o->start_ns;
  struct gc_key key = {.pid = tid >> 32, .runtime = o->runtime, .kind = o->kind};
  bpf_map_delete_elem(&open_pauses, &tid);

  struct gc_hist* h = bpf_map_lookup_elem(&hists, &key);
  if (!h) {
    if (bpf_map_update_elem(&hists, &key, &zero_hist, BPF_NOEXIST) != 0 &&
        bpf_map_lookup_elem(&hists, &key) == NULL) {
      count_error(GC_ERR_HIST_FULL);
      return 0;
    }
    h = bpf_map_lookup_elem(&hists, &key);
    if (!h) return 0;
  }
  /* Threads of one process (Node workers) may end pauses at the same time. */
  __sync_fetch_and_add(&h->count, 1);
  __sync_fetch_and_add(&h->sum_ns, ns);
  __u32 b = bucket_of(ns);
  if (b < GC_NBUCKETS) __sync_fetch_and_add(&h->buckets[b], 1);

  /* Window slot: restarted lazily when its epoch is stale. The reset races
   * with a concurrent end on another CPU at most once per slot length. */
  __u64 epoch = now / slot_ns;
  struct gc_slot* s = &h->slots[epoch % GC_SLOTS];
  if (s->epoch != epoch) {
    s->max_ns = 0;
    s->sum_ns = 0;
    s->count = 0;
    s->epoch = epoch;
  }
  __sync_fetch_and_add(&s->sum_ns, ns);
  __sync_fetch_and_add(&s->count, 1);
  if (ns > s->max_ns) s->max_ns = ns;
  return 0;
}

/* ---- JVM: hotspot:gc__begin(bool full) / hotspot:gc__end() in libjvm.so ---- */

SEC("usdt")
int BPF_USDT(jvm_gc_begin, int full) { return pause_begin(GC_RT_JVM, (full & 0xff) ? 1 : 0); }

SEC("usdt")
int BPF_USDT(jvm_gc_end) { return pause_end(); }

/* ---- CPython with dtrace probes: python:gc__start(int gen) / gc__done ---- */

SEC("usdt")
int BPF_USDT(py_gc_start, int generation) {
  return pause_begin(GC_RT_PYTHON, generation >= 0 && generation <= 2 ? generation : GC_MAX_KIND);
}

SEC("usdt")
int BPF_USDT(py_gc_done, long collected) { return pause_end(); }

/* ---- CPython without probes: gc_collect_main(tstate, int generation, ...) ---- */

SEC("uprobe")
int BPF_KPROBE(py_collect_entry, void* tstate, int generation) {
  return pause_begin(GC_RT_PYTHON, generation >= 0 && generation <= 2 ? generation : GC_MAX_KIND);
}

SEC("uretprobe")
int BPF_KRETPROBE(py_collect_return) { return pause_end(); }

/* ---- V8: Heap::CollectGarbage(this, AllocationSpace space, reason, flags) ----
 * The requested space tells the collector: NEW_SPACE (1) a scavenge,
 * OLD_SPACE (2) a full mark-compact; anything else is "other". */

SEC("uprobe")
int BPF_KPROBE(node_gc_entry, void* heap, int space) {
  __u16 kind = space == 1 ? 1 : space == 2 ? 2 : 0;
  return pause_begin(GC_RT_NODE, kind);
}

/* The outermost CollectGarbage returning ends the collection: the heap
 * figures its tracer read last (at its end) become the thread's. */
SEC("uretprobe")
int BPF_KRETPROBE(node_gc_return) {
  __u64 tid = bpf_get_current_pid_tgid();
  struct gc_open* o = bpf_map_lookup_elem(&open_pauses, &tid);
  if (o && o->depth == 1) {
    struct v8_heap* h = bpf_map_lookup_elem(&v8_heaps, &tid);
    if (h && h->last_used && h->last_committed) {
      h->used = h->last_used;
      h->committed = h->last_committed;
      h->collections += 1;
    }
  }
  return pause_end();
}

static __always_inline struct v8_heap* v8_heap_of(__u64 tid) {
  struct v8_heap* h = bpf_map_lookup_elem(&v8_heaps, &tid);
  if (h) return h;
  if (!wanted(tid)) return NULL;
  struct v8_heap zero = {};
  if (bpf_map_update_elem(&v8_heaps, &tid, &zero, BPF_NOEXIST) != 0) {
    h = bpf_map_lookup_elem(&v8_heaps, &tid);
    if (!h) count_error(GC_ERR_V8_FULL);
    return h;
  }
  return bpf_map_lookup_elem(&v8_heaps, &tid);
}

/* Heap::SizeOfObjects() and Heap::CommittedMemory() return size_t. Calls
 * outside a collection (heap statistics asked for by the program) are
 * taken too: the next collection's end overwrites them anyway. */
SEC("uretprobe")
int BPF_KRETPROBE(v8_size_of_objects_return, unsigned long ret) {
  struct v8_heap* h = v8_heap_of(bpf_get_current_pid_tgid());
  if (h) h->last_used = ret;
  return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(v8_committed_memory_return, unsigned long ret) {
  struct v8_heap* h = v8_heap_of(bpf_get_current_pid_tgid());
  if (h) h->last_committed = ret;
  return 0;
}

/* ---- Thread exit: a target dying mid-pause leaves no open entry behind ---- */

SEC("raw_tp/sched_process_exit")
int BPF_PROG(gc_thread_exit) {
  __u64 tid = bpf_get_current_pid_tgid();
  bpf_map_delete_elem(&open_pauses, &tid);
  bpf_map_delete_elem(&v8_heaps, &tid);  /* a worker's isolate ends with its thread */
  __u32 tgid = tid >> 32;
  if ((__u32)tid != tgid) return 0;
  /* The process's main thread: what was kept for the process goes with it,
   * so a pid used again starts from nothing. */
  bpf_map_delete_elem(&watched, &tgid);
  for (__u16 rt = GC_RT_JVM; rt <= GC_RT_PYTHON; rt++)
    for (__u16 k = 0; k <= GC_MAX_KIND; k++) {
      struct gc_key key = {.pid = tgid, .runtime = rt, .kind = k};
      bpf_map_delete_elem(&hists, &key);
    }
  return 0;
}
