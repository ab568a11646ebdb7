//! The IO around a [`Shard`]: one thread, one `mio` poll (epoll), the shard's mailbox.
//!
//! Each listener socket is registered once, edge-triggered, for reading and writing: the
//! kernel reports writability only after a write found the socket full, so a listener whose
//! socket has room costs no event at all, only its write.

use super::shard::{Conn, Shard, TIMER_EVERY};
use super::{Fanout, Guard};
use crate::clock::mono_us;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;

const WAKE: Token = Token(usize::MAX);
/// Readiness events taken per poll.
const EVENTS: usize = 1024;

impl Conn for TcpStream {
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        Write::write_vectored(self, bufs)
    }
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Read::read(self, buf)
    }
    fn shutdown_write(&mut self) {
        let _ = self.shutdown(Shutdown::Write);
    }
    fn queued(&self) -> Option<usize> {
        use std::os::fd::AsRawFd;
        let mut n: libc::c_int = 0;
        // SIOCOUTQ (TIOCOUTQ): bytes in the send queue not yet acknowledged by the peer.
        // SAFETY: a valid socket descriptor and a pointer to an int, as the call expects.
        let r = unsafe { libc::ioctl(self.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
        (r == 0).then_some(n.max(0) as usize)
    }
}

/// Starts shard `id`'s thread.
pub(super) fn spawn(fanout: Arc<Fanout>, id: usize) -> io::Result<()> {
    let poll = Poll::new()?;
    let waker = Waker::new(poll.registry(), WAKE)?;
    if fanout.inboxes[id].waker.set(waker).is_err() {
        return Err(io::Error::other("fan-out shard started twice"));
    }
    std::thread::Builder::new()
        .name(format!("levee-fanout-{id}"))
        .spawn(move || run(fanout, id, poll))?;
    Ok(())
}

/// Marks the shard dead if its thread unwinds (a bug), so that no listener or track waits for
/// it; its own listeners are closed as the unwinding drops them.
struct DeathWatch<'a>(&'a Fanout, usize);

impl Drop for DeathWatch<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                shard = self.1,
                "fan-out shard died; its listeners were dropped"
            );
            self.0.inboxes[self.1].die(&self.0.listeners);
        }
    }
}

fn run(fanout: Arc<Fanout>, id: usize, mut poll: Poll) {
    let _watch = DeathWatch(&fanout, id);
    let mut shard: Shard<TcpStream, Guard> = Shard::new(id, fanout.limits.clone());
    let mut events = Events::with_capacity(EVENTS);
    let (mut adds, mut tracks) = (Vec::new(), Vec::new());
    let mut next_timer = 0u64;
    while !fanout.stopping() {
        let timeout = if shard.has_more_reads() {
            Some(std::time::Duration::ZERO)
        } else if shard.has_timers() {
            Some(TIMER_EVERY)
        } else {
            None
        };
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                tracing::error!(shard = id, error = %e, "fan-out poll failed");
                std::thread::sleep(TIMER_EVERY);
            }
            continue;
        }
        let now = mono_us();
        let mut woken = false;
        for ev in events.iter() {
            if ev.token() == WAKE {
                woken = true;
                continue;
            }
            let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
            shard.on_ready(ev.token().0 as u32, readable, ev.is_writable(), now);
        }
        if woken {
            fanout.inboxes[id].drain(&mut adds, &mut tracks);
            for new in adds.drain(..) {
                let new = super::NewListener {
                    track: new.track,
                    conn: TcpStream::from_std(new.conn),
                    format: new.format,
                    rest: new.rest,
                    guard: new.guard,
                };
                if let Some(key) = shard.add(new, now) {
                    let conn = shard.conn_mut(key).expect("just added");
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if let Err(e) = poll
                        .registry()
                        .register(conn, Token(key as usize), interest)
                    {
                        tracing::warn!(shard = id, error = %e, "could not watch a listener");
                    }
                }
            }
            for track in tracks.drain(..) {
                shard.on_track(&track, now);
            }
        }
        shard.continue_reads(now);
        if now >= next_timer {
            shard.on_timer(now);
            next_timer = now + TIMER_EVERY.as_micros() as u64;
        }
    }
}
