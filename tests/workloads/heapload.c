/* heapload: holds a known amount of heap (blocks of random sizes), churns it
 * (frees a random block and allocates its replacement, of the same size
 * unless --resize 1), optionally leaks at a
 * fixed rate, and writes its own ground truth once a second as one JSON line:
 * the bytes it holds and leaked, the replacements (malloc/free pairs) done
 * since the warm-up, its RSS (/proc/self/statm), peak RSS
 * (getrusage) and glibc's own view (mallinfo2). */
#define _GNU_SOURCE
#include <malloc.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static uint64_t rng = 88172645463325252ull;
static uint64_t next_rand(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double wall(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The steady set: slots of random sizes whose sum stays near --hold. */
struct steady_set {
  char** slot;
  size_t* size;
  size_t n, live, min_sz, max_sz;
  int resize;
};

/* One churn step: free a random block and allocate its replacement. */
static void replace_one(struct steady_set* s) {
  size_t i = next_rand() % s->n;
  s->live -= s->size[i];
  free(s->slot[i]);
  if (s->resize) s->size[i] = s->min_sz + next_rand() % (s->max_sz - s->min_sz + 1);
  s->slot[i] = malloc(s->size[i]);
  memset(s->slot[i], 1, s->size[i]);
  s->live += s->size[i];
}

static void usage(void) {
  fprintf(stderr,
          "usage: heapload [--hold BYTES] [--min B] [--max B] [--churn OPS_PER_S]\n"
          "                [--leak BYTES_PER_S] [--leak-after S] [--leak-block B]\n"
          "                [--truth FILE] [--duration S] [--warmup REPLACEMENTS_PER_SLOT]\n"
          "                [--resize 0|1]  (1: each replacement draws a new size)\n");
  exit(2);
}

int main(int argc, char** argv) {
  size_t hold = 64u << 20, min_sz = 512, max_sz = 8192, leak_block = 1024;
  size_t warmup = 60;
  int resize = 0; /* 1: a replacement gets a new random size */
  double churn = 20000, leak = 0, leak_after = 0, duration = 0;
  const char* truth = NULL;
  for (int i = 1; i < argc; ++i) {
    if (i + 1 >= argc) usage();
    const char* k = argv[i];
    const char* v = argv[++i];
    if (!strcmp(k, "--hold")) hold = strtoull(v, NULL, 10);
    else if (!strcmp(k, "--min")) min_sz = strtoull(v, NULL, 10);
    else if (!strcmp(k, "--max")) max_sz = strtoull(v, NULL, 10);
    else if (!strcmp(k, "--churn")) churn = atof(v);
    else if (!strcmp(k, "--leak")) leak = atof(v);
    else if (!strcmp(k, "--leak-after")) leak_after = atof(v);
    else if (!strcmp(k, "--leak-block")) leak_block = strtoull(v, NULL, 10);
    else if (!strcmp(k, "--truth")) truth = v;
    else if (!strcmp(k, "--duration")) duration = atof(v);
    else if (!strcmp(k, "--warmup")) warmup = strtoull(v, NULL, 10);
    else if (!strcmp(k, "--resize")) resize = atoi(v);
    else usage();
  }
  if (min_sz == 0 || max_sz < min_sz || leak_block == 0) usage();
  signal(SIGTERM, on_signal);
  signal(SIGINT, on_signal);

  const size_t mean = (min_sz + max_sz) / 2;
  const size_t nslots = hold / mean ? hold / mean : 1;
  struct steady_set set = {calloc(nslots, sizeof(char*)), calloc(nslots, sizeof(size_t)), nslots, 0, min_sz, max_sz,
                           resize};
  for (size_t i = 0; i < nslots; ++i) {
    set.size[i] = min_sz + next_rand() % (max_sz - min_sz + 1);
    set.slot[i] = malloc(set.size[i]);
    memset(set.slot[i], (int)i, set.size[i]);
    set.live += set.size[i];
  }

  /* Warm-up: glibc's free lists settle after some tens of replacements per
   * slot; doing them now keeps the early fragmentation growth out of the
   * series a leak detector watches. */
  for (size_t n = 0; n < warmup * nslots; ++n) replace_one(&set);

  FILE* out = truth ? fopen(truth, "a") : stdout;
  if (!out) {
    perror("truth file");
    return 1;
  }
  const long page = sysconf(_SC_PAGESIZE);
  const double start = now();
  double next_report = start, leak_debt = 0, churn_debt = 0, last = start;
  size_t leaked = 0, leaked_blocks = 0, replacements = 0; /* after warm-up */
  while (!stop) {
    const double t = now();
    if (duration > 0 && t - start >= duration) break;
    const double dt = t - last;
    last = t;
    churn_debt += churn * dt;
    for (; churn_debt >= 1; churn_debt -= 1) {
      replace_one(&set);
      ++replacements;
    }
    if (leak > 0 && t - start >= leak_after) {
      leak_debt += leak * dt;
      for (; leak_debt >= (double)leak_block; leak_debt -= (double)leak_block) {
        char* p = malloc(leak_block); /* never freed: the leak */
        memset(p, 2, leak_block);
        leaked += leak_block;
        ++leaked_blocks;
      }
    }
    if (t >= next_report) {
      long statm_size = 0, statm_res = 0;
      FILE* f = fopen("/proc/self/statm", "r");
      if (f) {
        if (fscanf(f, "%ld %ld", &statm_size, &statm_res) != 2) statm_res = 0;
        fclose(f);
      }
      struct rusage ru;
      getrusage(RUSAGE_SELF, &ru);
      struct mallinfo2 mi = mallinfo2();
      fprintf(out,
              "{\"time\":%.3f,\"elapsed\":%.3f,\"live_bytes\":%zu,\"leaked_bytes\":%zu,"
              "\"leaked_blocks\":%zu,\"replacements\":%zu,\"rss_bytes\":%ld,\"rss_peak_bytes\":%ld,\"arena\":%zu,"
              "\"uordblks\":%zu,\"fordblks\":%zu,\"hblkhd\":%zu,\"leaking\":%s}\n",
              wall(), t - start, set.live + leaked, leaked, leaked_blocks, replacements, statm_res * page, ru.ru_maxrss * 1024L,
              mi.arena, mi.uordblks, mi.fordblks, mi.hblkhd,
              leak > 0 && t - start >= leak_after ? "true" : "false");
      fflush(out);
      next_report += 1.0;
    }
    usleep(2000);
  }
  return 0;
}
