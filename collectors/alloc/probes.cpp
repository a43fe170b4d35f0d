#include "collectors/alloc/probes.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include <chrono>

namespace memlens::alloc {

void SlotPool::init(int stats_fd, int queue_fd, int on_fd, uint32_t slots) {
  stats_fd_ = stats_fd;
  queue_fd_ = queue_fd;
  on_fd_ = on_fd;
  for (__u32 i = 0; i < slots; ++i) bpf_map_update_elem(queue_fd_, nullptr, &i, BPF_ANY);
}

void SlotPool::release(const uint32_t* slot) {
  std::vector<alloc_stats> zero(static_cast<std::size_t>(bpf::possible_cpus()));
  __u32 key = *slot, off = 0;
  bpf_map_update_elem(stats_fd_, &key, zero.data(), BPF_ANY);
  bpf_map_update_elem(on_fd_, &key, &off, BPF_ANY);
  bpf_map_update_elem(queue_fd_, nullptr, &key, BPF_ANY);
  in_use_.fetch_sub(1);
  delete slot;
}

SlotLease SlotPool::lease(uint32_t slot) {
  in_use_.fetch_add(1);
  return {new uint32_t(slot), [this](const uint32_t* p) { release(p); }};
}

SlotLease SlotPool::take() {
  __u32 slot = 0;
  if (bpf_map_lookup_and_delete_elem(queue_fd_, nullptr, &slot) != 0) {
    exhausted_.fetch_add(1);
    return nullptr;
  }
  return lease(slot);
}

void SlotPool::set_counting(uint32_t slot, bool on) {
  __u32 key = slot, v = on ? 1 : 0;
  bpf_map_update_elem(on_fd_, &key, &v, BPF_ANY);
}

Reapers::Reapers(int threads) {
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { loop(); });
}

Reapers::~Reapers() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void Reapers::bury(std::vector<bpf::Link> links, SlotLease slot) {
  if (links.empty()) return;
  const std::size_t n = links.size();
  {
    std::lock_guard lock(mu_);
    for (auto& l : links) graveyard_.emplace_back(std::move(l), slot);
  }
  detaching_.fetch_add(n);
  cv_.notify_all();
}

void Reapers::loop() {
  std::unique_lock lock(mu_);
  for (;;) {
    if (graveyard_.empty()) {
      if (stop_) return;
      cv_.wait(lock);
      continue;
    }
    auto dead = std::move(graveyard_.back());
    graveyard_.pop_back();
    lock.unlock();
    dead.first.reset();   // waits for the grace period
    dead.second.reset();  // the last link of a slot gives it back
    detaching_.fetch_sub(1);
    lock.lock();
  }
}

ProbeSet& ProbeSet::operator=(ProbeSet&& o) noexcept {
  if (this != &o) {
    reset();
    reapers_ = o.reapers_;
    links_ = std::move(o.links_);
    slot_ = std::move(o.slot_);
    o.links_.clear();
  }
  return *this;
}

void ProbeSet::reset() {
  if (reapers_ && !links_.empty()) reapers_->bury(std::move(links_), slot_);
  links_.clear();
  slot_.reset();
}

Result<ProbeSet> attach_probes(Reapers& reapers, const AttachPlan& plan, SlotLease slot) {
  std::vector<bpf::Link> links;
  auto fail = [&](const Error& e) -> Result<ProbeSet> {
    reapers.bury(std::move(links), slot);
    return e;
  };
  if (plan.multi) {
    for (bool ret : {false, true}) {
      std::vector<uint64_t> offs, cookies;
      for (const auto& sp : plan.specs)
        if (sp.ret == ret) {
          offs.push_back(sp.offset);
          cookies.push_back(sp.fn | plan.settings);
        }
      if (offs.empty()) continue;
      auto l = bpf::attach_uprobe_multi(ret ? plan.ret : plan.entry, plan.pid, plan.binary, offs, cookies, ret);
      if (!l) return fail(l.error());
      links.push_back(std::move(*l));
    }
  } else {
    for (const auto& sp : plan.specs) {
      auto l = bpf::attach_uprobe(sp.ret ? plan.ret : plan.entry, plan.pid, plan.binary, sp.offset, sp.ret,
                                  sp.fn | plan.settings);
      if (!l) return fail(l.error());
      links.push_back(std::move(*l));
    }
  }
  return ProbeSet(&reapers, std::move(links), std::move(slot));
}

}  // namespace memlens::alloc
