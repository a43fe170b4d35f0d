/* mmapload: runs a fixed script of mmap, munmap, mremap, brk and mprotect
 * calls (no malloc in the measured phase) and writes its own ground truth:
 * per call, how many successful calls it made and how many pages each
 * direction of the kernel's private writable count (VmData) must move by,
 * computed from its own arguments, plus VmData read from /proc/self/status
 * before and after. One JSON line per phase to --truth.
 *
 * Phases: "waiting" (until --start FILE exists), "script" runs, "scripted"
 * (the script is done; waits until --start2 FILE exists when given), then an
 * optional malloc phase (--malloc-kib: heap growth through the allocator,
 * whatever system calls it makes), "done"; then it stays until SIGTERM unless
 * --linger-ms says how long. --quick: no waiting, one iteration.
 * --pre-exec-mib M: first ("pre_exec", after --pre-exec-start FILE exists)
 * map and touch M MiB, then exec itself without these two options: the old
 * address space's memory is gone, the new image reports "execed":1. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

enum { C_MMAP, C_MUNMAP, C_MREMAP, C_BRK, C_MPROTECT, C_N };
static const char* const call_names[C_N] = {"mmap", "munmap", "mremap", "brk", "mprotect"};

static long P; /* page size */
static uint64_t calls[C_N], grown[C_N], shrunk[C_N]; /* expected: calls, pages */
static uint64_t failed_calls;
static uint64_t malloc_small_bytes, malloc_large_bytes; /* requested in the malloc phase */

static void die(const char* what) {
  char buf[256];
  int n = snprintf(buf, sizeof buf, "mmapload: %s: %s\n", what, strerror(errno));
  if (write(2, buf, (size_t)n) < 0) _exit(3);
  _exit(1);
}

static void expect(int call, uint64_t grow_pages, uint64_t shrink_pages) {
  calls[call] += 1;
  grown[call] += grow_pages;
  shrunk[call] += shrink_pages;
}

static void touch(void* p, size_t pages) {
  for (size_t i = 0; i < pages; ++i) ((volatile char*)p)[i * (size_t)P] = 1;
}

/* VmData in bytes, read with plain system calls (no stdio, no malloc). */
static uint64_t vmdata_bytes(void) {
  char b[8192];
  int fd = open("/proc/self/status", O_RDONLY);
  if (fd < 0) die("open status");
  ssize_t n = read(fd, b, sizeof b - 1);
  close(fd);
  if (n <= 0) die("read status");
  b[n] = 0;
  const char* p = strstr(b, "VmData:");
  if (!p) die("no VmData");
  return strtoull(p + 7, NULL, 10) * 1024;
}

static int truth_fd = 1;
static int execed;

static void report(const char* phase, int iterations, uint64_t before, uint64_t after) {
  char buf[2048];
  int n = snprintf(buf, sizeof buf,
                   "{\"phase\":\"%s\",\"pid\":%d,\"execed\":%d,\"iterations\":%d,\"page_bytes\":%ld,"
                   "\"vmdata_before_bytes\":%llu,\"vmdata_after_bytes\":%llu,\"failed_calls\":%llu,"
                   "\"malloc_small_bytes\":%llu,\"malloc_large_bytes\":%llu",
                   phase, (int)getpid(), execed, iterations, P, (unsigned long long)before, (unsigned long long)after,
                   (unsigned long long)failed_calls, (unsigned long long)malloc_small_bytes,
                   (unsigned long long)malloc_large_bytes);
  const char* fields[3] = {"calls", "mapped_bytes", "unmapped_bytes"};
  for (int f = 0; f < 3; ++f) {
    n += snprintf(buf + n, sizeof buf - (size_t)n, ",\"%s\":{", fields[f]);
    for (int c = 0; c < C_N; ++c) {
      uint64_t v = f == 0 ? calls[c] : (f == 1 ? grown[c] : shrunk[c]) * (uint64_t)P;
      n += snprintf(buf + n, sizeof buf - (size_t)n, "%s\"%s\":%llu", c ? "," : "", call_names[c],
                    (unsigned long long)v);
    }
    n += snprintf(buf + n, sizeof buf - (size_t)n, "}");
  }
  n += snprintf(buf + n, sizeof buf - (size_t)n, "}\n");
  if (write(truth_fd, buf, (size_t)n) != n) die("write truth");
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

static volatile sig_atomic_t stop;
static void on_signal(int sig) {
  (void)sig;
  stop = 1;
}

/* SIGTERM while waiting ends the process. */
static void wait_for(const char* path) {
  struct stat st;
  while (stat(path, &st) != 0) {
    if (stop) _exit(0);
    sleep_ms(20);
  }
}

static void* map(void* addr, size_t pages, int prot, int flags, int fd) {
  void* p = mmap(addr, pages * (size_t)P, prot, flags, fd, 0);
  if (p == MAP_FAILED) die("mmap");
  return p;
}

static void unmap(void* p, size_t pages, uint64_t shrink) {
  if (munmap(p, pages * (size_t)P) != 0) die("munmap");
  expect(C_MUNMAP, 0, shrink);
}

static void protect(void* p, size_t pages, int prot, uint64_t grow, uint64_t shrink) {
  if (mprotect(p, pages * (size_t)P, prot) != 0) die("mprotect");
  expect(C_MPROTECT, grow, shrink);
}

static uintptr_t page_align(uintptr_t a) { return (a + (uintptr_t)P - 1) & ~((uintptr_t)P - 1); }

/* One pass of the script; N pages (even, >= 8). Keeps N/2 pages mapped (the
 * shrunk mremap region) when keep is set, so VmData grows across passes. */
static void script(size_t N, int fd, int keep) {
  const int RW = PROT_READ | PROT_WRITE;
  const int ANON = MAP_PRIVATE | MAP_ANONYMOUS;

  /* Anonymous private RW: all of it counts. */
  char* a = map(NULL, N, RW, ANON, -1);
  expect(C_MMAP, N, 0);
  touch(a, N);

  /* A glibc-arena-like reservation: PROT_NONE counts nothing until part of
   * it is made writable; making some of it PROT_NONE again gives it back. */
  const size_t R = 4 * N;
  char* r = map(NULL, R, PROT_NONE, ANON | MAP_NORESERVE, -1);
  expect(C_MMAP, 0, 0);
  protect(r, N, RW, N, 0);
  touch(r, N);
  protect(r, N / 2, PROT_NONE, 0, N / 2);

  /* mremap: grow (maybe moving), then shrink in place. */
  char* b = mremap(a, N * (size_t)P, 2 * N * (size_t)P, MREMAP_MAYMOVE);
  if (b == MAP_FAILED) die("mremap grow");
  expect(C_MREMAP, N, 0);
  touch(b, 2 * N);
  char* b2 = mremap(b, 2 * N * (size_t)P, N / 2 * (size_t)P, 0);
  if (b2 != b) die("mremap shrink");
  expect(C_MREMAP, 0, 2 * N - N / 2);

  /* Two mappings side by side in a reservation (anonymous, then a private
   * writable file mapping: both private writable), one munmap across both,
   * one more across the hole it left. */
  char* x = map(NULL, 8, PROT_NONE, ANON, -1);
  expect(C_MMAP, 0, 0);
  map(x, 4, RW, ANON | MAP_FIXED, -1);
  expect(C_MMAP, 4, 0);
  map(x + 4 * P, 4, RW, MAP_PRIVATE | MAP_FIXED, fd);
  expect(C_MMAP, 4, 0);
  touch(x, 8);
  unmap(x + 2 * P, 4, 4);
  unmap(x, 8, 4);

  /* brk up by an unaligned amount and back; the kernel counts whole pages
   * between the page-aligned old and new breaks. */
  uintptr_t cur = (uintptr_t)syscall(SYS_brk, 0);
  expect(C_BRK, 0, 0);
  uintptr_t want = cur + (N / 4) * (uintptr_t)P + 7;
  if ((uintptr_t)syscall(SYS_brk, want) != want) die("brk grow");
  const uint64_t brk_pages = (page_align(want) - page_align(cur)) / (uint64_t)P;
  expect(C_BRK, brk_pages, 0);
  for (uintptr_t q = page_align(cur); q < want; q += (uintptr_t)P) *(volatile char*)q = 1;
  if ((uintptr_t)syscall(SYS_brk, cur) != cur) die("brk shrink");
  expect(C_BRK, 0, brk_pages);

  /* Shared and read-only file mappings: not private writable, count
   * nothing either way (the calls still count). */
  char* s = map(NULL, 8, RW, MAP_SHARED, fd);
  expect(C_MMAP, 0, 0);
  touch(s, 8);
  unmap(s, 8, 0);
  char* ro = map(NULL, 8, PROT_READ, MAP_PRIVATE, fd);
  expect(C_MMAP, 0, 0);
  for (int i = 0; i < 8; ++i) (void)((volatile char*)ro)[i * P];
  unmap(ro, 8, 0);

  /* Failed calls: not counted, change nothing. */
  if (mmap(NULL, 0, RW, ANON, -1, 0) != MAP_FAILED) die("mmap of 0 bytes succeeded");
  if (munmap(r + 1, (size_t)P) == 0) die("unaligned munmap succeeded");
  if (mprotect(r + 1, (size_t)P, RW) == 0) die("unaligned mprotect succeeded");
  if (mremap(r + 1, (size_t)P, 2 * (size_t)P, 0) != MAP_FAILED) die("unaligned mremap succeeded");
  failed_calls += 4;

  /* Clean up; what is left of the reservation is N/2 RW pages. */
  if (!keep) unmap(b, N / 2, N / 2);
  unmap(r, R, N / 2);
}

static void usage(void) {
  static const char msg[] =
      "usage: mmapload --truth FILE [--start FILE] [--start2 FILE] [--iterations N] [--pages N]\n"
      "                [--keep 0|1] [--malloc-kib K] [--linger-ms MS] [--quick]\n"
      "                [--pre-exec-mib M --pre-exec-start FILE]\n";
  if (write(2, msg, sizeof msg - 1) < 0) _exit(3);
  _exit(2);
}

int main(int argc, char** argv) {
  const char *truth = NULL, *start = NULL, *start2 = NULL, *pre_exec_start = NULL;
  int iterations = 20, keep = 1, quick = 0;
  long pages = 64, malloc_kib = 0, linger_ms = -1, pre_exec_mib = 0;
  for (int i = 1; i < argc; ++i) {
    const char* k = argv[i];
    if (!strcmp(k, "--quick")) {
      quick = 1;
      continue;
    }
    if (i + 1 >= argc) usage();
    const char* v = argv[++i];
    if (!strcmp(k, "--truth")) truth = v;
    else if (!strcmp(k, "--start")) start = v;
    else if (!strcmp(k, "--start2")) start2 = v;
    else if (!strcmp(k, "--iterations")) iterations = atoi(v);
    else if (!strcmp(k, "--pages")) pages = atol(v);
    else if (!strcmp(k, "--keep")) keep = atoi(v);
    else if (!strcmp(k, "--malloc-kib")) malloc_kib = atol(v);
    else if (!strcmp(k, "--linger-ms")) linger_ms = atol(v);
    else if (!strcmp(k, "--pre-exec-mib")) pre_exec_mib = atol(v);
    else if (!strcmp(k, "--pre-exec-start")) pre_exec_start = v;
    else if (!strcmp(k, "--execed")) execed = atoi(v);
    else usage();
  }
  if (!truth || pages < 8 || pages % 2 || iterations < 1) usage();
  if (quick) iterations = 1;
  signal(SIGTERM, on_signal);
  signal(SIGINT, on_signal);
  P = sysconf(_SC_PAGESIZE);

  truth_fd = open(truth, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (truth_fd < 0) die("open truth");
  /* The file behind the file mappings, beside the truth file. */
  char data[4096];
  snprintf(data, sizeof data, "%s.%d.data", truth, (int)getpid());
  int fd = open(data, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) die("open data file");
  if (ftruncate(fd, 16 * P) != 0) die("ftruncate");
  unlink(data);

  if (pre_exec_mib > 0) {
    report("pre_exec", iterations, 0, 0);
    if (pre_exec_start) wait_for(pre_exec_start);
    const size_t big_pages = ((size_t)pre_exec_mib << 20) / (size_t)P;
    touch(map(NULL, big_pages, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1), big_pages);
    char* args[64];
    int n = 0;
    for (int i = 0; i < argc && n < 60; ++i) {
      if (!strcmp(argv[i], "--pre-exec-mib") || !strcmp(argv[i], "--pre-exec-start") || !strcmp(argv[i], "--execed")) {
        ++i;
        continue;
      }
      args[n++] = argv[i];
    }
    args[n++] = "--execed";
    args[n++] = "1";
    args[n] = NULL;
    execv("/proc/self/exe", args);
    die("execv");
  }
  report("waiting", iterations, 0, 0);
  if (start && !quick) wait_for(start);

  /* The measured phase: nothing but the script changes VmData. */
  const uint64_t before = vmdata_bytes();
  for (int i = 0; i < iterations; ++i) script((size_t)pages, fd, keep);
  const uint64_t after = vmdata_bytes();
  report("scripted", iterations, before, after);

  if (start2 && !quick) wait_for(start2);
  if (malloc_kib > 0) {
    /* Heap growth through the allocator: small blocks (brk heap) and large
     * ones (above the mmap threshold: their own mappings), all touched and
     * kept. Per call the split is the allocator's business; the truth is
     * the change of VmData. */
    const size_t small = 4096 - 64, large = (size_t)1 << 22;
    for (long k = 0; k < malloc_kib / 4; ++k) {
      char* p = malloc(small);
      if (!p) die("malloc");
      memset(p, 1, small);
      malloc_small_bytes += small;
    }
    for (long k = 0; k < malloc_kib / 4096; ++k) {
      char* p = malloc(large);
      if (!p) die("malloc");
      memset(p, 1, large);
      malloc_large_bytes += large;
    }
  }
  report("done", iterations, before, vmdata_bytes());

  if (linger_ms >= 0) {
    sleep_ms(linger_ms);
    return 0;
  }
  while (!stop) pause();
  return 0;
}
