// SPDX-License-Identifier: GPL-2.0
/* Empty programs for bench/alloc_trap_cost: the cost of the traps alone at
 * the sites the alloc collector probes, to compare its per-hit work with. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

SEC("uprobe")
int BPF_KPROBE(bare_entry) { return 0; }

SEC("uretprobe")
int BPF_KRETPROBE(bare_return) { return 0; }
