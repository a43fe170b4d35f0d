"""Per-pause cost of GC tracing in CPython: waits for <go-file>, runs N
collections of an empty young generation (each a complete gc__start/gc__done
or gc_collect_main entry/return pair, a few microseconds of real work) and
writes "done <seconds>" to <done-file>.

Usage: python3 gc_probe_cost.py <go-file> <done-file> [N]
"""
import gc
import os
import sys
import time

go, done = sys.argv[1], sys.argv[2]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 200000
while not os.path.exists(go):
    time.sleep(0.02)
collect = gc.collect
t0 = time.perf_counter()
for _ in range(n):
    collect(0)
elapsed = time.perf_counter() - t0
with open(done + ".tmp", "w") as f:
    f.write("done %.6f\n" % elapsed)
os.rename(done + ".tmp", done)
while True:
    time.sleep(3600)
