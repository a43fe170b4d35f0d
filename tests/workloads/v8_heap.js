// V8 heap workload for Node.js: holds a 16 MiB base of JS objects, then
// from <delay> seconds on retains <rate> more bytes' worth every second
// (arrays of small integers, kept forever: a leak of JS objects), and runs
// a full collection every second (global.gc: run it with --expose-gc).
// Right after each collection it appends v8.getHeapStatistics() to
// <truth-file> (JSONL): used_heap_size and total_heap_size as that
// collection left them, the figures memlensd reads from V8 at its end.
// Usage: node --expose-gc v8_heap.js <truth-file> <bytes-per-second> <delay-seconds>
'use strict';
const fs = require('fs');
const v8 = require('v8');

const [truthFile, rateArg, delayArg] = process.argv.slice(2);
const rate = Number(rateArg || 262144);
const delay = Number(delayArg || 3);
if (typeof global.gc !== 'function') {
  console.error('v8_heap.js: run with --expose-gc');
  process.exit(2);
}

// One element of a packed small-integer array is one tagged word.
const word = 8;
const make = (bytes) => Array.from({ length: Math.max(1, Math.floor(bytes / word)) }, (_, i) => i & 0xffff);
const base = [];
for (let i = 0; i < 64; ++i) base.push(make(256 * 1024));
const leak = [];
const t0 = Date.now();
let n = 0;

function tick() {
  const leaking = (Date.now() - t0) / 1000 >= delay;
  if (leaking) leak.push(make(rate));
  global.gc();
  const h = v8.getHeapStatistics();
  n += 1;
  fs.appendFileSync(truthFile, JSON.stringify({
    time: Date.now() / 1000, n, leaking, used: h.used_heap_size, committed: h.total_heap_size,
    retained_arrays: leak.length + base.length,
  }) + '\n');
}
setInterval(tick, 1000);
tick();
