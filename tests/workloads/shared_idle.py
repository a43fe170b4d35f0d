#!/usr/bin/env python3
"""shared_idle: an idle process whose pages another process shares.

usage: shared_idle.py TRUTH

Fills 16 MiB of anonymous memory, forks a child that shares every page of
it (copy-on-write, never written) and sleeps, writes {"child": PID} as one
line to TRUTH, and sleeps without running at all. When the child is killed
the parent's proportional share of those pages doubles while the parent
itself neither runs nor changes its resident set.
"""
import json
import os
import signal
import sys

block = bytearray(16 << 20)
block[::4096] = b"x" * (len(block) // 4096)  # every page resident
child = os.fork()
if child == 0:
    while True:
        signal.pause()
with open(sys.argv[1], "a") as f:
    f.write(json.dumps({"child": child}) + "\n")
while True:
    signal.pause()
