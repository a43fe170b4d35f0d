#include "collectors/proc_collector.h"

#include <unistd.h>

#include <chrono>

#include "collectors/proc_parse.h"
#include "daemon/config.h"

namespace memlens {

namespace {

struct ProcMetrics {
  MetricDesc rss = metric("rss", "bytes", MetricKind::gauge, "Resident set size (status VmRSS).");
  MetricDesc pss = metric("pss", "bytes", MetricKind::gauge,
                          "Proportional set size: resident bytes with shared pages divided among sharers "
                          "(smaps_rollup, read every smaps_interval; up to 6 intervals old for a process that "
                          "has not run and whose statm has not moved).");
  MetricDesc uss = metric("uss", "bytes", MetricKind::gauge,
                          "Unique set size: private resident bytes (smaps_rollup Private_Clean + Private_Dirty, "
                          "read as memlens_pss_bytes).");
  MetricDesc anon = metric("anon", "bytes", MetricKind::gauge,
                           "Resident anonymous memory (status RssAnon): heaps, stacks, private mappings.");
  MetricDesc file = metric("file", "bytes", MetricKind::gauge,
                           "Resident file-backed memory (status RssFile).");
  MetricDesc shmem = metric("shmem", "bytes", MetricKind::gauge,
                            "Resident shared memory (status RssShmem: SysV, POSIX shm, shared anonymous).");
  MetricDesc swap = metric("swap", "bytes", MetricKind::gauge, "Swapped-out anonymous memory (status VmSwap).");
  MetricDesc peak = metric("rss_peak", "bytes", MetricKind::gauge,
                           "Peak resident set size over the process lifetime (status VmHWM).");
  MetricDesc virt = metric("virtual", "bytes", MetricKind::gauge, "Virtual address space size (status VmSize).");
  MetricDesc data = metric("data", "bytes", MetricKind::gauge,
                           "Private writable virtual memory (status VmData: heaps, anonymous and private writable "
                           "mappings, thread stacks; not the main stack, not PROT_NONE reservations), resident "
                           "or not.");
  MetricDesc heap = metric("heap_mapping", "bytes", MetricKind::gauge,
                           "Size of the [heap] (brk) mapping, read every smaps_interval; 0 when the process has none.");
  MetricDesc faults = metric("page_faults", "", MetricKind::counter,
                             "Page faults taken by the process (from /proc/PID/stat), by kind minor/major.");
  MetricDesc threads = metric("threads", "", MetricKind::gauge, "Number of threads.");
  MetricDesc cpu = metric("cpu", "seconds", MetricKind::counter, "CPU time (user + system) of the process.");
  MetricDesc saved = metric("proc_reads_saved", "", MetricKind::counter,
                            "Reads of /proc/PID/stat and maps not made: the process had not run since the last one "
                            "(its CPU clock had not moved), so what they hold had not changed; of status: neither "
                            "had its statm (the same memory counters, cheaper), for up to 10 ticks; of "
                            "smaps_rollup: neither, for up to 5 of its reads in 6.");
};

const ProcMetrics& m() {
  static const ProcMetrics metrics;
  return metrics;
}

}  // namespace

Result<void> ProcCollector::start(const ConfigPtr& config) {
  const Config& cfg = *config;
  proc_ = ProcFs(cfg.procfs);
  smaps_interval_ = std::chrono::duration<double>(cfg.smaps_interval).count();
  for (auto& [id, pt] : per_target_) {  // procfs root may have changed
    pt.next_smaps = 0;
    pt.stat_cpu_ns.reset();
    pt.maps_cpu_ns.reset();
    pt.status_read.reset();
    pt.smaps_cpu_ns.reset();
  }
  return {};
}

void ProcCollector::target_removed(const Target& t) { per_target_.erase(t.id); }

Result<void> ProcCollector::read_smaps(const Target& t, PerTarget& pt, const std::optional<uint64_t>& cpu_ns) {
  const pid_t pid = t.pid();
  Result<void> result;
  auto rollup_read = pread_file(pt.smaps_rollup, proc_.path(pid, "smaps_rollup"), buf_);
  pt.have_rollup = false;
  if (rollup_read) {
    auto rollup = parse_smaps_rollup(buf_);
    if (rollup && !rollup->empty) {
      pt.have_rollup = true;
      pt.pss = static_cast<double>(rollup->pss);
      pt.uss = static_cast<double>(rollup->uss());
    } else if (!rollup) {
      result = rollup.error();
    }
  } else if (rollup_read.error().code == Errc::not_found && read_file(proc_.path(pid, "stat"))) {
    // The process is still there: the file is missing (kernels before 4.14).
    result = make_error(Errc::unavailable, rollup_read.error().message);
  } else {
    result = rollup_read.error();
  }
  // The [heap] mapping moves only by the process's own brk calls.
  if (pt.have_heap && cpu_ns && pt.maps_cpu_ns == cpu_ns) {
    ++maps_reads_saved_;
    return result;
  }
  pt.have_heap = false;
  pt.maps_cpu_ns = cpu_ns;
  auto maps_text = read_file(proc_.path(pid, "maps"), 64 << 20);
  if (maps_text) {
    auto heap = parse_maps_heap(*maps_text);
    if (heap) {
      pt.have_heap = true;
      pt.heap = *heap ? static_cast<double>((*heap)->size()) : 0.0;
    } else if (result) {
      result = heap.error();
    }
  } else if (result) {
    result = maps_text.error();
  }
  return result;
}

Result<void> ProcCollector::collect(const Target& t, Sample& out) {
  const pid_t pid = t.pid();
  static const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  PerTarget& pt = per_target_[t.id];

  // Read before stat: if the process runs after it, the next tick sees the
  // clock moved. Unmoved, stat's fields are those of the last read (and
  // the process is the same one: a reused pid's clock is another's).
  const std::optional<uint64_t>& cpu_ns = t.cpu_ns;
  if (!cpu_ns || pt.stat_cpu_ns != cpu_ns) {
    if (auto r = pread_file(pt.stat, proc_.path(pid, "stat"), buf_); !r) return r.error();
    auto st = parse_stat(buf_);
    if (!st) return st.error();
    // The pid was reused since discovery: this is not our target any more.
    if (st->starttime != t.id.start_time)
      return make_error(Errc::not_found, "pid " + std::to_string(pid) + " was reused");
    pt.minflt = st->minflt;
    pt.majflt = st->majflt;
    pt.threads = st->num_threads;
    pt.cpu_ticks = st->utime + st->stime;
    pt.stat_cpu_ns = cpu_ns;
  } else {
    ++stat_reads_saved_;
  }
  static const FixedLabels minor{{{"kind", "minor"}}}, major{{{"kind", "major"}}};
  out.counter(m().faults, static_cast<double>(pt.minflt), minor);
  out.counter(m().faults, static_cast<double>(pt.majflt), major);
  out.gauge(m().threads, static_cast<double>(pt.threads));
  out.counter(m().cpu, static_cast<double>(pt.cpu_ticks) / ticks);

  // Resident memory moves without the process running (reclaim, swap, and
  // another process faulting pages in through ptrace or process_vm_readv),
  // so a standing clock does not keep status. statm holds the same
  // counters (resident; shared = file + shmem; size; data) for a seventh of
  // status's cost: while the clock stands and statm reads as it did, the
  // last status reading stands, for at most kStatusStandsFor ticks.
  bool stands = false;
  if (pt.status_read && cpu_ns && pt.status_cpu_ns == cpu_ns) {
    if (auto r = pread_file(pt.statm, proc_.path(pid, "statm"), statm_buf_); !r) return r.error();
    stands = pt.status_stood < kStatusStandsFor && !pt.statm_text.empty() && statm_buf_ == pt.statm_text;
    pt.statm_text = statm_buf_;  // read before status below: a move after it shows at the next tick
  } else {
    pt.statm_text.clear();  // it ran: status is read, and statm from the next tick on
  }
  if (stands) {
    ++pt.status_stood;
    ++status_reads_saved_;
  } else {
    pt.status_read.reset();
    if (auto r = pread_file(pt.status, proc_.path(pid, "status"), buf_); !r) return r.error();
    auto parsed = parse_status(buf_);
    if (!parsed) return parsed.error();
    if (!parsed->has_memory)
      return make_error(Errc::unavailable, "pid " + std::to_string(pid) + " has no memory (kernel thread or zombie)");
    pt.status_read = *parsed;
    pt.status_cpu_ns = cpu_ns;
    pt.status_stood = 0;
  }
  const ProcStatus* status = &*pt.status_read;
  out.gauge(m().rss, static_cast<double>(status->vm_rss));
  out.gauge(m().anon, static_cast<double>(status->rss_anon));
  out.gauge(m().file, static_cast<double>(status->rss_file));
  out.gauge(m().shmem, static_cast<double>(status->rss_shmem));
  out.gauge(m().swap, static_cast<double>(status->vm_swap));
  out.gauge(m().peak, static_cast<double>(status->vm_hwm));
  out.gauge(m().virt, static_cast<double>(status->vm_size));
  out.gauge(m().data, static_cast<double>(status->vm_data));
  out.series(SeriesId::rss, static_cast<double>(status->vm_rss));
  out.series(SeriesId::anon, static_cast<double>(status->rss_anon));
  out.series(SeriesId::heap, static_cast<double>(status->rss_anon));

  // smaps_rollup costs more than every other read together (the kernel
  // walks the page tables). What the process does shows in its clock,
  // reclaim and swap in statm; only other processes changing what they
  // share with it (a sharer's exit, fork or copy-on-write) show in neither.
  // So while both stand, the last reading stands for up to
  // kSmapsStandsFor intervals: PSS and USS are then at most that old.
  const double now = std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  if (now >= pt.next_smaps) {
    const bool still = pt.have_rollup && pt.smaps_error && cpu_ns && pt.smaps_cpu_ns == cpu_ns &&
                       !pt.statm_text.empty() && pt.smaps_statm == pt.statm_text &&
                       pt.smaps_stood + 1 < kSmapsStandsFor;
    if (still) {
      ++pt.smaps_stood;
      ++smaps_reads_saved_;
    } else {
      pt.smaps_error = read_smaps(t, pt, cpu_ns);
      pt.smaps_cpu_ns = cpu_ns;
      pt.smaps_statm = pt.statm_text;  // "" when statm was not read this tick: the next read is made
      pt.smaps_stood = 0;
    }
    pt.next_smaps = now + smaps_interval_;
  }
  if (pt.have_rollup) {
    out.gauge(m().pss, pt.pss);
    out.gauge(m().uss, pt.uss);
  }
  if (pt.have_heap) out.gauge(m().heap, pt.heap);
  return pt.smaps_error;
}

void ProcCollector::collect_global(GlobalSample& out) {
  out.counter(m().saved, static_cast<double>(stat_reads_saved_), {{"file", "stat"}});
  out.counter(m().saved, static_cast<double>(maps_reads_saved_), {{"file", "maps"}});
  out.counter(m().saved, static_cast<double>(status_reads_saved_), {{"file", "status"}});
  out.counter(m().saved, static_cast<double>(smaps_reads_saved_), {{"file", "smaps_rollup"}});
}

}  // namespace memlens
