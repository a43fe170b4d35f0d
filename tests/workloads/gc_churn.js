// GC workload for Node.js: waits for <go-file>, churns the V8 heap for
// <seconds>, records every GC pause it sees through perf_hooks
// (PerformanceObserver 'gc' entries) and writes them to <truth-file> as JSON,
// then blocks its main thread (no JS runs, so no further GC).
// Usage: node gc_churn.js <go-file> <truth-file> <seconds>
'use strict';
const fs = require('fs');
const { PerformanceObserver, constants } = require('perf_hooks');

const [goFile, truthFile, secondsArg] = process.argv.slice(2);
const seconds = Number(secondsArg || 20);
const entries = [];

function record(list) {
  for (const e of list.getEntries()) entries.push({ ms: e.duration, kind: e.detail ? e.detail.kind : e.kind });
}

function churn() {
  const obs = new PerformanceObserver(record);
  obs.observe({ entryTypes: ['gc'] });
  const window = new Array(20000);
  let i = 0;
  // GC_CHURN_WORK=N: a fixed amount of work (N chunks of 1000 objects, back to
  // the event loop every 50) instead of a time, for
  // benchmarks; the churn time is in the truth file either way.
  const work = process.env.GC_CHURN_WORK ? Number(process.env.GC_CHURN_WORK) : Infinity;
  let steps = 0;
  const t0 = process.hrtime.bigint();
  const end = work !== Infinity ? Infinity : Date.now() + seconds * 1000;
  function step() {
    const stop = Date.now() + 10;
    while (work === Infinity ? Date.now() < stop : (steps++ % 50) !== 49) {
      for (let k = 0; k < 1000; k++, i++) {
        const o = { i, s: 'x'.repeat(i % 64), a: new Array(i % 32).fill(i) };
        if (i % 8 === 0) window[(i >> 3) % window.length] = o;
      }
    }
    if (Date.now() < end && steps < work) return setImmediate(step);
    const elapsed = Number(process.hrtime.bigint() - t0) / 1e9;
    setTimeout(() => {
      record({ getEntries: () => obs.takeRecords() });
      obs.disconnect();
      const kinds = {};
      for (const e of entries) kinds[e.kind] = (kinds[e.kind] || 0) + 1;
      fs.writeFileSync(truthFile, JSON.stringify({
        minor: constants.NODE_PERFORMANCE_GC_MINOR,
        major: constants.NODE_PERFORMANCE_GC_MAJOR,
        incremental: constants.NODE_PERFORMANCE_GC_INCREMENTAL,
        weakcb: constants.NODE_PERFORMANCE_GC_WEAKCB,
        kinds, elapsed_s: elapsed, pauses: entries }));
      // Block the event loop for good: no JS, no allocation, no GC.
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);
    }, 300);
  }
  step();
}

(function waitGo() {
  if (fs.existsSync(goFile)) return churn();
  setTimeout(waitGo, 20);
})();
