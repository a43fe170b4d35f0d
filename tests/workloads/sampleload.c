/* sampleload: allocates a known amount through the whole malloc family,
 * from two call sites (leak_site keeps what it allocates, churn_site frees
 * it again), counting every call itself, for the in-process sampler's
 * tests. Phases: a baseline (nothing allocated, truth written, idle for
 * --wait s), the work, then the final truth and idle until SIGTERM. The
 * truth is written with write(2) only: nothing but the workload's own calls
 * goes through malloc between the two truths.
 *   --leak BYTES   total kept by leak_site (default 40 MiB)
 *   --churn BYTES  total allocated and freed by churn_site (default 60 MiB)
 *   --threads N    the work split over N threads (default 1)
 *   --forks N      then N children that allocate and exit (0 = none)
 *   --exec 1       those children exec /bin/true instead
 *   --odd-stacks 1 then keep 4 MiB allocated in a signal handler running on
 *                  an alternate signal stack, and 4 MiB allocated on a
 *                  coroutine's stack (makecontext), both mmapped: stacks a
 *                  sampler walking its own frames must walk within them */
#define _GNU_SOURCE
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <ucontext.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static void on_signal(int s) { (void)s; stop = 1; }

struct counts {
  uint64_t allocs, frees, alloc_bytes, live_bytes, leaked_bytes;
};

static uint64_t rnd(uint64_t* s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

__attribute__((noinline)) static void* leak_site(size_t n, struct counts* c) {
  void* p = malloc(n);
  memset(p, 3, n);
  c->allocs++;
  c->alloc_bytes += n;
  c->live_bytes += n;
  c->leaked_bytes += n;
  return p;
}

/* Allocates through one member of the family, frees later. */
__attribute__((noinline)) static void* churn_site(size_t n, int kind, struct counts* c) {
  void* p = NULL;
  switch (kind) {
    case 0: p = malloc(n); break;
    case 1: p = calloc(1, n); break;
    case 2: if (posix_memalign(&p, 64, n) != 0) p = NULL; break;
    case 3: p = aligned_alloc(32, (n + 31) & ~(size_t)31); n = (n + 31) & ~(size_t)31; break;
    default: p = memalign(16, n); break;
  }
  if (!p) abort();
  memset(p, 4, n);
  c->allocs++;
  c->alloc_bytes += n;
  return p;
}

/* ---- --odd-stacks -------------------------------------------------------- */
enum { kOddBytes = 4 << 20, kOddStack = 256 << 10 };
static struct counts odd;
__attribute__((noinline)) static void odd_keep(void) {
  void* p = malloc(kOddBytes);
  if (!p) abort();
  memset(p, 5, kOddBytes);
  odd.allocs++;
  odd.alloc_bytes += kOddBytes;
  odd.live_bytes += kOddBytes;
  odd.leaked_bytes += kOddBytes;
}
static void on_usr1(int s) {
  (void)s;
  odd_keep(); /* raised by main itself, outside any malloc */
}
static ucontext_t main_ctx, fiber_ctx;
static void fiber(void) { odd_keep(); }
static void* odd_stack(void) {
  void* st = mmap(NULL, kOddStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (st == MAP_FAILED) abort();
  return st;
}
static void odd_stacks(void) {
  stack_t alt = {.ss_sp = odd_stack(), .ss_size = kOddStack, .ss_flags = 0};
  if (sigaltstack(&alt, NULL) != 0) abort();
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_usr1;
  sa.sa_flags = SA_ONSTACK;
  if (sigaction(SIGUSR1, &sa, NULL) != 0) abort();
  raise(SIGUSR1);
  if (getcontext(&fiber_ctx) != 0) abort();
  fiber_ctx.uc_stack.ss_sp = odd_stack();
  fiber_ctx.uc_stack.ss_size = kOddStack;
  fiber_ctx.uc_link = &main_ctx;
  makecontext(&fiber_ctx, fiber, 0);
  if (swapcontext(&main_ctx, &fiber_ctx) != 0) abort();
}

struct work {
  uint64_t leak, churn, seed;
  struct counts c;
};

static void* run(void* arg) {
  struct work* w = arg;
  enum { kWindow = 256 };
  void* held[kWindow] = {0};
  size_t held_n[kWindow] = {0};
  uint64_t leaked = 0, churned = 0;
  while (leaked < w->leak || churned < w->churn) {
    const size_t n = 64 + rnd(&w->seed) % 8129;
    if (leaked < w->leak && (churned >= w->churn || rnd(&w->seed) % 5 < 2)) {
      (void)leak_site(n, &w->c);
      leaked += n;
      continue;
    }
    const unsigned slot = (unsigned)(rnd(&w->seed) % kWindow);
    if (held[slot]) {
      /* every 8th release goes through realloc: one free and one alloc */
      if (rnd(&w->seed) % 8 == 0) {
        void* q = realloc(held[slot], n);
        if (!q) abort();
        w->c.frees++;
        w->c.allocs++;
        w->c.alloc_bytes += n;
        churned += n;
        free(q);
        w->c.frees++;
      } else {
        free(held[slot]);
        w->c.frees++;
      }
      w->c.live_bytes -= held_n[slot];
    }
    held[slot] = churn_site(n, (int)(rnd(&w->seed) % 5), &w->c);
    held_n[slot] = n;
    w->c.live_bytes += n;
    churned += n;
  }
  for (unsigned i = 0; i < kWindow; ++i)
    if (held[i]) {
      free(held[i]);
      w->c.frees++;
      w->c.live_bytes -= held_n[i];
    }
  return NULL;
}

static void write_truth(const char* path, const char* phase, const struct counts* c) {
  char line[512];
  const int n = snprintf(line, sizeof line,
                         "{\"phase\":\"%s\",\"allocs\":%llu,\"frees\":%llu,\"alloc_bytes\":%llu,"
                         "\"live_bytes\":%llu,\"leaked_bytes\":%llu}\n",
                         phase, (unsigned long long)c->allocs, (unsigned long long)c->frees,
                         (unsigned long long)c->alloc_bytes, (unsigned long long)c->live_bytes,
                         (unsigned long long)c->leaked_bytes);
  const int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0 || write(fd, line, (size_t)n) != n) _exit(3);
  close(fd);
}

int main(int argc, char** argv) {
  uint64_t leak = 40u << 20, churn = 60u << 20;
  int threads = 1, forks = 0, do_exec = 0, odd_on = 0;
  double wait_s = 3;
  const char* truth = "/dev/stdout";
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--leak")) leak = strtoull(argv[i + 1], NULL, 10);
    else if (!strcmp(argv[i], "--churn")) churn = strtoull(argv[i + 1], NULL, 10);
    else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--forks")) forks = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--exec")) do_exec = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--odd-stacks")) odd_on = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--wait")) wait_s = atof(argv[i + 1]);
    else if (!strcmp(argv[i], "--truth")) truth = argv[i + 1];
    else return 2;
  }
  if (threads < 1 || threads > 64) return 2;
  signal(SIGTERM, on_signal);
  struct work ws[64];
  pthread_t tids[64];
  /* Nothing is allocated after the baseline but the work itself: the
   * truth file and the per-thread state are ready before it (thread stacks
   * come from mmap, not malloc). */
  memset(ws, 0, sizeof ws);
  struct counts none = {0};
  write_truth(truth, "baseline", &none);
  usleep((useconds_t)(wait_s * 1e6));
  for (int t = 0; t < threads; ++t) {
    ws[t].leak = leak / (uint64_t)threads;
    ws[t].churn = churn / (uint64_t)threads;
    ws[t].seed = 0x9E3779B97F4A7C15ULL * (uint64_t)(t + 1);
  }
  if (threads == 1) {
    run(&ws[0]);
  } else {
    for (int t = 0; t < threads; ++t)
      if (pthread_create(&tids[t], NULL, run, &ws[t]) != 0) return 4;
    for (int t = 0; t < threads; ++t) pthread_join(tids[t], NULL);
  }
  struct counts total = {0};
  for (int t = 0; t < threads; ++t) {
    total.allocs += ws[t].c.allocs;
    total.frees += ws[t].c.frees;
    total.alloc_bytes += ws[t].c.alloc_bytes;
    total.live_bytes += ws[t].c.live_bytes;
    total.leaked_bytes += ws[t].c.leaked_bytes;
  }
  if (odd_on) {
    odd_stacks();
    total.allocs += odd.allocs;
    total.alloc_bytes += odd.alloc_bytes;
    total.live_bytes += odd.live_bytes;
    total.leaked_bytes += odd.leaked_bytes;
  }
  /* Children: allocate a little and leave (or exec a program that never
   * heard of the sampler). Their allocations are theirs, not ours. */
  int failed = 0;
  for (int i = 0; i < forks; ++i) {
    const pid_t p = fork();
    if (p == 0) {
      if (do_exec) {
        execl("/bin/true", "true", (char*)NULL);
        _exit(5);
      }
      void* x = malloc(1000);
      free(x);
      _exit(0);
    }
    int st = 0;
    if (p < 0 || waitpid(p, &st, 0) != p || !WIFEXITED(st) || WEXITSTATUS(st) != 0) ++failed;
  }
  write_truth(truth, failed ? "children_failed" : "done", &total);
  while (!stop) pause();
  return 0;
}
