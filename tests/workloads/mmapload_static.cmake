# Static and stripped: no malloc symbol (or any other) left to probe.
target_link_options(${n} PRIVATE -static -s)
