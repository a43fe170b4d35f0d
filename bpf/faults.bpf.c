// SPDX-License-Identifier: GPL-2.0
/* User page faults per target. A raw tracepoint (no tracefs needed) on
 * exceptions:page_fault_user; processes that are not targets cost one hash
 * lookup per fault, which is small next to the fault itself (~14 us here).
 * User space adds and removes the per-target entries. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "faults.h"

char LICENSE[] SEC("license") = "GPL";

struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
  __uint(max_entries, 1024); /* config.bpf.max_targets */
  __type(key, __u32);
  __type(value, struct fault_stats);
} fault_stats SEC(".maps");

/* TP_PROTO(unsigned long address, struct pt_regs *regs, unsigned long error_code) */
SEC("raw_tp/page_fault_user")
int BPF_PROG(page_fault_user, unsigned long address, struct pt_regs* regs, unsigned long error_code) {
  __u32 pid = bpf_get_current_pid_tgid() >> 32;
  struct fault_stats* s = bpf_map_lookup_elem(&fault_stats, &pid);
  if (!s) return 0;
  s->faults += 1;
  if (error_code & 2) s->write_faults += 1;
  return 0;
}
