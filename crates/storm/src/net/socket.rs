//! Sockets as listeners use them: non-blocking connects bound to a source address (ports
//! chosen per destination), kernel receive timestamps (`SO_TIMESTAMP`) read with every
//! `recvmsg` ([`recv_stamped`]), and the process's file-descriptor limit raised.

use mio::net::TcpStream;
use std::io::{self};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;

/// Kernel receive buffer of a listener's socket (the kernel doubles it for its own
/// bookkeeping). Fixed, so that the kernel neither retunes it on every read nor lets one
/// listener's kernel memory grow past it; a 100 ms batched read of a 512 kbit/s stream is
/// 6.4 KB.
pub const RECV_BUF: usize = 64 * 1024;

/// A non-blocking TCP connection to `addr` under way, from `source` when given, with kernel
/// receive timestamps on and a [`RECV_BUF`] receive buffer.
pub fn open(addr: SocketAddr, source: Option<Ipv4Addr>) -> io::Result<TcpStream> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::STREAM.nonblocking(), Some(Protocol::TCP))?;
    s.set_tcp_nodelay(true)?;
    s.set_recv_buffer_size(RECV_BUF)?;
    set_flag(&s, libc::SOL_SOCKET, libc::SO_TIMESTAMP)?;
    if let (Some(src), true) = (source, addr.is_ipv4()) {
        // The port is chosen at connect, per destination: sources never run out of ports
        // because of binding.
        set_flag(&s, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT)?;
        s.bind(&SockAddr::from(SocketAddr::new(src.into(), 0)))?;
    }
    match s.connect(&SockAddr::from(addr)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(s.into()))
}

fn set_flag(s: &socket2::Socket, level: libc::c_int, name: libc::c_int) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live local.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One `recvmsg` into `buf`: the bytes read and, when the socket has `SO_TIMESTAMP` on, when
/// the newest of them arrived (Unix µs, from the kernel).
pub fn recv_stamped(fd: std::os::fd::RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for one timeval control message, aligned.
    let mut control = [0u64; 8];
    // SAFETY: a zeroed msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` describes `buf` and `control`, both live and writable for the call.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let filled = (msg.msg_controllen as usize).min(std::mem::size_of_val(&control));
    // SAFETY: `control` is a live array of `size_of_val(&control)` bytes; `filled` is within.
    let bytes = unsafe { std::slice::from_raw_parts(control.as_ptr().cast::<u8>(), filled) };
    Ok((n as usize, stamp_of(bytes)))
}

/// The `SCM_TIMESTAMP` in a block of control messages as the kernel fills it, Unix µs; `None`
/// when there is none or the block is malformed. Used for `recvmsg` here and io_uring's
/// receives (`crate::net::uring`).
pub fn stamp_of(control: &[u8]) -> Option<u64> {
    let hdr = std::mem::size_of::<libc::cmsghdr>();
    let mut at = 0;
    let mut found = None;
    while at + hdr <= control.len() {
        // SAFETY: `hdr` bytes are inside `control` (checked above); read unaligned.
        let c: libc::cmsghdr = unsafe { std::ptr::read_unaligned(control[at..].as_ptr().cast()) };
        let len = c.cmsg_len as usize;
        if len < hdr || at + len > control.len() {
            break;
        }
        if c.cmsg_level == libc::SOL_SOCKET
            && c.cmsg_type == libc::SCM_TIMESTAMP
            && len >= hdr + std::mem::size_of::<libc::timeval>()
        {
            // SAFETY: the timeval lies inside this message (checked above).
            let tv: libc::timeval =
                unsafe { std::ptr::read_unaligned(control[at + hdr..].as_ptr().cast()) };
            found = Some(tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64);
        }
        at += (len + 7) & !7;
    }
    found
}

/// Raises the soft open-files limit to the hard one (listeners are sockets).
pub fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit read and write the struct we pass, nothing else.
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::clock::now_us;
    use std::io::Write;
    use std::time::Duration;

    #[test]
    fn kernel_receive_timestamps_tell_when_bytes_arrived_not_when_they_were_read() {
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let client = open(addr, Some(Ipv4Addr::new(127, 0, 0, 1))).unwrap();
        let (mut peer, _) = server.accept().unwrap();
        let fd = client.as_raw_fd();
        // Wait for the connection (non-blocking connect).
        let t0 = std::time::Instant::now();
        while client.peer_addr().is_err() {
            assert!(t0.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(1));
        }
        // The kernel turns stamping on a moment after the first socket asks (deferred work):
        // the first bytes may come without a stamp, and are then timed when read.
        let mut buf = [0u8; 64];
        let mut stamped = None;
        for _ in 0..20 {
            let sent = now_us();
            peer.write_all(b"bytes").unwrap();
            std::thread::sleep(Duration::from_millis(150));
            let (n, stamp) = recv_stamped(fd, &mut buf).unwrap();
            assert_eq!(&buf[..n], b"bytes");
            if let Some(stamp) = stamp {
                stamped = Some((sent, stamp, now_us()));
                break;
            }
        }
        let (sent, stamp, read) = stamped.expect("receive timestamps on TCP");
        assert!(
            stamp + 1_000 >= sent && stamp + 100_000 < read,
            "sent {sent}, stamped {stamp}, read {read}"
        );
        // Nothing more: would block, no timestamp invented.
        assert_eq!(
            recv_stamped(fd, &mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }
}
