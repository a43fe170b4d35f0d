# BPF objects: vmlinux.h is generated at configure time from the running
# kernel's BTF (/sys/kernel/btf/vmlinux) into the build tree; CO-RE relocations
# make the resulting objects portable to other BTF kernels.
find_program(BPF_CLANG NAMES clang clang-14 REQUIRED)
find_program(BPFTOOL NAMES bpftool PATHS /usr/sbin /sbin REQUIRED)

execute_process(COMMAND ${BPF_CLANG} --version OUTPUT_VARIABLE _clang_ver)
string(REGEX MATCH "version ([0-9]+)" _m "${_clang_ver}")
if(CMAKE_MATCH_1 VERSION_LESS 12)
  message(FATAL_ERROR "clang >= 12 is needed for BPF CO-RE, found ${CMAKE_MATCH_1}")
endif()
execute_process(COMMAND ${BPFTOOL} version OUTPUT_VARIABLE _bpftool_ver)
string(REGEX MATCH "v([0-9]+)\\.([0-9]+)" _m "${_bpftool_ver}")
if(CMAKE_MATCH_1 VERSION_LESS 6)
  message(FATAL_ERROR "bpftool >= 6 is needed for skeletons, found ${_bpftool_ver}")
endif()

set(BPF_GEN_DIR ${CMAKE_BINARY_DIR}/bpf)
file(MAKE_DIRECTORY ${BPF_GEN_DIR})
set(VMLINUX_H ${BPF_GEN_DIR}/vmlinux.h)
if(NOT EXISTS ${VMLINUX_H})
  if(NOT EXISTS /sys/kernel/btf/vmlinux)
    message(FATAL_ERROR "/sys/kernel/btf/vmlinux is missing: this kernel has no BTF")
  endif()
  execute_process(COMMAND ${BPFTOOL} btf dump file /sys/kernel/btf/vmlinux format c
    OUTPUT_FILE ${VMLINUX_H} RESULT_VARIABLE _rc)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "bpftool could not dump vmlinux BTF")
  endif()
endif()

# bpf_object(<name> <src>): compiles <src> to <name>.bpf.o, generates
# <name>.skel.h (skeleton named <name>_bpf) and the interface target <name>_skel.
function(bpf_object name src)
  set(obj ${BPF_GEN_DIR}/${name}.bpf.o)
  set(skel ${BPF_GEN_DIR}/${name}.skel.h)
  file(GLOB _bpf_headers ${CMAKE_SOURCE_DIR}/bpf/*.h)
  add_custom_command(OUTPUT ${obj}
    COMMAND ${BPF_CLANG} -g -O2 -target bpf -D__TARGET_ARCH_x86 -Wall -Werror
            -I${BPF_GEN_DIR} -I${CMAKE_SOURCE_DIR}/bpf
            -idirafter /usr/include/x86_64-linux-gnu
            -c ${src} -o ${obj}
    DEPENDS ${src} ${_bpf_headers} ${VMLINUX_H}
    COMMENT "BPF ${name}" VERBATIM)
  add_custom_command(OUTPUT ${skel}
    COMMAND sh -c "${BPFTOOL} gen skeleton ${obj} name ${name}_bpf > ${skel}"
    DEPENDS ${obj} COMMENT "skeleton ${name}" VERBATIM)
  add_custom_target(${name}_skel_gen DEPENDS ${skel})
  add_library(${name}_skel INTERFACE)
  add_dependencies(${name}_skel ${name}_skel_gen)
  target_include_directories(${name}_skel SYSTEM INTERFACE ${BPF_GEN_DIR})
endfunction()
