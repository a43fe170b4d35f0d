/* heap_truth linked statically (heap_truth_static.cmake), symbols kept:
 * glibc's malloc and its books live in the executable itself. */
#include "heap_truth.c"
