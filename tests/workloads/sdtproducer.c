/* sdtproducer: a program that speaks OpenTelemetry's memory USDT contract
 * itself, with <sys/sdt.h> and no semaphore (not memlens's sampler): it
 * allocates 1000 blocks of 4 KiB, fires otel_memory:alloc for every 10th
 * with weight 40960 (the ten blocks it stands for), frees the first 40
 * sampled ones (firing otel_memory:free), and then holds the rest. Truth:
 * the sampled space still held, exactly. It waits for the file named by
 * its argument to exist, so memlensd attaches before the first probe. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sdt.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static void on_signal(int s) { (void)s; stop = 1; }

__attribute__((noinline)) static void* producer_alloc(size_t n, int sampled) {
  void* p = malloc(n);
  memset(p, 1, n);
  if (sampled) DTRACE_PROBE3(otel_memory, alloc, p, (uint64_t)n, (uint64_t)(10 * n));
  return p;
}

__attribute__((noinline)) static void producer_free(void* p, int sampled) {
  if (sampled) DTRACE_PROBE1(otel_memory, free, p);
  free(p);
}

int main(int argc, char** argv) {
  const char* go = argc > 1 ? argv[1] : NULL; /* a file whose existence starts the work */
  signal(SIGTERM, on_signal);
  while (go && access(go, F_OK) != 0 && !stop) usleep(20000);
  static void* blocks[1000];
  for (int i = 0; i < 1000; ++i) blocks[i] = producer_alloc(4096, i % 10 == 0);
  int freed = 0;
  for (int i = 0; i < 1000 && freed < 40; i += 10, ++freed) {
    producer_free(blocks[i], 1);
    blocks[i] = NULL;
  }
  printf("{\"inuse_space\":%d,\"inuse_objects\":%d,\"alloc_space\":%d}\n", (100 - 40) * 40960, (100 - 40) * 10,
         100 * 40960);
  fflush(stdout);
  while (!stop) pause();
  return 0;
}
