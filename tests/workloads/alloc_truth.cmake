# Frame pointers so leak-site stacks unwind through the workload.
target_compile_options(${n} PRIVATE -fno-omit-frame-pointer)
