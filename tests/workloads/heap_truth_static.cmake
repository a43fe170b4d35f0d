# Static, not stripped: main_arena and mp_ are in the executable's .symtab.
target_link_options(${n} PRIVATE -static)
