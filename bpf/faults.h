/* Shared between bpf/faults.bpf.c and collectors/faults_collector.cpp:
 * user page faults counted per target (tgid) and CPU. */
#ifndef MEMLENS_BPF_FAULTS_H
#define MEMLENS_BPF_FAULTS_H

#ifdef __BPF__
#include "vmlinux.h"
#else
#include <linux/types.h>
#endif

struct fault_stats {
  __u64 faults;       /* every user page fault the kernel handled */
  __u64 write_faults; /* error_code bit 1: the access was a write */
};

#endif /* MEMLENS_BPF_FAULTS_H */
