/* Allocation workload with its own ground truth. Keeps a steady set of
 * blocks, replaces random ones (malloc, calloc, realloc, posix_memalign,
 * aligned_alloc, a few mmapped large blocks), optionally leaks at a fixed
 * rate, optionally punches holes (frees every other block), then stops
 * changing anything and reports, one JSON line per 200 ms:
 *   live_chunk_bytes  sum of glibc chunk sizes of its live blocks
 *                     (malloc_usable_size + header), what memlens counts
 *   live_req_bytes    sum of requested sizes (what it counts for jemalloc)
 *   arena, fordblks, hblkhd  mallinfo2()
 *   phase             "churn" or "steady" (nothing changes any more)
 * Nothing here allocates behind the count's back: output goes through
 * write(2) from a stack buffer, never stdio.
 *
 * usage: alloc_truth --truth FILE [--blocks N] [--ops N] [--leak N]
 *                    [--holes] [--large] [--wait-ms N] [--exit-after-ms N]
 *                    [--quick]   (one malloc/free and exit: exec-hold churn)
 *                    [--fork]    (after the churn, fork: the child churns
 *                                 again and reports to FILE.child)
 *                    [--no-header] (an allocator without glibc's size field
 *                                 is preloaded: live_chunk_bytes are usable
 *                                 sizes) */
#define _GNU_SOURCE
#include <fcntl.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <unistd.h>

#ifdef ALLOC_TRUTH_JEMALLOC
#include <jemalloc/jemalloc.h>
#endif

struct block {
  void* p;
  size_t req;
  size_t chunk;
};

static struct block* slots;
static size_t nslots;
static uint64_t live_chunk, live_req, nblocks;
static uint64_t rng = 88172645463325252ull;

static uint64_t next_rand(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

/* The chunk glibc handed out: usable size plus the size field, plus the
 * prev_size field for mmapped chunks (bit 1 of the header). */
static int no_header; /* --no-header: another allocator is preloaded */

static size_t chunk_of(void* p) {
  if (no_header) return malloc_usable_size(p);
#if defined(ALLOC_TRUTH_JEMALLOC)
  /* jemalloc has no size field. */
  return malloc_usable_size(p);
#else
  /* glibc's size field, just before the block (through an integer so the
   * compiler does not see an out-of-bounds access) */
  const volatile size_t* h = (const volatile size_t*)((uintptr_t)p - sizeof(size_t));
  size_t hdr = *h;
  return malloc_usable_size(p) + ((hdr & 2) ? 16 : 8);
#endif
}

static size_t pick_size(int large) {
  uint64_t r = next_rand() % 1000;
  if (large && r < 3) return 200000 + next_rand() % 300000; /* mmapped */
  if (r < 600) return 1 + next_rand() % 256;
  if (r < 950) return 257 + next_rand() % 4000;
  return 4096 + next_rand() % 60000;
}

static void take(struct block* b, void* p, size_t req) {
  b->p = p;
  b->req = req;
  b->chunk = chunk_of(p);
  memset(p, 0xab, req); /* touch: resident, like a real user */
  live_chunk += b->chunk;
  live_req += req;
  nblocks++;
}

static void drop(struct block* b) {
  if (!b->p) return;
  live_chunk -= b->chunk;
  live_req -= b->req;
  nblocks--;
  free(b->p);
  b->p = NULL;
}

static void alloc_into(struct block* b, int large) {
  size_t n = pick_size(large);
  uint64_t kind = next_rand() % 100;
  void* p = NULL;
  if (kind < 70) {
    p = malloc(n);
  } else if (kind < 80) {
    p = calloc(1, n);
  } else if (kind < 90 && b->p) {
    /* resize in place of the old block */
    live_chunk -= b->chunk;
    live_req -= b->req;
    nblocks--;
    p = realloc(b->p, n);
    b->p = NULL;
    if (!p) abort();
    take(b, p, n);
    return;
  } else if (kind < 95) {
    if (posix_memalign(&p, 64, n) != 0) p = NULL;
  } else {
    p = aligned_alloc(32, (n + 31) & ~(size_t)31);
    n = (n + 31) & ~(size_t)31;
  }
  if (!p) abort();
  drop(b);
  take(b, p, n);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void report(int fd, const char* phase, uint64_t seq) {
  char line[512];
#ifdef ALLOC_TRUTH_JEMALLOC
  unsigned long long arena = 0, fordblks = 0, hblkhd = 0;
#else
  struct mallinfo2 mi = mallinfo2();
  unsigned long long arena = mi.arena, fordblks = mi.fordblks, hblkhd = mi.hblkhd;
#endif
  int n = snprintf(line, sizeof line,
                   "{\"seq\":%llu,\"phase\":\"%s\",\"live_chunk_bytes\":%llu,\"live_req_bytes\":%llu,"
                   "\"blocks\":%llu,\"arena\":%llu,\"fordblks\":%llu,\"hblkhd\":%llu}\n",
                   (unsigned long long)seq, phase, (unsigned long long)live_chunk,
                   (unsigned long long)live_req, (unsigned long long)nblocks, arena, fordblks, hblkhd);
  if (n > 0 && write(fd, line, (size_t)n) < 0) _exit(3);
}

int main(int argc, char** argv) {
  const char* truth = NULL;
  long blocks = 20000, ops = 200000, leak = 0, wait_ms = 0, exit_after_ms = -1;
  int holes = 0, large = 0, quick = 0, do_fork = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--truth") && i + 1 < argc) truth = argv[++i];
    else if (!strcmp(argv[i], "--blocks") && i + 1 < argc) blocks = atol(argv[++i]);
    else if (!strcmp(argv[i], "--ops") && i + 1 < argc) ops = atol(argv[++i]);
    else if (!strcmp(argv[i], "--leak") && i + 1 < argc) leak = atol(argv[++i]);
    else if (!strcmp(argv[i], "--wait-ms") && i + 1 < argc) wait_ms = atol(argv[++i]);
    else if (!strcmp(argv[i], "--exit-after-ms") && i + 1 < argc) exit_after_ms = atol(argv[++i]);
    else if (!strcmp(argv[i], "--holes")) holes = 1;
    else if (!strcmp(argv[i], "--large")) large = 1;
    else if (!strcmp(argv[i], "--quick")) quick = 1;
    else if (!strcmp(argv[i], "--fork")) do_fork = 1;
    else if (!strcmp(argv[i], "--no-header")) no_header = 1;
    else {
      static const char msg[] = "alloc_truth: bad argument\n";
      if (write(2, msg, sizeof msg - 1) < 0) return 2;
      return 2;
    }
  }
  if (quick) {
    void* p = malloc(100);
    free(p);
    return 0;
  }
  if (wait_ms > 0) usleep((useconds_t)wait_ms * 1000);
  int fd = truth ? open(truth, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644) : 1;
  if (fd < 0) return 2;
  nslots = (size_t)blocks;
  slots = calloc(nslots, sizeof *slots);
  if (!slots) return 1;
  /* The slot table is a block too. */
  live_chunk += chunk_of(slots);
  live_req += nslots * sizeof *slots;
  nblocks++;

  uint64_t seq = 0;
  double last = now_s();
  for (size_t i = 0; i < nslots; i++) alloc_into(&slots[i], large);
  for (long op = 0; op < ops; op++) {
    alloc_into(&slots[next_rand() % nslots], large);
    if (leak > 0 && op % 100 == 0) {
      /* Leak: a block nobody frees, counted as live. */
      void* p = malloc((size_t)leak);
      if (!p) abort();
      memset(p, 1, (size_t)leak);
      live_chunk += chunk_of(p);
      live_req += (size_t)leak;
      nblocks++;
    }
    if ((op & 1023) == 0 && now_s() - last > 0.2) {
      report(fd, "churn", seq++);
      last = now_s();
    }
  }
  if (do_fork && truth) {
    /* The child inherits every block and the counts of them. */
    pid_t child = fork();
    if (child < 0) return 1;
    if (child == 0) {
      /* Dies with its parent (tests kill the parent only). */
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() == 1) _exit(0);
      char path[4096];
      snprintf(path, sizeof path, "%s.child", truth);
      close(fd);
      fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      if (fd < 0) _exit(2);
      for (long op = 0; op < ops; op++) alloc_into(&slots[next_rand() % nslots], large);
    }
  }
  if (holes) {
    /* Every other block freed: free chunks between live ones cannot
     * coalesce, so the heap keeps its size with half of it free. */
    for (size_t i = 0; i < nslots; i += 2) drop(&slots[i]);
  }
  double steady_since = now_s();
  for (;;) {
    report(fd, "steady", seq++);
    usleep(200 * 1000);
    if (exit_after_ms >= 0 && (now_s() - steady_since) * 1000 > exit_after_ms) break;
  }
  return 0;
}
