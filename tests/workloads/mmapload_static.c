/* mmapload, linked statically and stripped (mmapload_static.cmake): a target
 * with no allocator symbols for uprobes, whose heap growth the system-call
 * path still sees. */
#include "mmapload.c"
