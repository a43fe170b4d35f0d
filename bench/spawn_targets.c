/* spawn_targets: starts N small idle processes for memlensd to watch.
 *
 *   spawn_targets --count N --tag TAG [--kib K] [--ready FILE]
 *
 * Each child re-executes this program as `spawn_targets --child --tag=TAG`
 * (so a cmdline regex selects exactly the children), touches K KiB of heap
 * (default 64) so it has some anonymous memory, and sleeps. The parent writes
 * the children's pids, one a line, to FILE (or stdout) once all are running,
 * then waits; SIGTERM/SIGINT to the parent kills every child. Children die
 * with the parent (PR_SET_PDEATHSIG) even if it is SIGKILLed. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static void on_signal(int sig) {
  (void)sig;
  stop = 1;
}

static int child_main(const char* kib_arg) {
  size_t kib = kib_arg ? strtoul(kib_arg, NULL, 10) : 64;
  /* Touch in 4 KiB blocks: real malloc'd chunks, like a small service. */
  for (size_t i = 0; i < kib / 4; ++i) {
    char* p = malloc(4000);
    if (!p) return 1;
    memset(p, (int)i, 4000);
  }
  for (;;) pause();
}

int main(int argc, char** argv) {
  long count = 0;
  const char *tag = NULL, *ready = NULL, *kib = "64";
  int child = 0;
  for (int i = 1; i < argc; ++i) {
    if (!strcmp(argv[i], "--child")) child = 1;
    else if (!strncmp(argv[i], "--tag=", 6)) tag = argv[i] + 6;
    else if (!strncmp(argv[i], "--kib=", 6)) kib = argv[i] + 6;
    else if (!strcmp(argv[i], "--count") && i + 1 < argc) count = strtol(argv[++i], NULL, 10);
    else if (!strcmp(argv[i], "--tag") && i + 1 < argc) tag = argv[++i];
    else if (!strcmp(argv[i], "--kib") && i + 1 < argc) kib = argv[++i];
    else if (!strcmp(argv[i], "--ready") && i + 1 < argc) ready = argv[++i];
    else {
      fprintf(stderr, "usage: spawn_targets --count N --tag TAG [--kib K] [--ready FILE]\n");
      return 2;
    }
  }
  if (child) return child_main(kib);
  if (count <= 0 || !tag) {
    fprintf(stderr, "spawn_targets: --count and --tag are required\n");
    return 2;
  }

  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);

  char tag_arg[256], kib_arg[64];
  snprintf(tag_arg, sizeof tag_arg, "--tag=%s", tag);
  snprintf(kib_arg, sizeof kib_arg, "--kib=%s", kib);
  pid_t* pids = calloc((size_t)count, sizeof *pids);
  const pid_t parent = getpid();
  for (long i = 0; i < count; ++i) {
    pid_t p = fork();
    if (p < 0) {
      fprintf(stderr, "spawn_targets: fork %ld: %s\n", i, strerror(errno));
      stop = 1;
      break;
    }
    if (p == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(0);
      char* args[] = {argv[0], "--child", tag_arg, kib_arg, NULL};
      execv("/proc/self/exe", args);
      _exit(127);
    }
    pids[i] = p;
  }

  FILE* out = stdout;
  /* Write to FILE.tmp then rename, so a reader never sees a partial list. */
  char tmp[4096];
  if (ready) {
    snprintf(tmp, sizeof tmp, "%s.tmp", ready);
    out = fopen(tmp, "w");
  }
  if (!out) out = stdout;
  for (long i = 0; i < count && pids[i] > 0; ++i) fprintf(out, "%d\n", (int)pids[i]);
  if (out != stdout) {
    fclose(out);
    rename(tmp, ready);
  } else {
    fflush(stdout);
  }

  while (!stop) pause();
  for (long i = 0; i < count; ++i)
    if (pids[i] > 0) kill(pids[i], SIGKILL);
  for (long i = 0; i < count; ++i)
    if (pids[i] > 0) waitpid(pids[i], NULL, 0);
  free(pids);
  return 0;
}
