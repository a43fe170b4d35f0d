"""GC workload for CPython: waits for <go-file>, churns cyclic garbage for
<seconds>, times every collection through gc.callbacks and writes the pauses
to <truth-file> as JSON ({"pauses": [[generation, seconds], ...]}), then
disables the collector and idles.

Usage: python3 gc_churn.py <go-file> <truth-file> <seconds>
"""
import gc
import json
import os
import sys
import time

go_file, truth_file = sys.argv[1], sys.argv[2]
seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 20.0
# Fewer, larger young collections than the default 700 keep the event rate
# (and the test's run time) reasonable while still giving thousands of pauses.
gc.set_threshold(5000, 10, 10)

while not os.path.exists(go_file):
    time.sleep(0.02)

pauses = []
started = [0.0]


def on_gc(phase, info):
    if phase == "start":
        started[0] = time.perf_counter()
    else:
        pauses.append((info["generation"], time.perf_counter() - started[0]))


class Node:
    __slots__ = ("other", "payload")


gc.callbacks.append(on_gc)
window = [None] * 5000
# GC_CHURN_WORK=N: a fixed amount of work (N chunks) instead of a time, for
# benchmarks; the churn time is in the truth file either way.
work = int(os.environ.get("GC_CHURN_WORK", "0"))
t0 = time.monotonic()
end = float("inf") if work else t0 + seconds
chunks = 0
i = 0
while time.monotonic() < end and (not work or chunks < work):
    chunks += 1
    for _ in range(1000):
        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle: only the collector frees it
        a.payload = [i] * (i % 16)
        if i % 4 == 0:
            window[i % len(window)] = a
        i += 1
elapsed = time.monotonic() - t0
gc.callbacks.remove(on_gc)
gc.disable()
with open(truth_file + ".tmp", "w") as f:
    json.dump({"elapsed_s": elapsed, "pauses": pauses}, f)
os.rename(truth_file + ".tmp", truth_file)
while True:
    time.sleep(3600)
