/* proc_read_cost: what one /proc collection tick costs per target, and what
 * cheaper strategies would save. Reads the same files memlensd's proc
 * collector reads (stat, status, smaps_rollup, maps) for the pids given on
 * stdin, for TICKS rounds, under several strategies, and prints the CPU time
 * (user + system, getrusage) per target per tick for each:
 *
 *   open-read-close   what memlensd does now: 4 opens per target per tick
 *   keep-fds          the 4 files opened once, re-read with pread(fd, 0)
 *   rollup-every-5    open-read-close, smaps_rollup and maps every 5th tick
 *                     (RSS from status in between)
 *   keep-fds+every-5  both
 *
 *   proc_read_cost [TICKS] < pids */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

static const char* kFiles[4] = {"stat", "status", "smaps_rollup", "maps"};
static char buf[1 << 16];

static double cpu_now(void) {
  struct rusage r;
  getrusage(RUSAGE_SELF, &r);
  return (double)r.ru_utime.tv_sec + r.ru_utime.tv_usec / 1e6 + (double)r.ru_stime.tv_sec + r.ru_stime.tv_usec / 1e6;
}

static void drain_path(int pid, const char* f) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/%s", pid, f);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  while (read(fd, buf, sizeof buf) > 0) {
  }
  close(fd);
}

static void drain_fd(int fd) {
  off_t off = 0;
  ssize_t n;
  while ((n = pread(fd, buf, sizeof buf, off)) > 0) off += n;
}

int main(int argc, char** argv) {
  int ticks = argc > 1 ? atoi(argv[1]) : 50;
  int pids[100000], n = 0;
  while (n < 100000 && scanf("%d", &pids[n]) == 1) ++n;
  if (n == 0) {
    fprintf(stderr, "proc_read_cost: no pids on stdin\n");
    return 2;
  }
  int* fds = calloc((size_t)n * 4, sizeof *fds);
  for (int i = 0; i < n; ++i)
    for (int f = 0; f < 4; ++f) {
      char path[64];
      snprintf(path, sizeof path, "/proc/%d/%s", pids[i], kFiles[f]);
      fds[i * 4 + f] = open(path, O_RDONLY | O_CLOEXEC);
    }

  printf("| strategy | CPU us per target per tick | CPU %% of a core at 1 s tick, %d targets |\n", n);
  printf("|---|---:|---:|\n");
  for (int s = 0; s < 4; ++s) {
    const int keep = s & 1, every5 = s & 2;
    static const char* names[4] = {"open-read-close (now)", "keep-fds", "rollup+maps every 5th tick", "keep-fds + every 5th"};
    double c0 = cpu_now();
    for (int t = 0; t < ticks; ++t)
      for (int i = 0; i < n; ++i)
        for (int f = 0; f < 4; ++f) {
          if (every5 && f >= 2 && t % 5) continue;
          if (keep) drain_fd(fds[i * 4 + f]);
          else drain_path(pids[i], kFiles[f]);
        }
    double us = (cpu_now() - c0) * 1e6 / ticks / n;
    printf("| %s | %.1f | %.2f |\n", names[s], us, us * n / 1e6 * 100);
  }
  return 0;
}
