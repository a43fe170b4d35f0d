// A Rust program for the allocation tests, built by the test with Debian's
// rustc: on the system allocator, or (--cfg rjem) with a #[global_allocator]
// that calls jemalloc's mallocx/sdallocx/rallocx under the _rjem_ prefix, as
// tikv-jemallocator links it (the test renames Debian's static jemalloc);
// with --cfg sampler as well, that allocator also tells libmemlens-sampler
// of each block (memlens_sampler_hooks.h), which the preload cannot reach.
// Phases: the baseline truth, --wait s idle, then KEEP blocks kept and CHURN
// blocks allocated and dropped (each one Vec::with_capacity: one allocation
// of exactly that many bytes, one free), then the final truth, idle.
// Nothing else allocates between the two truths: the file is opened and the
// line buffer reserved before the first.
use std::io::Write;

#[cfg(rjem)]
mod rjem {
    use std::alloc::{GlobalAlloc, Layout};
    extern "C" {
        fn _rjem_mallocx(size: usize, flags: i32) -> *mut u8;
        fn _rjem_sdallocx(p: *mut u8, size: usize, flags: i32);
        fn _rjem_rallocx(p: *mut u8, size: usize, flags: i32) -> *mut u8;
    }
    // MALLOCX_LG_ALIGN(la) is la itself: only alignments above 16 need it.
    fn flags(l: &Layout) -> i32 {
        if l.align() > 16 { l.align().trailing_zeros() as i32 } else { 0 }
    }
    #[cfg(sampler)]
    #[link(name = "memlens-sampler")]
    extern "C" {
        fn memlens_sampler_alloc(p: *mut u8, size: usize);
        fn memlens_sampler_free(p: *mut u8);
    }
    #[cfg(not(sampler))]
    unsafe fn memlens_sampler_alloc(_p: *mut u8, _size: usize) {}
    #[cfg(not(sampler))]
    unsafe fn memlens_sampler_free(_p: *mut u8) {}
    pub struct Je;
    unsafe impl GlobalAlloc for Je {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            let p = _rjem_mallocx(l.size(), flags(&l));
            memlens_sampler_alloc(p, l.size());
            p
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            memlens_sampler_free(p);
            _rjem_sdallocx(p, l.size(), flags(&l))
        }
        unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
            let nl = Layout::from_size_align_unchecked(n, l.align());
            memlens_sampler_free(p);
            let q = _rjem_rallocx(p, n, flags(&nl));
            // A failed reallocation leaves the old block live.
            memlens_sampler_alloc(if q.is_null() { p } else { q }, if q.is_null() { l.size() } else { n });
            q
        }
    }
    #[global_allocator]
    static A: Je = Je;
}

#[inline(never)]
fn keep_site(n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n);
    v.resize(n, 7u8);
    v
}

#[inline(never)]
fn churn_site(n: usize) -> usize {
    let mut v: Vec<u8> = Vec::with_capacity(n);
    v.resize(n, 9u8);
    // A volatile read: the block is used, so it is really allocated.
    unsafe { std::ptr::read_volatile(v.as_ptr().add(n / 2)) as usize + v.len() }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let truth_path = args.get(1).expect("usage: rust_alloc TRUTH [WAIT_S]").clone();
    let wait: u64 = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(3);
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&truth_path).unwrap();
    let mut line: Vec<u8> = Vec::with_capacity(512);
    const KEEP: usize = 2000;
    const CHURN: usize = 3000;
    let mut kept: Vec<Vec<u8>> = Vec::with_capacity(KEEP);
    writeln!(&mut line, "{{\"phase\":\"baseline\",\"allocs\":0,\"frees\":0,\"bytes\":0}}").unwrap();
    file.write_all(&line).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(wait));
    let (mut allocs, mut frees, mut bytes, mut live) = (0u64, 0u64, 0u64, 0u64);
    for i in 0..KEEP {
        let n = 1000 + (i * 37) % 4000;
        kept.push(keep_site(n));
        allocs += 1;
        bytes += n as u64;
        live += n as u64;
    }
    for i in 0..CHURN {
        let n = 64 + (i * 53) % 8000;
        churn_site(n);
        allocs += 1;
        frees += 1;
        bytes += n as u64;
    }
    line.clear();
    writeln!(&mut line, "{{\"phase\":\"done\",\"allocs\":{},\"frees\":{},\"bytes\":{},\"live\":{}}}",
             allocs, frees, bytes, live).unwrap();
    file.write_all(&line).unwrap();
    let mut sum = 0usize;
    for v in &kept {
        sum += unsafe { std::ptr::read_volatile(v.as_ptr()) } as usize;
    }
    assert!(sum > 0);
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
