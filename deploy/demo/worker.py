# The demo's Python worker: builds and drops job records, so CPython's
# collector runs several times a second.
import time

while True:
    jobs = [{"id": i, "tags": [i, str(i)]} for i in range(5000)]
    del jobs
    time.sleep(0.05)
