// Collects from its first statement: nothing is set up before the first
// allocation, so V8's first scavenge comes within its first 100 ms. Churns
// for argv[3] seconds, writes argv[2] ("done"), then idles. The truth is
// node --trace-gc: one line per collection, from the isolate's start.
const fs = require('fs');
const [done, seconds] = process.argv.slice(2);
const t0 = Date.now();
let keep = [];
(function step() {
  for (let i = 0; i < 2000; i++) keep.push({ i, s: 'x'.repeat(40) });
  if (keep.length > 40000) keep = [];
  if (Date.now() - t0 < Number(seconds) * 1000) return setImmediate(step);
  keep = null;
  fs.writeFileSync(done + '.tmp', 'done\n');
  fs.renameSync(done + '.tmp', done);
  setTimeout(() => {}, 300000);
})();
