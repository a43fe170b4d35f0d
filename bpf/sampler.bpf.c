// SPDX-License-Identifier: GPL-2.0
/* Consumer of OpenTelemetry's memory USDT contract. The producer (our
 * libmemlens-sampler.so, or an allocator that adopts the contract) has
 * already sampled: these programs run once per ~512 KiB allocated, not per
 * malloc. Attached per target pid by the loader. */
#include "vmlinux.h"

#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/usdt.bpf.h>

#include "sampler.h"

char LICENSE[] SEC("license") = "GPL";

struct {
  __uint(type, BPF_MAP_TYPE_STACK_TRACE);
  __uint(max_entries, 8192); /* resized by the loader */
  __uint(key_size, sizeof(__u32));
  __uint(value_size, SAMPLER_STACK_DEPTH * sizeof(__u64));
} sampler_stacks SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 65536); /* resized by the loader */
  __type(key, struct sampled_key);
  __type(value, struct sampled_val);
} sampled SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 16384); /* resized by the loader */
  __type(key, struct site_key);
  __type(value, struct site_val);
} sites SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
  __uint(max_entries, SAMPLER_DROP_MAX);
  __type(key, __u32);
  __type(value, __u64);
} sampler_drops SEC(".maps");

static __always_inline void count_drop(__u32 which) {
  __u64* v = bpf_map_lookup_elem(&sampler_drops, &which);
  if (v) *v += 1;
}

/* The site of (pid, stack), created empty when new; NULL when the map is full. */
static __always_inline struct site_val* site_of(__u32 pid, __s32 stack_id) {
  struct site_key k = {.pid = pid, .stack_id = stack_id};
  struct site_val* s = bpf_map_lookup_elem(&sites, &k);
  if (s) return s;
  struct site_val zero = {};
  if (bpf_map_update_elem(&sites, &k, &zero, BPF_NOEXIST) != 0 && bpf_map_lookup_elem(&sites, &k) == NULL) {
    count_drop(SAMPLER_DROP_SITES_FULL);
    return NULL;
  }
  return bpf_map_lookup_elem(&sites, &k);
}

/* ---- otel_memory:alloc(ptr, size, weight) ---- */
SEC("usdt")
int BPF_USDT(otel_alloc, __u64 ptr, __u64 size, __u64 weight) {
  if (!ptr || !weight) return 0;
  __u32 pid = bpf_get_current_pid_tgid() >> 32;
  __s64 stack_id = bpf_get_stackid(ctx, &sampler_stacks, BPF_F_USER_STACK);
  if (stack_id < 0) count_drop(SAMPLER_DROP_STACK);
  /* Objects this sample stands for, in thousandths: weight / size. */
  __u64 objects = size ? (weight * 1000) / size : 1000;
  if (objects == 0) objects = 1;
  struct site_val* s = site_of(pid, (__s32)stack_id);
  if (!s) return 0;
  __sync_fetch_and_add(&s->alloc_space, weight);
  __sync_fetch_and_add(&s->alloc_objects, objects);
  __sync_fetch_and_add(&s->samples, 1);
  struct sampled_key k = {.pid = pid, .ptr = ptr};
  struct sampled_val v = {.space = weight, .objects = objects, .stack_id = stack_id};
  if (bpf_map_update_elem(&sampled, &k, &v, BPF_ANY) != 0) {
    /* Its free could not be matched: leave it out of the in-use figures. */
    count_drop(SAMPLER_DROP_SAMPLED_FULL);
    return 0;
  }
  __sync_fetch_and_add(&s->inuse_space, (__s64)weight);
  __sync_fetch_and_add(&s->inuse_objects, (__s64)objects);
  return 0;
}

/* ---- otel_memory:free(ptr) ---- */
SEC("usdt")
int BPF_USDT(otel_free, __u64 ptr) {
  __u32 pid = bpf_get_current_pid_tgid() >> 32;
  struct sampled_key k = {.pid = pid, .ptr = ptr};
  struct sampled_val* v = bpf_map_lookup_elem(&sampled, &k);
  if (!v) {
    count_drop(SAMPLER_FREE_UNKNOWN);
    return 0;
  }
  struct sampled_val copy = *v;
  bpf_map_delete_elem(&sampled, &k);
  struct site_key sk = {.pid = pid, .stack_id = (__s32)copy.stack_id};
  struct site_val* s = bpf_map_lookup_elem(&sites, &sk);
  if (s) {
    __sync_fetch_and_add(&s->inuse_space, -(__s64)copy.space);
    __sync_fetch_and_add(&s->inuse_objects, -(__s64)copy.objects);
  }
  return 0;
}
