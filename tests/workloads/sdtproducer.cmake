# Frame pointers so the profile's stacks reach main.
target_compile_options(${n} PRIVATE -fno-omit-frame-pointer -O1)
