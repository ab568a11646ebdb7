//! Batched reads through io_uring: each listener socket with audio holds one multishot
//! `recvmsg` with kernel-chosen buffers, and the thread collects what every socket received
//! with a few `io_uring_enter` calls per period (the kernel runs about 20 receives a call).
//!
//! Why: a batched read through epoll costs a readiness event and one `recvmsg` system call per
//! socket and period (the kernel's re-poll of each ready socket, the system call's entry and
//! exit, the file look-up). Here the ring is created with deferred task work
//! (`IORING_SETUP_DEFER_TASKRUN`): an arrival only queues work, and the receives run when the
//! thread asks for completions, inside those calls, each taking everything its socket holds
//! at that moment. Every completion carries the kernel's receive timestamp
//! (`SO_TIMESTAMP`) of its newest bytes, as [`crate::net::socket::recv_stamped`] does.
//!
//! Contract: [`Ring::arm`] a connected socket with a tag; [`Ring::drain`] hands every
//! completion to a callback as [`Got`] with that tag, and re-arms the tags whose callback
//! asks for it (a receive ended by a shortage of buffers, or a completion without "more").
//! A socket is disarmed by shutting it down (its receive ends with the end of the stream) and
//! [`Ring::cancel`]; completions of a tag the caller no longer knows are to be ignored (their
//! buffers are recycled here either way).
//!
//! Bounds: [`RING_BUFFERS`] buffers of [`RING_BUF`] bytes per ring (a fixed 4 MiB a thread,
//! not per listener); a socket with more than a buffer's worth completes once per buffer; one
//! with none free waits for the next pass of the same drain, at most [`MAX_PASSES`] a drain.
//! A ring's buffers are shared by all its sockets: memory per listener does not grow with it.

use crate::net::socket::stamp_of;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU16, Ordering};

/// Buffers per ring (a power of two).
pub const RING_BUFFERS: u16 = 1024;
/// Bytes per buffer: the completion's header (16), the timestamp's control message (32) and
/// up to 4048 bytes of stream.
pub const RING_BUF: usize = 4096;
/// Completion passes at most per drain: each runs the receives that are due (the kernel runs
/// about 20 per call) and re-arms what found no buffer; the drain ends with a pass that finds
/// nothing, or after this many, which is more receives than the sockets a process may hold
/// (20,000 open files here), so a drain reads every socket that has bytes.
pub const MAX_PASSES: usize = 4096;
/// Submission queue entries.
const SQ_ENTRIES: u32 = 4096;
/// Completion queue entries.
const CQ_ENTRIES: u32 = 8 * SQ_ENTRIES;
/// Room for one `SCM_TIMESTAMP` control message: `CMSG_SPACE(sizeof(struct timeval))`.
const CONTROL: u32 = 32;
/// The buffer group of the ring's buffers.
const GROUP: u16 = 0;
/// `IORING_ENTER_GETEVENTS`.
const ENTER_GETEVENTS: u32 = 1;
/// The tag of cancellations (their completions are dropped).
const CANCEL: u64 = u64::MAX;

/// One completion of an armed socket.
#[derive(Debug)]
pub enum Got<'a> {
    /// Stream bytes.
    Data {
        /// The bytes, in stream order.
        bytes: &'a [u8],
        /// When the newest of them arrived (Unix µs, from the kernel), when stamped.
        stamp: Option<u64>,
    },
    /// No buffer was free: the bytes wait in the socket; the callback's answer says whether
    /// the next pass reads them.
    Again,
    /// The end of the stream (`Ok`) or an error; the receive is over.
    End(io::Result<()>),
}

/// A ring for batched reads, to be made and used on one thread (it is created with
/// `IORING_SETUP_SINGLE_ISSUER`: another thread's calls are refused by the kernel).
pub struct Ring {
    // Dropped first: closing the ring ends every request before the memory below goes.
    ring: IoUring,
    msg: Box<libc::msghdr>,
    entries: *mut types::BufRingEntry,
    entries_len: usize,
    bufs: Vec<u8>,
    /// Buffers (a power of two).
    count: u16,
    tail: u16,
    rearm: Vec<(RawFd, u64)>,
}

// SAFETY: the raw pointers are this ring's own mapping and buffers, used by no one else; a
// ring moved to another thread is refused by the kernel (single issuer), not misused.
unsafe impl Send for Ring {}

impl Ring {
    /// A ring with its buffers registered; an error where the kernel offers no io_uring (or
    /// not these features: deferred task work since 6.1, buffer rings since 5.19).
    pub fn new() -> io::Result<Ring> {
        Ring::with_buffers(RING_BUFFERS)
    }

    /// The same with `count` buffers (a power of two, at most [`RING_BUFFERS`]).
    fn with_buffers(count: u16) -> io::Result<Ring> {
        assert!(count.is_power_of_two() && count <= RING_BUFFERS);
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(CQ_ENTRIES)
            .build(SQ_ENTRIES)?;
        let entries_len = count as usize * std::mem::size_of::<types::BufRingEntry>();
        // SAFETY: an anonymous private mapping, checked below; unmapped in Drop.
        let mem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                entries_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if mem == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a zeroed msghdr is valid; only its name and control lengths are read by the
        // kernel for a multishot receive.
        let mut msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        msg.msg_controllen = CONTROL as _;
        // Every buffer is written once now: the kernel cycles through all of them within a
        // few drains, so they are the thread's start-up memory, not memory that grows with
        // its listeners.
        let bufs = vec![1u8; count as usize * RING_BUF];
        let mut r = Ring {
            ring,
            msg,
            entries: mem.cast(),
            entries_len,
            bufs,
            count,
            tail: 0,
            rearm: Vec::new(),
        };
        for bid in 0..count {
            r.put_back(bid);
        }
        r.publish_tail();
        // SAFETY: the entries stay mapped, and the buffers allocated, until the ring is
        // dropped (field order above).
        unsafe {
            r.ring
                .submitter()
                .register_buf_ring_with_flags(mem as u64, count, GROUP, 0)?;
        }
        Ok(r)
    }

    /// Starts the multishot receive of `fd` under `tag` (not [`u64::MAX`]).
    pub fn arm(&mut self, fd: RawFd, tag: u64) -> io::Result<()> {
        debug_assert_ne!(tag, CANCEL);
        let sqe = self.receive(fd, tag);
        self.push(&sqe)
    }

    /// The multishot receive of `fd` under `tag`.
    fn receive(&self, fd: RawFd, tag: u64) -> squeue::Entry {
        opcode::RecvMsgMulti::new(types::Fd(fd), &*self.msg, GROUP)
            .build()
            .user_data(tag)
    }

    /// Cancels the receive of `tag`, if any is in flight (sent with the next drain).
    pub fn cancel(&mut self, tag: u64) -> io::Result<()> {
        let sqe = opcode::AsyncCancel::new(tag).build().user_data(CANCEL);
        self.push(&sqe)
    }

    fn push(&mut self, sqe: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: the receive's msghdr lives in `self.msg` and its buffers in `self.bufs`,
            // both as long as the ring.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    /// Submits what is queued, runs every receive that became due and hands each completion
    /// to `f` with its tag; `f` returns the socket to keep reading, `None` once the tag is
    /// no longer read (ignored after [`Got::End`]). Returns the completions seen.
    pub fn drain(&mut self, mut f: impl FnMut(u64, Got<'_>) -> Option<RawFd>) -> io::Result<usize> {
        let mut seen = 0;
        for _ in 0..MAX_PASSES {
            for (fd, tag) in std::mem::take(&mut self.rearm) {
                let sqe = self.receive(fd, tag);
                self.push(&sqe)?;
            }
            // GETEVENTS runs the deferred receives, about 20 a call (the kernel's own bound
            // when no completions are awaited): passes go on until one finds nothing.
            let queued = self.ring.submission().len() as u32;
            // SAFETY: no argument is passed.
            match unsafe {
                self.ring
                    .submitter()
                    .enter::<libc::sigset_t>(queued, 0, ENTER_GETEVENTS, None)
            } {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
                Err(e) => return Err(e),
            }
            let mut pass = 0;
            loop {
                let Some(cqe) = self.ring.completion().next() else {
                    break;
                };
                pass += 1;
                self.complete(&cqe, &mut f);
            }
            self.publish_tail();
            seen += pass;
            if pass == 0 && self.rearm.is_empty() {
                break;
            }
        }
        Ok(seen)
    }

    fn complete(&mut self, cqe: &cqueue::Entry, f: &mut impl FnMut(u64, Got<'_>) -> Option<RawFd>) {
        let tag = cqe.user_data();
        if tag == CANCEL {
            return;
        }
        let res = cqe.result();
        let more = cqueue::more(cqe.flags());
        let bid = cqueue::buffer_select(cqe.flags());
        let mut keep = None;
        if res < 0 {
            if res == -libc::ENOBUFS {
                // Out of buffers: the bytes wait in the socket for the next pass, which asks
                // the caller whether it still reads them.
                keep = f(tag, Got::Again);
            } else if res != -libc::ECANCELED {
                f(tag, Got::End(Err(io::Error::from_raw_os_error(-res))));
            }
        } else if let Some(bid) = bid {
            let start = bid as usize * RING_BUF;
            let buf = &self.bufs[start..start + (res as usize).min(RING_BUF)];
            match types::RecvMsgOut::parse(buf, &self.msg) {
                Ok(out) if !out.payload_data().is_empty() => {
                    let stamp = stamp_of(out.control_data());
                    keep = f(
                        tag,
                        Got::Data {
                            bytes: out.payload_data(),
                            stamp,
                        },
                    );
                }
                Ok(_) => {
                    f(tag, Got::End(Ok(())));
                }
                Err(()) => {
                    f(
                        tag,
                        Got::End(Err(io::Error::other("truncated io_uring receive"))),
                    );
                }
            }
        } else {
            f(tag, Got::End(Ok(())));
        }
        if let Some(bid) = bid {
            self.put_back(bid);
        }
        if let (Some(fd), false) = (keep, more) {
            self.rearm.push((fd, tag));
        }
    }

    fn put_back(&mut self, bid: u16) {
        let mask = self.count - 1;
        // SAFETY: `tail & mask` indexes the mapped entries; the kernel reads an entry only
        // once the published tail passes it.
        unsafe {
            let e = &mut *self.entries.add((self.tail & mask) as usize);
            e.set_addr(self.bufs.as_ptr().add(bid as usize * RING_BUF) as u64);
            e.set_len(RING_BUF as u32);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish_tail(&self) {
        // SAFETY: the tail is the first entry's reserved field, inside the mapping, read by
        // the kernel atomically.
        unsafe {
            let tail = types::BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // The ring's fd closes with `self.ring`, after this body; end its requests first so
        // that nothing writes to the buffers once they are freed.
        let _ = self.ring.submitter().unregister_buf_ring(GROUP);
        // SAFETY: the mapping made in `new`, unregistered above.
        unsafe {
            libc::munmap(self.entries.cast(), self.entries_len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::clock::now_us;
    use std::collections::HashMap;
    use std::io::Write;
    use std::net::{Ipv4Addr, TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    /// `n` connected pairs (listener socket with timestamps on, the server's end).
    fn pairs(n: usize) -> Vec<(mio::net::TcpStream, TcpStream)> {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        (0..n)
            .map(|_| {
                let client = crate::net::socket::open(addr, Some(Ipv4Addr::LOCALHOST)).unwrap();
                let (peer, _) = server.accept().unwrap();
                let t0 = Instant::now();
                while client.peer_addr().is_err() {
                    assert!(t0.elapsed() < Duration::from_secs(5));
                    std::thread::sleep(Duration::from_millis(1));
                }
                (client, peer)
            })
            .collect()
    }

    /// What one tag got: its bytes, its newest stamp, and how it ended (`Some(true)`: the
    /// end of the stream).
    type Heard = (Vec<u8>, Option<u64>, Option<bool>);

    /// Drains until `want` bytes came for every tag or `within` passed; what each tag got, its
    /// newest stamp, and whether it ended.
    fn collect(
        ring: &mut Ring,
        fds: &HashMap<u64, RawFd>,
        want: usize,
        within: Duration,
    ) -> HashMap<u64, Heard> {
        let mut got: HashMap<u64, Heard> = HashMap::new();
        let t0 = Instant::now();
        while t0.elapsed() < within {
            ring.drain(|tag, g| {
                let e = got.entry(tag).or_default();
                match g {
                    Got::Data { bytes, stamp } => {
                        e.0.extend_from_slice(bytes);
                        e.1 = e.1.max(stamp);
                    }
                    Got::Again => {}
                    Got::End(r) => {
                        e.2 = Some(r.is_ok());
                        return None;
                    }
                }
                fds.get(&tag).copied()
            })
            .unwrap();
            if fds.keys().all(|t| {
                got.get(t)
                    .is_some_and(|e| e.0.len() >= want || e.2.is_some())
            }) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        got
    }

    #[test]
    fn a_drain_takes_every_sockets_bytes_in_order_with_their_arrival_times() {
        let Ok(mut ring) = Ring::with_buffers(4) else {
            panic!("io_uring with deferred task work and buffer rings (Linux 6.1+) is needed");
        };
        // More sockets than buffers, and more bytes per socket than a buffer holds: the
        // receives that find no buffer wait for the next pass.
        let mut p = pairs(8);
        let mut fds = HashMap::new();
        for (i, (c, _)) in p.iter().enumerate() {
            ring.arm(c.as_raw_fd(), i as u64 + 1).unwrap();
            fds.insert(i as u64 + 1, c.as_raw_fd());
        }
        let sent = now_us();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        for (_, peer) in p.iter_mut() {
            peer.write_all(&data).unwrap();
        }
        std::thread::sleep(Duration::from_millis(150));
        let got = collect(&mut ring, &fds, data.len(), Duration::from_secs(5));
        let read = now_us();
        for tag in fds.keys() {
            let (bytes, stamp, end) = &got[tag];
            assert_eq!(bytes, &data, "tag {tag}: every byte, in order");
            assert_eq!(*end, None);
            // Stamped by the kernel when the bytes came, not when the drain ran (the kernel
            // may enable stamping a moment after the first socket asks; then none).
            if let Some(stamp) = stamp {
                assert!(
                    *stamp + 1_000 >= sent && stamp + 100_000 < read,
                    "sent {sent}, stamped {stamp}, read {read}"
                );
            }
        }
        // The server's close ends the receive with the end of the stream.
        let (_, peer) = p.pop().unwrap();
        drop(peer);
        let got = collect(
            &mut ring,
            &HashMap::from([(8, fds[&8])]),
            usize::MAX,
            Duration::from_secs(5),
        );
        assert_eq!(got[&8].2, Some(true));
        // A socket shut down on our side ends its receive too (that is how the worker lets
        // one go), and a cancelled one reports nothing more.
        let (c, _peer) = &p[0];
        c.shutdown(std::net::Shutdown::Both).unwrap();
        ring.cancel(1).unwrap();
        let got = collect(
            &mut ring,
            &HashMap::from([(1, fds[&1])]),
            usize::MAX,
            Duration::from_millis(300),
        );
        assert!(got
            .get(&1)
            .is_none_or(|e| e.0.is_empty() && e.2 != Some(false)));
    }

    #[test]
    fn one_drain_reads_every_socket_that_has_bytes() {
        // The kernel runs only about 20 deferred receives per call unless asked for more: a
        // drain must still take every socket's bytes, or listeners would fall behind.
        let mut ring = Ring::with_buffers(256).expect("io_uring (Linux 6.1+)");
        let mut p = pairs(150);
        for (i, (c, _)) in p.iter().enumerate() {
            ring.arm(c.as_raw_fd(), i as u64 + 1).unwrap();
        }
        // The arms are submitted with the first drain, which finds nothing yet.
        ring.drain(|_, _| None).unwrap();
        for (_, peer) in p.iter_mut() {
            peer.write_all(b"one chunk").unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
        let mut got = HashMap::new();
        let fds: HashMap<u64, RawFd> = p
            .iter()
            .enumerate()
            .map(|(i, (c, _))| (i as u64 + 1, c.as_raw_fd()))
            .collect();
        ring.drain(|tag, g| {
            if let Got::Data { bytes, .. } = g {
                got.entry(tag)
                    .or_insert_with(Vec::new)
                    .extend_from_slice(bytes);
            }
            fds.get(&tag).copied()
        })
        .unwrap();
        assert_eq!(got.len(), 150, "sockets read in one drain");
        assert!(got.values().all(|b| b == b"one chunk"));
    }

    #[test]
    fn control_blocks_give_their_timestamp_and_malformed_ones_none() {
        let hdr = std::mem::size_of::<libc::cmsghdr>();
        let mut c = vec![0u8; 32];
        let len = (hdr + std::mem::size_of::<libc::timeval>()) as usize;
        c[..8].copy_from_slice(&(len as u64).to_ne_bytes());
        c[8..12].copy_from_slice(&libc::SOL_SOCKET.to_ne_bytes());
        c[12..16].copy_from_slice(&libc::SCM_TIMESTAMP.to_ne_bytes());
        c[16..24].copy_from_slice(&7i64.to_ne_bytes());
        c[24..32].copy_from_slice(&5i64.to_ne_bytes());
        assert_eq!(stamp_of(&c), Some(7_000_005));
        // A length past the block, or shorter than a header: nothing.
        c[..8].copy_from_slice(&64u64.to_ne_bytes());
        assert_eq!(stamp_of(&c), None);
        c[..8].copy_from_slice(&3u64.to_ne_bytes());
        assert_eq!(stamp_of(&c), None);
        assert_eq!(stamp_of(&[]), None);
    }
}
