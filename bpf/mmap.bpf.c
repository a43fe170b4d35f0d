// SPDX-License-Identifier: GPL-2.0
/* The large-chunk path per target: mmap, munmap, mremap, brk and mprotect,
 * seen from the per-syscall tracepoints, so heap growth is visible whatever
 * allocator (or none) the target uses. What is counted is the kernel's own
 * accounting of private writable memory, mm->data_vm (VmData): each traced
 * call is charged the change of data_vm since the previous traced call ended.
 * The charges telescope, so their sum is exactly the change of VmData since
 * the baseline, however the calls overlapped existing mappings. User space
 * adds and removes the per-target entries and sets the first baseline (VmData
 * when the target is added); exec sets a new one. */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>

#include "mmap.h"

char LICENSE[] SEC("license") = "GPL";

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 1024); /* config.bpf.max_targets */
  __type(key, __u32);
  __type(value, struct mmap_stats);
} mmap_stats SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
  __uint(max_entries, MMAP_DROP_REASONS);
  __type(key, __u32);
  __type(value, __u64);
} mmap_drops SEC(".maps");

/* The record of a syscalls:sys_exit_* event (tracefs format: common fields
 * in 8 bytes, int __syscall_nr at 8, long ret at 16). */
struct sys_exit_record {
  __u64 common;
  __s32 syscall_nr;
  __s32 pad;
  __s64 ret;
};

static __always_inline void count_drop(__u32 reason) {
  __u64* n = bpf_map_lookup_elem(&mmap_drops, &reason);
  if (n) *n += 1;
}

/* data_vm of the calling process, in pages; -1 when it cannot be read. */
static __always_inline __s64 data_pages(void) {
  struct task_struct* task = (struct task_struct*)bpf_get_current_task();
  struct mm_struct* mm = BPF_CORE_READ(task, mm);
  unsigned long pages = 0;
  if (!mm || bpf_core_read(&pages, sizeof(pages), &mm->data_vm) != 0) {
    count_drop(MMAP_DROP_READ);
    return -1;
  }
  return (__s64)pages;
}

static __always_inline struct mmap_stats* target(void) {
  __u32 tgid = bpf_get_current_pid_tgid() >> 32;
  return bpf_map_lookup_elem(&mmap_stats, &tgid);
}

/* ---- exit: charge the change since the previous traced call ----
 * The exchange makes concurrent calls of a target's threads hand the
 * baseline on without losing or double-counting a page. */
static __always_inline int on_exit(__u32 call, __s64 ret) {
  struct mmap_stats* v = target();
  if (!v) return 0;
  __s64 now = data_pages();
  if (now < 0) return 0;
  __u64 old = __sync_lock_test_and_set(&v->last_data_pages, (__u64)now);
  /* Errors come back as -errno (mmap and mremap: an error pointer, the same
   * thing as a long). brk never fails this way: a refused brk returns the
   * old break, so every brk is counted. */
  if (call == MMAP_CALL_BRK || ret >= 0 || ret < -4095) __sync_fetch_and_add(&v->calls[call], 1);
  if (old == MMAP_LAST_UNSET) return 0; /* no baseline yet: this one is it */
  __s64 delta = now - (__s64)old;
  if (delta > 0)
    __sync_fetch_and_add(&v->grown_pages[call], (__u64)delta);
  else if (delta < 0)
    __sync_fetch_and_add(&v->shrunk_pages[call], (__u64)-delta);
  return 0;
}

/* Exit events only: enabling any syscall entry event makes every system
 * call on the host (not only these) run one more probe, and the baseline an
 * entry program would take is set by user space (target added) and at exec. */
#define MMAP_TRACE(name, call)                 \
  SEC("tp/syscalls/sys_exit_" #name)           \
  int exit_##name(struct sys_exit_record* ctx) { return on_exit(call, ctx->ret); }

MMAP_TRACE(mmap, MMAP_CALL_MMAP)
MMAP_TRACE(munmap, MMAP_CALL_MUNMAP)
MMAP_TRACE(mremap, MMAP_CALL_MREMAP)
MMAP_TRACE(brk, MMAP_CALL_BRK)
MMAP_TRACE(mprotect, MMAP_CALL_MPROTECT)

/* ---- exec: a new mm ----
 * The old baseline belongs to the old address space. The new one is taken
 * here, after the binary is loaded, so what exec itself maps is charged to
 * no call and the dynamic loader's mmaps that follow are charged to mmap. */
SEC("tp/sched/sched_process_exec")
int on_exec(void* ctx) {
  struct mmap_stats* v = target();
  if (!v) return 0;
  __s64 now = data_pages();
  __sync_lock_test_and_set(&v->last_data_pages, now < 0 ? MMAP_LAST_UNSET : (__u64)now);
  return 0;
}
