# jemalloc from Debian's libjemalloc-dev, linked so it replaces malloc.
target_link_libraries(${n} PRIVATE jemalloc)
