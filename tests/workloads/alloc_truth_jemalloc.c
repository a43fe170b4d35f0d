/* alloc_truth linked against jemalloc (Debian libjemalloc): ground truth in
 * requested bytes, which is what memlens counts for allocators without a
 * size header. */
#define ALLOC_TRUTH_JEMALLOC 1
#include "alloc_truth.c"
