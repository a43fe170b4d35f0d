/* libmemlens-sampler.so: samples a process's allocations from inside it and
 * fires OpenTelemetry's memory USDT contract for the sampled ones,
 *   otel_memory:alloc(ptr, size, weight)   weight: bytes this sample stands for
 *   otel_memory:free(ptr)                  only for blocks fired as sampled
 * and keeps exact per-thread counts in a page memlensd reads from outside
 * (memlens_sampler.h). LD_PRELOAD it, or link it in.
 *
 * Fast path of every allocation: a thread-local decrement and a branch (the
 * jemalloc/tcmalloc "bytes until next sample" counter, refilled from an
 * exponential draw of mean MEMLENS_SAMPLER_INTERVAL bytes, 512 KiB by
 * default), plus two plain increments of this thread's slot. A sampled
 * allocation walks the thread's frame pointers (within the thread's own
 * stack) and adds its weight to that stack's site in a table memlensd reads
 * from outside, as it reads the counts: no kernel entry. Its address goes
 * into a small open-addressing table, so a free asks one slot of it (almost
 * always empty) and goes on. The contract's probes fire too, but only while
 * a consumer is attached to them (their semaphores). Nothing here allocates;
 * the real functions are glibc's __libc_* entry points, so there is no
 * dlsym, and no recursion at start-up.
 *
 * Environment (read once, at load):
 *   MEMLENS_SAMPLER=0             count only, never sample
 *   MEMLENS_SAMPLER_INTERVAL=N    mean bytes between samples (default 524288)
 *   MEMLENS_SAMPLER_SITES=N       call sites kept (default and most 4096)
 *   MEMLENS_SAMPLER_CHILDREN=0    drop this library from LD_PRELOAD, so the
 *                                 programs this one execs run without it */
#define _GNU_SOURCE
#define _SDT_HAS_SEMAPHORES 1
#include "sampler/memlens_sampler.h"
#include "sampler/memlens_sampler_hooks.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sdt.h>
#if defined(__x86_64__)
/* The probe sites are 5-byte nops (nopl 0x0(%rax,%rax,1)), not sdt.h's
 * 1-byte one: the kernel (6.18+) turns a uprobe on a 5-byte nop into a call
 * to a trampoline after its first hit (a system call instead of an int3
 * trap). Written without commas, which sdt.h's macros would split. */
#undef _SDT_NOP
#define _SDT_NOP .4byte 0x00441f0f; .byte 0x00
#endif
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)

extern void* __libc_malloc(size_t);
extern void __libc_free(void*);
extern void* __libc_calloc(size_t, size_t);
extern void* __libc_realloc(void*, size_t);
extern void* __libc_memalign(size_t, size_t);
extern void* __libc_valloc(size_t);
extern void* __libc_pvalloc(size_t);

/* The USDT semaphores: the kernel raises them while a probe is attached
 * (libbpf passes their offsets), so a process nobody watches skips the
 * table and the probe altogether. */
EXPORT volatile unsigned short otel_memory_alloc_semaphore __attribute__((section(".probes")));
EXPORT volatile unsigned short otel_memory_free_semaphore __attribute__((section(".probes")));

EXPORT struct memlens_sampler_page memlens_sampler_page __attribute__((aligned(4096)));
static struct memlens_sampler_page* const page = &memlens_sampler_page;

/* ---- per thread ------------------------------------------------------ */

struct thread_state {
  int64_t until_sample; /* bytes left before the next sample; <= 0: slow path */
  struct memlens_sampler_slot* slot;
  uint64_t rng;
  uint16_t slot_index;
  uint8_t shared;   /* on slot 0 with the overflow threads: atomic adds */
  uint8_t in_slow;  /* inside the slow path (a signal handler's malloc must not re-enter) */
  uint8_t map_reads; /* reads of /proc/self/maps for a stack other than the known one */
  uintptr_t stack_lo, stack_hi; /* the mapping the last walk started in */
};
/* initial-exec: a fixed offset from the thread pointer, no __tls_get_addr,
 * which could allocate; a preloaded library gets static TLS. */
static __thread struct thread_state ts __attribute__((tls_model("initial-exec")));

static uint8_t slot_owned[MEMLENS_SAMPLER_SLOTS]; /* 1: a live thread owns it */
static pthread_key_t exit_key;
static int ready;
static double mean_interval = 524288.0;
static int sampling = 1;
static uint32_t sites_max = MEMLENS_SAMPLER_MAX_SITES;

static uint64_t next_rand(uint64_t* s) {
  /* xorshift64*: quality enough for sampling intervals, no state to share */
  uint64_t x = *s;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *s = x;
  return x * 0x2545F4914F6CDD1DULL;
}

/* Exponential with the configured mean: the gap to the next sampled byte. */
static int64_t draw_interval(void) {
  const double u = ((double)(next_rand(&ts.rng) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
  const double v = -log(u) * mean_interval;
  return v < 1.0 ? 1 : (v > 1e15 ? (int64_t)1e15 : (int64_t)v);
}

static void release_slot(void* unused) {
  (void)unused;
  if (ts.slot && !ts.shared) __atomic_store_n(&slot_owned[ts.slot_index], 0, __ATOMIC_RELEASE);
  ts.slot = NULL;
  ts.until_sample = 0; /* an allocation after this takes the slow path, which takes a slot again */
}

static void take_slot(void) {
  for (uint16_t i = 1; i < MEMLENS_SAMPLER_SLOTS; ++i) {
    uint8_t expected = 0;
    if (__atomic_compare_exchange_n(&slot_owned[i], &expected, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
      ts.slot = &page->slot[i];
      ts.slot_index = i;
      ts.shared = 0;
      /* The destructor gives the slot back at thread exit (its counts stay). */
      if (ready) pthread_setspecific(exit_key, (void*)1);
      return;
    }
  }
  ts.slot = &page->slot[0];
  ts.slot_index = 0;
  ts.shared = 1;
}

static void init_thread(void) {
  ts.rng = (uint64_t)(uintptr_t)&ts ^ ((uint64_t)getpid() << 32) ^ (uint64_t)time(NULL) ^ 0x9E3779B97F4A7C15ULL;
  if (!ts.rng) ts.rng = 1;
  take_slot();
  ts.until_sample = draw_interval();
}

#define ADD(field, n)                                      \
  do {                                                     \
    if (LIKELY(!ts.shared)) ts.slot->field += (n);         \
    else __atomic_fetch_add(&ts.slot->field, (n), __ATOMIC_RELAXED); \
  } while (0)

/* ---- the table of sampled blocks --------------------------------------
 * Open addressing, linear probing, 2^16 slots (512 KiB of .bss, touched only
 * where used), at most 3/4 full. Inserts and removals take a spin lock
 * (they happen once per ~512 KiB allocated); a free looks at the home slot
 * of its pointer without the lock: removal shifts entries back instead of
 * leaving holes or tombstones, so a pointer in the table always has a
 * non-empty home slot, and an empty one proves the block was not sampled.
 * What a block stands for sits in a parallel array, which the fast path
 * never reads. The same lock guards the sites. */
#define TABLE_BITS 16
#define TABLE_SIZE (1u << TABLE_BITS)
struct block_meta {
  uint64_t space;   /* its weight */
  uint64_t objects; /* x1000 */
  uint32_t site;
  uint32_t fired;   /* its alloc probe fired: its free fires too */
};
static uintptr_t table[TABLE_SIZE];
static struct block_meta table_meta[TABLE_SIZE];
/* In front of the table, for the free's look: one bit per 1/4096 of the
 * hash space, set while the table holds an entry there: 512 bytes, eight
 * cache lines that stay in the nearest cache where the table's 512 KiB (a
 * free reads one random slot of it) would not, nor 8 KiB of counts. The
 * counts behind the bits are kept under the lock. A bit is set before its
 * entry goes in and cleared after the last one went out, so a pointer in
 * the table never finds its bit clear. */
#define FILTER_BITS 12
static uint64_t filter[(1u << FILTER_BITS) / 64];
static uint16_t filter_count[1u << FILTER_BITS];
static uint32_t filter_of(uintptr_t p) {
  return (uint32_t)(((uint64_t)p * 0x9E3779B97F4A7C15ULL) >> (64 - FILTER_BITS));
}
static int filter_maybe(uintptr_t p) {
  const uint32_t b = filter_of(p);
  return (__atomic_load_n(&filter[b / 64], __ATOMIC_ACQUIRE) >> (b % 64)) & 1;
}
static uint32_t table_count;
static int table_lock;

static uint32_t home_of(uintptr_t p) { return (uint32_t)(((uint64_t)p * 0x9E3779B97F4A7C15ULL) >> (64 - TABLE_BITS)); }

static void lock_table(void) {
  while (__atomic_exchange_n(&table_lock, 1, __ATOMIC_ACQUIRE))
    while (__atomic_load_n(&table_lock, __ATOMIC_RELAXED)) __builtin_ia32_pause();
}
static void unlock_table(void) { __atomic_store_n(&table_lock, 0, __ATOMIC_RELEASE); }

/* Under the lock. */
static int table_insert(uintptr_t p, const struct block_meta* m) {
  if (table_count >= TABLE_SIZE / 4 * 3) return 0;
  uint32_t i = home_of(p);
  while (table[i]) i = (i + 1) & (TABLE_SIZE - 1);
  const uint32_t b = filter_of(p);
  if (filter_count[b]++ == 0) __atomic_fetch_or(&filter[b / 64], 1ULL << (b % 64), __ATOMIC_RELEASE);
  table_meta[i] = *m;
  __atomic_store_n(&table[i], p, __ATOMIC_RELEASE);
  ++table_count;
  return 1;
}

/* Under the lock. Removes p if present, its meta into *out; 1 if it was. */
static int table_remove(uintptr_t p, struct block_meta* out) {
  uint32_t i = home_of(p);
  while (table[i] && table[i] != p) i = (i + 1) & (TABLE_SIZE - 1);
  if (!table[i]) return 0;
  *out = table_meta[i];
  /* Backward shift: move later entries of the run into the gap, copying
   * before clearing, so no entry's home slot is ever seen empty. */
  uint32_t gap = i;
  for (uint32_t j = (gap + 1) & (TABLE_SIZE - 1); table[j]; j = (j + 1) & (TABLE_SIZE - 1)) {
    const uint32_t h = home_of(table[j]);
    /* j's entry may fill the gap when its home is not within (gap, j]. */
    const int between = gap <= j ? (h > gap && h <= j) : (h > gap || h <= j);
    if (between) continue;
    table_meta[gap] = table_meta[j];
    __atomic_store_n(&table[gap], table[j], __ATOMIC_RELEASE);
    gap = j;
  }
  __atomic_store_n(&table[gap], 0, __ATOMIC_RELEASE);
  const uint32_t b = filter_of(p);
  if (--filter_count[b] == 0) __atomic_fetch_and(&filter[b / 64], ~(1ULL << (b % 64)), __ATOMIC_RELEASE);
  --table_count;
  return 1;
}

/* ---- the sites ----------------------------------------------------------
 * Appended in order (memlensd reads the first sites_count), found again by a
 * hash index of 2 * MAX_SITES slots holding site numbers + 1. 2.3 MiB of
 * .bss for the sites, touched only as they fill. */
#define INDEX_SIZE (2 * MEMLENS_SAMPLER_MAX_SITES)
static struct memlens_sampler_site sites[MEMLENS_SAMPLER_MAX_SITES];
static uint16_t site_index[INDEX_SIZE];

static uint64_t hash_stack(const uint64_t* pc, uint32_t depth) {
  uint64_t h = 0x84222325CBF29CE4ULL ^ depth;
  for (uint32_t i = 0; i < depth; ++i) {
    h ^= pc[i];
    h *= 0x100000001B3ULL;
    h ^= h >> 29;
  }
  return h ? h : 1;
}

/* Under the lock: the site of this stack, added when new; -1 when full. */
static int32_t site_of(const uint64_t* pc, uint32_t depth) {
  const uint64_t h = hash_stack(pc, depth);
  uint32_t i = (uint32_t)(h & (INDEX_SIZE - 1));
  for (; site_index[i]; i = (i + 1) & (INDEX_SIZE - 1)) {
    const struct memlens_sampler_site* s = &sites[site_index[i] - 1];
    if (s->hash == h && s->depth == depth && !memcmp(s->pc, pc, depth * sizeof(uint64_t)))
      return site_index[i] - 1;
  }
  const uint32_t n = page->sites_count;
  if (n >= sites_max) return -1;
  struct memlens_sampler_site* s = &sites[n];
  memcpy(s->pc, pc, depth * sizeof(uint64_t));
  s->depth = depth;
  s->hash = h;
  site_index[i] = (uint16_t)(n + 1);
  /* Complete before it is counted. */
  __atomic_store_n(&page->sites_count, n + 1, __ATOMIC_RELEASE);
  return (int32_t)n;
}

/* The mapping that holds address `a`, [lo, hi), from /proc/self/maps read
 * with plain system calls: no allocation and no lock of glibc's, as this
 * runs inside malloc (glibc's pthread_getattr_np would do both: it reads the
 * same file with stdio while holding the thread's lock, and a sample taken
 * inside its own malloc would wait for that lock forever). Any line length
 * is read with a small buffer: signal stacks can be small. 1: found. */
static int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}
static int mapping_of(uintptr_t a, uintptr_t* lo, uintptr_t* hi) {
  const int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char buf[256];
  uintptr_t v[2] = {0, 0};
  int field = 0, skip = 0, found = 0;
  ssize_t n;
  while (!found && (n = read(fd, buf, sizeof buf)) > 0) {
    for (ssize_t i = 0; i < n && !found; ++i) {
      const char c = buf[i];
      if (c == '\n') {
        v[0] = v[1] = 0;
        field = skip = 0;
        continue;
      }
      if (skip) continue;
      const int d = hex_digit(c);
      if (d >= 0) {
        v[field] = v[field] * 16 + (uintptr_t)d;
      } else if (c == '-' && field == 0) {
        field = 1;
      } else {
        /* The range ended: the rest of the line is of no interest. */
        if (field == 1 && v[0] <= a && a < v[1]) {
          *lo = v[0];
          *hi = v[1];
          found = 1;
        }
        skip = 1;
      }
    }
  }
  close(fd);
  return found;
}

/* Return addresses, leaf first, by the frame-pointer chain (what the
 * kernel's user stack walk follows too), never reading outside the mapping
 * the walk starts in: every address from the current frame to that
 * mapping's end is mapped, so a frame pointer that is really data cannot
 * make the walk fault. The mapping is looked up once per thread, again when
 * the walk starts outside it (a main stack that grew, a signal stack, a
 * coroutine's), at most 8 times for stacks that are not the known one. */
__attribute__((noinline)) static uint32_t walk_stack(uint64_t* pc, uint32_t max) {
  uintptr_t fp = (uintptr_t)__builtin_frame_address(0);
  if (fp < ts.stack_lo || fp >= ts.stack_hi) {
    uintptr_t lo = 0, hi = 0;
    if (ts.map_reads >= 8 || !mapping_of(fp, &lo, &hi)) {
      if (ts.map_reads < 8) ++ts.map_reads;
      return 0;
    }
    if (ts.stack_hi && hi != ts.stack_hi) ++ts.map_reads; /* not the known stack grown */
    ts.stack_lo = lo;
    ts.stack_hi = hi;
  }
  const uintptr_t lo = fp, hi = ts.stack_hi;
  uint32_t n = 0;
  while (n < max) {
    if (fp < lo || fp > hi - 2 * sizeof(uintptr_t) || (fp & (sizeof(uintptr_t) - 1))) break;
    const uintptr_t next = ((const uintptr_t*)fp)[0], ret = ((const uintptr_t*)fp)[1];
    if (!ret) break;
    pc[n++] = ret;
    if (next <= fp) break;
    fp = next;
  }
  return n;
}

/* ---- slow paths ------------------------------------------------------ */

__attribute__((noinline)) static void sample_slow(void* p, size_t size) {
  if (!ts.slot) {
    /* A thread's first allocation: set it up and draw its first gap. */
    init_thread();
    ts.until_sample -= (int64_t)size;
    if (ts.until_sample > 0) return;
  }
  if (ts.in_slow || !sampling) {
    ts.until_sample = draw_interval();
    return;
  }
  ts.in_slow = 1;
  /* Every byte since the last sample was a chance; this allocation crossed
   * the drawn gap. Weight: the bytes it stands for, size / P(sampled), the
   * estimator of Poisson sampling by bytes. */
  ts.until_sample = draw_interval();
  if (p && size) {
    uint64_t pc[MEMLENS_SAMPLER_DEPTH];
    const uint32_t depth = walk_stack(pc, MEMLENS_SAMPLER_DEPTH);
    const double prob = 1.0 - exp(-(double)size / mean_interval);
    const uint64_t weight = (uint64_t)((double)size / (prob > 0 ? prob : 1e-300) + 0.5);
    uint64_t objects = weight * 1000 / size;
    if (!objects) objects = 1;
    const int fire = otel_memory_alloc_semaphore != 0;
    int kept = 0;
    lock_table();
    const int32_t site = site_of(pc, depth);
    if (site >= 0) {
      const struct block_meta m = {weight, objects, (uint32_t)site, (uint32_t)fire};
      if (table_insert((uintptr_t)p, &m)) {
        struct memlens_sampler_site* s = &sites[site];
        s->alloc_space += weight;
        s->alloc_objects += objects;
        s->inuse_space += (int64_t)weight;
        s->inuse_objects += (int64_t)objects;
        s->samples += 1;
        kept = 1;
      }
    }
    unlock_table();
    if (!kept) {
      __atomic_fetch_add(&page->dropped, 1, __ATOMIC_RELAXED);
    } else {
      ADD(sampled, 1);
      if (fire) {
        __atomic_fetch_add(&page->fired, 1, __ATOMIC_RELAXED);
        STAP_PROBE3(otel_memory, alloc, p, (uint64_t)size, weight);
      }
    }
  }
  ts.in_slow = 0;
}

__attribute__((noinline)) static void free_slow(void* p) {
  /* A signal handler's free that interrupted this thread's own slow path
   * would wait for the lock this thread holds: the block stays counted in
   * use (and in the table, until its address is freed again) instead. */
  if (ts.in_slow) return;
  ts.in_slow = 1;
  struct block_meta m;
  lock_table();
  const int found = table_remove((uintptr_t)p, &m);
  if (found) {
    struct memlens_sampler_site* s = &sites[m.site];
    s->inuse_space -= (int64_t)m.space;
    s->inuse_objects -= (int64_t)m.objects;
  }
  unlock_table();
  ts.in_slow = 0;
  if (found && m.fired) STAP_PROBE1(otel_memory, free, p);
}

/* One allocation of `size` bytes returned `p` (NULL: failed, not counted). */
static inline void on_alloc(void* p, size_t size) {
  if (UNLIKELY(!p)) return;
  /* A thread's first allocation takes the slow path too: its gap starts at 0. */
  ts.until_sample -= (int64_t)size;
  if (UNLIKELY(ts.until_sample <= 0)) sample_slow(p, size);
  ADD(allocs, 1);
  ADD(alloc_bytes, size);
}

/* Before `p` goes back to glibc. */
static inline void on_free(void* p) {
  if (UNLIKELY(!ts.slot)) init_thread();
  ADD(frees, 1);
  if (UNLIKELY(filter_maybe((uintptr_t)p)) &&
      __atomic_load_n(&table[home_of((uintptr_t)p)], __ATOMIC_ACQUIRE))
    free_slow(p);
}

/* ---- the malloc family ---------------------------------------------- */

EXPORT void* malloc(size_t n) {
  void* p = __libc_malloc(n);
  on_alloc(p, n);
  return p;
}

EXPORT void free(void* p) {
  if (!p) return;
  on_free(p);
  __libc_free(p);
}

EXPORT void* calloc(size_t n, size_t m) {
  void* p = __libc_calloc(n, m);
  on_alloc(p, n * m); /* glibc refused an overflowing product: p is NULL then */
  return p;
}

EXPORT void* realloc(void* old, size_t n) {
  if (!old) return malloc(n);
  if (n == 0) {
    /* glibc frees and returns NULL */
    free(old);
    return NULL;
  }
  /* The old block may be sampled: its free must be fired while the
   * address still names it (after realloc another thread may get it). */
  on_free(old);
  void* p = __libc_realloc(old, n);
  if (!p) {
    /* The old block lives on: count it back so allocations minus frees
     * stay the live count (its sample, if any, was fired as freed). */
    ADD(allocs, 1);
    return NULL;
  }
  on_alloc(p, n);
  return p;
}

EXPORT void* reallocarray(void* old, size_t n, size_t m) {
  size_t bytes;
  if (__builtin_mul_overflow(n, m, &bytes)) {
    errno = ENOMEM;
    return NULL;
  }
  return realloc(old, bytes);
}

EXPORT void* memalign(size_t align, size_t n) {
  void* p = __libc_memalign(align, n);
  on_alloc(p, n);
  return p;
}

EXPORT void* aligned_alloc(size_t align, size_t n) { return memalign(align, n); }

EXPORT int posix_memalign(void** out, size_t align, size_t n) {
  if (align % sizeof(void*) != 0 || (align & (align - 1)) != 0 || align == 0) return EINVAL;
  void* p = __libc_memalign(align, n);
  if (!p) return ENOMEM;
  on_alloc(p, n);
  *out = p;
  return 0;
}

EXPORT void* valloc(size_t n) {
  void* p = __libc_valloc(n);
  on_alloc(p, n);
  return p;
}

EXPORT void* pvalloc(size_t n) {
  void* p = __libc_pvalloc(n);
  on_alloc(p, n);
  return p;
}

/* malloc_usable_size is glibc's own: blocks carry no header of ours. */

/* ---- an allocator the preload cannot reach ---------------------------
 * One linked in statically (Rust's tikv-jemallocator links jemalloc under
 * the _rjem_ prefix) never calls a dynamic malloc. Its wrapper links this
 * library and tells it of each block itself (memlens_sampler_hooks.h). */

EXPORT void memlens_sampler_alloc(void* p, size_t size) { on_alloc(p, size); }

EXPORT void memlens_sampler_free(void* p) {
  if (p) on_free(p);
}

/* ---- process life ---------------------------------------------------- */

static void reset_after_fork(void) {
  /* The child has one thread and a copy of the parent's counts, table and
   * possibly a lock some other thread held: start its books from zero. */
  memset(page->slot, 0, sizeof(page->slot));
  memset(slot_owned, 0, sizeof(slot_owned));
  memset(table, 0, sizeof(table));
  memset(filter, 0, sizeof(filter));
  memset(filter_count, 0, sizeof(filter_count));
  /* The sites' stacks stay valid in the child (the same code at the same
   * addresses), but their figures were the parent's: only the used ones and
   * the index are cleared, untouched pages stay untouched. */
  memset(sites, 0, page->sites_count * sizeof(sites[0]));
  memset(site_index, 0, sizeof(site_index));
  page->sites_count = 0;
  page->dropped = 0;
  page->fired = 0;
  page->pid = getpid();
  table_count = 0;
  table_lock = 0;
  ts.slot = NULL;
  init_thread();
}

static void drop_from_preload(void) {
  const char* v = getenv("LD_PRELOAD");
  if (!v) return;
  char buf[4096];
  size_t out = 0;
  const char* s = v;
  while (*s) {
    size_t n = strcspn(s, ": ");
    const int ours = memmem(s, n, "memlens-sampler", 15) != NULL;
    if (!ours && n > 0 && out + n + 2 < sizeof(buf)) {
      if (out) buf[out++] = ':';
      memcpy(buf + out, s, n);
      out += n;
    }
    s += n;
    while (*s == ':' || *s == ' ') ++s;
  }
  buf[out] = 0;
  if (out) setenv("LD_PRELOAD", buf, 1);
  else unsetenv("LD_PRELOAD");
}

__attribute__((constructor)) static void sampler_init(void) {
  const char* on = getenv("MEMLENS_SAMPLER");
  sampling = !(on && on[0] == '0' && on[1] == 0);
  const char* iv = getenv("MEMLENS_SAMPLER_INTERVAL");
  if (iv && *iv) {
    char* end = NULL;
    const double d = strtod(iv, &end);
    if (end && *end == 0 && d >= 1 && d <= 1e12) mean_interval = d;
  }
  const char* ns = getenv("MEMLENS_SAMPLER_SITES");
  if (ns && *ns) {
    char* end = NULL;
    const long n = strtol(ns, &end, 10);
    if (end && *end == 0 && n >= 1 && n <= MEMLENS_SAMPLER_MAX_SITES) sites_max = (uint32_t)n;
  }
  const char* children = getenv("MEMLENS_SAMPLER_CHILDREN");
  if (children && children[0] == '0' && children[1] == 0) drop_from_preload();
  page->version = MEMLENS_SAMPLER_VERSION;
  page->slots = MEMLENS_SAMPLER_SLOTS;
  page->pid = getpid();
  page->enabled = (uint32_t)sampling;
  page->mean_interval = (uint64_t)mean_interval;
  page->sites_addr = (uint64_t)(uintptr_t)sites;
  page->sites_max = sites_max;
  pthread_key_create(&exit_key, release_slot);
  pthread_atfork(NULL, NULL, reset_after_fork);
  ready = 1;
  if (ts.slot && !ts.shared) pthread_setspecific(exit_key, (void*)1);
  /* The first thread may have allocated before this ran (other libraries'
   * constructors): its draw used the default mean. Redraw with ours. */
  if (ts.slot) ts.until_sample = draw_interval();
  /* Last: a reader that sees the magic sees a filled header. */
  __atomic_store_n(&page->magic, MEMLENS_SAMPLER_MAGIC, __ATOMIC_RELEASE);
}
