/* heap_truth: a glibc heap of a known shape whose own mallinfo2() is the
 * ground truth for reading the allocator's books from outside.
 *
 * Each of --threads worker threads (0: the main thread alone) allocates
 * --blocks blocks of random sizes in [--min, --max] (in its own arena when
 * threads run), optionally frees every other one (--holes), the main thread
 * allocates --large blocks of 1 MiB (mmapped chunks), then the threads churn:
 * --churn malloc/free replacements per second in all (random slot; same
 * size, or with --resize a new random size, which keeps glibc's bins
 * busy). The main thread samples mallinfo2() every 5 ms and writes one JSON
 * line per --report-ms (default 250) to --truth:
 *   time            wall clock at the end of the window (seconds)
 *   window_start    wall clock at its start
 *   phase           "setup" or "steady" (all blocks in place; churn runs)
 *   arena ... keepcost   mallinfo2() at the end of the window
 *   inuse_min/max   min and max of uordblks + hblkhd over the window
 *   frag_min/max    min and max of fordblks / arena over the window
 *   ops             replacements done so far
 * Lines are written with write(2) from a stack buffer: reporting allocates
 * nothing. Runs until killed or --duration seconds. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long nthreads = 0, nblocks = 20000, min_sz = 16, max_sz = 2048, nlarge = 0;
static int holes = 0, resize = 0;
static double churn = 0, duration = 0;
static atomic_long ops;
static atomic_int ready;
static atomic_int stop;

static double mono(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double wall(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t step(uint64_t* s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

struct worker {
  pthread_t th;
  uint64_t rng;
  char** slot;
  size_t* size;
  double rate; /* replacements per second */
};

static void fill(struct worker* w) {
  w->slot = calloc((size_t)nblocks, sizeof(char*));
  w->size = calloc((size_t)nblocks, sizeof(size_t));
  if (!w->slot || !w->size) abort();
  for (long i = 0; i < nblocks; ++i) {
    w->size[i] = (size_t)min_sz + step(&w->rng) % (size_t)(max_sz - min_sz + 1);
    w->slot[i] = malloc(w->size[i]);
    if (!w->slot[i]) abort();
    memset(w->slot[i], (int)i, w->size[i]);
  }
  if (holes)
    for (long i = 0; i < nblocks; i += 2) {
      free(w->slot[i]);
      w->slot[i] = NULL;
    }
}

/* One replacement: free a random block, allocate its successor. */
static void replace(struct worker* w) {
  long i = (long)(step(&w->rng) % (uint64_t)nblocks);
  if (holes) i |= 1; /* the holes stay holes */
  if (i >= nblocks) return;
  free(w->slot[i]);
  if (resize) w->size[i] = (size_t)min_sz + step(&w->rng) % (size_t)(max_sz - min_sz + 1);
  w->slot[i] = malloc(w->size[i]);
  if (!w->slot[i]) abort();
  w->slot[i][0] = 1;
  atomic_fetch_add_explicit(&ops, 1, memory_order_relaxed);
}

static void churn_loop(struct worker* w) {
  const double start = mono();
  long done = 0;
  while (!atomic_load(&stop)) {
    if (w->rate <= 0) {
      usleep(50000);
      continue;
    }
    /* Paced in bursts: as many as the rate allows by now, then a nap. */
    const long due = (long)((mono() - start) * w->rate);
    for (; done < due; ++done) replace(w);
    usleep(1000);
  }
}

static void* thread_main(void* arg) {
  struct worker* w = arg;
  fill(w);
  atomic_fetch_add(&ready, 1);
  churn_loop(w);
  return NULL;
}

static void on_signal(int sig) {
  (void)sig;
  atomic_store(&stop, 1);
}

int main(int argc, char** argv) {
  const char* truth = NULL;
  long report_ms = 250;
  for (int i = 1; i < argc; ++i) {
    const char* k = argv[i];
    if (!strcmp(k, "--holes") || !strcmp(k, "--resize")) {
      *(!strcmp(k, "--holes") ? &holes : &resize) = 1;
      continue;
    }
    if (i + 1 >= argc) goto usage;
    const char* v = argv[++i];
    if (!strcmp(k, "--truth")) truth = v;
    else if (!strcmp(k, "--threads")) nthreads = atol(v);
    else if (!strcmp(k, "--blocks")) nblocks = atol(v);
    else if (!strcmp(k, "--min")) min_sz = atol(v);
    else if (!strcmp(k, "--max")) max_sz = atol(v);
    else if (!strcmp(k, "--large")) nlarge = atol(v);
    else if (!strcmp(k, "--churn")) churn = atof(v);
    else if (!strcmp(k, "--duration")) duration = atof(v);
    else if (!strcmp(k, "--report-ms")) report_ms = atol(v);
    else goto usage;
  }
  if (!truth || nblocks < 2 || min_sz < 1 || max_sz < min_sz || nthreads < 0 || report_ms < 10) goto usage;
  signal(SIGTERM, on_signal);
  signal(SIGINT, on_signal);
  int fd = open(truth, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return 2;

  const long nw = nthreads > 0 ? nthreads : 1;
  struct worker* ws = calloc((size_t)nw, sizeof *ws);
  if (!ws) return 1;
  for (long t = 0; t < nw; ++t) {
    ws[t].rng = 88172645463325252ull + (uint64_t)t * 7919;
    ws[t].rate = churn / (double)nw;
  }
  if (nthreads > 0) {
    for (long t = 0; t < nthreads; ++t)
      if (pthread_create(&ws[t].th, NULL, thread_main, &ws[t]) != 0) return 1;
  } else {
    fill(&ws[0]);
    atomic_fetch_add(&ready, 1);
  }
  for (long i = 0; i < nlarge; ++i) {
    char* p = malloc(1u << 20); /* above the mmap threshold: a chunk of its own */
    if (!p) return 1;
    memset(p, 3, 1u << 20);
  }
  /* Single-threaded churn runs on the main thread between samples. */
  const double start = mono();
  double window_start = wall(), next_report = mono() + (double)report_ms / 1000;
  double inuse_min = 1e300, inuse_max = 0, frag_min = 1e300, frag_max = 0;
  long main_done = 0;
  while (!atomic_load(&stop)) {
    if (duration > 0 && mono() - start >= duration) break;
    if (nthreads == 0 && ws[0].rate > 0) {
      const long due = (long)((mono() - start) * ws[0].rate);
      for (; main_done < due; ++main_done) replace(&ws[0]);
    }
    struct mallinfo2 mi = mallinfo2();
    const double inuse = (double)(mi.uordblks + mi.hblkhd);
    const double frag = mi.arena ? (double)mi.fordblks / (double)mi.arena : 0;
    if (inuse < inuse_min) inuse_min = inuse;
    if (inuse > inuse_max) inuse_max = inuse;
    if (frag < frag_min) frag_min = frag;
    if (frag > frag_max) frag_max = frag;
    if (mono() >= next_report) {
      const int steady = atomic_load(&ready) == nw;
      const double now = wall();
      char line[768];
      int n = snprintf(line, sizeof line,
                       "{\"time\":%.3f,\"window_start\":%.3f,\"phase\":\"%s\",\"arena\":%zu,\"ordblks\":%zu,"
                       "\"smblks\":%zu,\"hblks\":%zu,\"hblkhd\":%zu,\"fsmblks\":%zu,\"uordblks\":%zu,"
                       "\"fordblks\":%zu,\"keepcost\":%zu,\"inuse_min\":%.0f,\"inuse_max\":%.0f,"
                       "\"frag_min\":%.6f,\"frag_max\":%.6f,\"ops\":%ld}\n",
                       now, window_start, steady ? "steady" : "setup", mi.arena, mi.ordblks, mi.smblks, mi.hblks,
                       mi.hblkhd, mi.fsmblks, mi.uordblks, mi.fordblks, mi.keepcost, inuse_min, inuse_max, frag_min,
                       frag_max, atomic_load(&ops));
      if (n > 0 && write(fd, line, (size_t)n) < 0) return 3;
      window_start = now;
      inuse_min = frag_min = 1e300;
      inuse_max = frag_max = 0;
      next_report += (double)report_ms / 1000;
    }
    usleep(5000);
  }
  atomic_store(&stop, 1);
  if (nthreads > 0)
    for (long t = 0; t < nthreads; ++t) pthread_join(ws[t].th, NULL);
  return 0;

usage:
  fprintf(stderr,
          "usage: heap_truth --truth FILE [--threads N] [--blocks N] [--min B] [--max B] [--holes]\n"
          "                  [--large N] [--churn OPS_PER_S] [--resize] [--duration S] [--report-ms MS]\n");
  return 2;
}
