# Collects from its first statement (gen0 runs every 700 container
# allocations, so within milliseconds). Churns for argv[2] seconds, then
# writes to argv[1] the interpreter's own count of collections since it
# started (gc.get_stats(), which counts those of start-up too), and idles.
import gc
import json
import os
import sys
import time

done, seconds = sys.argv[1], float(sys.argv[2])
t0 = time.monotonic()
keep = []
while time.monotonic() - t0 < seconds:
    keep.extend([i, {}] for i in range(1000))
    if len(keep) > 20000:
        keep = []
keep = None
stats = gc.get_stats()
with open(done + ".tmp", "w") as f:
    json.dump({"collections": sum(s["collections"] for s in stats),
               "per_generation": [s["collections"] for s in stats]}, f)
os.rename(done + ".tmp", done)
time.sleep(300)
