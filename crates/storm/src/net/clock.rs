//! Wall-clock time (µs since the Unix epoch) and waits until a time, and the process's own
//! CPU and memory as the kernel counts them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// µs since the Unix epoch, now.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Sleeps until the Unix time `us` (returns at once if it has passed).
pub async fn sleep_until_us(us: u64) {
    let now = now_us();
    if us > now {
        tokio::time::sleep(Duration::from_micros(us - now)).await;
    }
}

/// (user + system CPU seconds, peak RSS KiB) of this process.
pub fn rusage() -> (f64, u64) {
    // SAFETY: getrusage writes into the zeroed struct we pass; no other memory is touched.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return (0.0, 0);
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (tv(ru.ru_utime) + tv(ru.ru_stime), ru.ru_maxrss as u64)
}

/// Resident memory now, KiB (from `/proc/self/statm`; 0 where unavailable).
pub fn rss_now_kb() -> u64 {
    let page_kb = 4;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page_kb)
}

/// CPU time of the calling thread, s.
pub fn thread_cpu_s() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass; RUSAGE_THREAD is valid on Linux.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}
