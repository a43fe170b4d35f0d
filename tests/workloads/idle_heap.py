#!/usr/bin/env python3
"""idle_heap: a glibc heap that stays still until it is poked.

usage: idle_heap.py TRUTH [MAPPED]

Allocates 100 blocks of 64 KiB through glibc's malloc (bytearrays: too big
for CPython's own small-object allocator, below glibc's mmap threshold, so
they live in the heap's arena), writes glibc's own mallinfo2() as one JSON
line to TRUTH, and waits for a signal without running at all. Each SIGUSR1
adds 100 more blocks and one more thread (which sleeps) and writes a new
line. Lines:
  {"phase": N, "arena": ..., "uordblks": ..., "fordblks": ..., "hblkhd": ...,
   "threads": N, "minflt": ...}
threads and minflt (getrusage) are taken last, after the line's text.
With MAPPED, that file is mapped read-only and each of its pages read
before the first line: resident file pages only this process maps.
"""
import ctypes
import json
import mmap
import os
import resource
import signal
import sys
import threading


class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]


libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
truth_path = sys.argv[1]
blocks = []
poked = []
signal.signal(signal.SIGUSR1, lambda *_: poked.append(1))


def grow_and_report(phase):
    for _ in range(100):
        b = bytearray(64 * 1024)
        b[::4096] = b"x" * 16  # resident, like a real buffer
        blocks.append(b)
    if phase > 1:
        threading.Thread(target=lambda: threading.Event().wait(), daemon=True).start()
    line = "{}"
    for _ in range(3):  # later rounds see what the earlier line's text took
        mi = libc.mallinfo2()
        fields = {n: getattr(mi, n) for n, _ in MallInfo2._fields_}
        fields.update(threads=threading.active_count(), minflt=resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
        line = json.dumps({"phase": phase, **fields})
    with open(truth_path, "a") as f:
        f.write(line + "\n")


if len(sys.argv) > 2:
    with open(sys.argv[2], "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    touched = sum(mapped[i] for i in range(0, len(mapped), 4096))
phase = 1
grow_and_report(phase)
while True:
    signal.pause()
    while poked:
        poked.pop()
        phase += 1
        grow_and_report(phase)
