// The demo's Node.js backend: serves "requests" (garbage, so V8 collects a
// few times a second) and keeps a response cache that is never evicted: a
// slow retained-object leak of about 16 KiB a second.
const cache = new Map();
let served = 0;
setInterval(() => {
  for (let i = 0; i < 200; i++) {
    const request = { id: served++, headers: Array.from({ length: 16 }, (_, k) => `h${k}=${served}`) };
    JSON.stringify(request);
  }
  cache.set(served, { body: 'x'.repeat(1500), at: Date.now() });
}, 100);
