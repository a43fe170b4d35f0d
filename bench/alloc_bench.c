/* Malloc-heavy benchmark workload for bench/alloc.sh: a pool of live blocks
 * of mixed sizes (16 B - 4 KiB), each step frees a random one and allocates
 * a replacement, touching it. Prints the cost per malloc/free pair:
 *   pairs=N wall_ns_per_pair=X cpu_ns_per_pair=Y
 * usage: alloc_bench [--pairs N] [--live N] [--wait-ms N] [--rate PAIRS_PER_S] [--wait-usdt 1]
 * --wait-usdt 1: wait (up to 10 s, after --wait-ms) until a preloaded
 * libmemlens-sampler's otel_memory probes are attached (their semaphore is
 * raised), so a timed run is never one the consumer had not reached yet;
 * prints usdt=attached or usdt=absent. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dlfcn.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_s(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

int main(int argc, char** argv) {
  long pairs = 1000000, live = 4096, wait_ms = 0, wait_usdt = 0;
  double rate = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--pairs")) pairs = atol(argv[i + 1]);
    else if (!strcmp(argv[i], "--live")) live = atol(argv[i + 1]);
    else if (!strcmp(argv[i], "--wait-ms")) wait_ms = atol(argv[i + 1]);
    else if (!strcmp(argv[i], "--rate")) rate = atof(argv[i + 1]);
    else if (!strcmp(argv[i], "--wait-usdt")) wait_usdt = atol(argv[i + 1]);
  }
  void** pool = calloc((size_t)live, sizeof *pool);
  if (!pool) return 1;
  uint64_t r = 88172645463325252ull;
  for (long i = 0; i < live; i++) {
    pool[i] = malloc(16 + (size_t)(i % 4080));
    if (!pool[i]) return 1;
  }
  if (wait_ms > 0) usleep((useconds_t)(wait_ms * 1000));
  const char* usdt = "";
  if (wait_usdt) {
    volatile unsigned short* sem = dlsym(RTLD_DEFAULT, "otel_memory_alloc_semaphore");
    for (int i = 0; sem && !*sem && i < 1000; i++) usleep(10000);
    usdt = sem && *sem ? " usdt=attached" : " usdt=absent";
  }
  double t0 = now_s(), c0 = cpu_s();
  for (long i = 0; i < pairs; i++) {
    r ^= r << 13;
    r ^= r >> 7;
    r ^= r << 17;
    size_t idx = (size_t)(r % (uint64_t)live);
    size_t n = 16 + (size_t)((r >> 20) % 4080);
    free(pool[idx]);
    char* p = malloc(n);
    if (!p) return 1;
    p[0] = 1;
    p[n - 1] = 1;
    pool[idx] = p;
    if (rate > 0 && (i % 1000) == 999) {
      /* Hold the rate: sleep until this batch's due time. */
      double due = t0 + (double)(i + 1) / rate, t = now_s();
      if (due > t) usleep((useconds_t)((due - t) * 1e6));
    }
  }
  double wall = now_s() - t0, cpu = cpu_s() - c0;
  printf("pairs=%ld wall_ns_per_pair=%.1f cpu_ns_per_pair=%.1f%s\n", pairs, wall * 1e9 / (double)pairs,
         cpu * 1e9 / (double)pairs, usdt);
  return 0;
}
