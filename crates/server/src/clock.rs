//! The server's two clocks. A leaf module: everything else asks it for the time.
//!
//! - [`mono_us`]: monotonic µs, for everything that measures durations on this node (pacing,
//!   stall bounds, rates, escalation, the waiting line). It never jumps when the wall clock is
//!   set.
//! - [`wall_us`]: µs since the Unix epoch, only where a time is shared with others (capture
//!   times, tickets, times shown to people).
//! - [`process_cpu_s`]: CPU time the whole process used, for `/metrics`.

use std::sync::OnceLock;
use std::time::Instant;

/// Microseconds since the Unix epoch.
pub fn wall_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Monotonic microseconds since this process first asked, plus one second (so that 0 never
/// means "now" and a value of 0 can stand for "never").
pub fn mono_us() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64 + 1_000_000
}

/// CPU time (user + system) this process has used, s.
pub fn process_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the live local we pass.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}
