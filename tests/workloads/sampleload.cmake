# Frame pointers, and call sites kept apart: profile stacks unwind through
# leak_site and churn_site.
target_compile_options(${n} PRIVATE -fno-omit-frame-pointer -O1)
target_link_libraries(${n} PRIVATE pthread)
