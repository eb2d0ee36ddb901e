//! When response bytes arrived, according to the kernel.
//!
//! A probe that reads `Instant::now()` when its task is polled counts the
//! agent's own wake-up latency (the runtime noticing the socket, the task
//! being scheduled) as the target's time. [`RxStream`] wraps a TCP stream,
//! asks the kernel for receive timestamps (`SO_TIMESTAMPNS`) and reads
//! through `recvmsg`: for TCP, every read carries the time the last segment
//! it consumed reached the host. The latest one is kept in an [`RxClock`],
//! which the probe reads to end its phases. Encryption and HTTP framing sit
//! above this wrapper, so TLS does not change what is timed.
//!
//! Where the platform gives no timestamp (the option is refused, or a read
//! comes without one), the time of the read itself stands in: later than
//! the truth, but never later than what the probe would otherwise measure.
//!
//! Linux switches receive timestamping on for the whole host when the first
//! socket asks, through deferred work, and off again when the last one
//! closes; segments that arrive in between are not stamped. So the first
//! stream also opens a loopback UDP socket with the option set and keeps it
//! for the life of the process: every later probe finds timestamping on.
//! This module only timestamps; deciding which instant ends which phase is
//! the probe's business.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A TCP stream that remembers when the data it last read arrived.
pub struct RxStream {
    inner: TcpStream,
    /// Room for one `SCM_TIMESTAMPNS` control message; `None` when the
    /// kernel refused to timestamp this socket.
    cmsg: Option<Vec<u8>>,
    clock: RxClock,
    /// Writes go straight to the socket until one would block (see
    /// [`RxStream::poll_write_vectored`]).
    optimistic: bool,
}

/// The arrival time of the latest bytes read through an [`RxStream`].
/// Cloned into the probe; the stream itself usually lives in a connection
/// task.
#[derive(Clone, Debug, Default)]
pub struct RxClock(Arc<Mutex<Option<Instant>>>);

impl RxClock {
    /// When the bytes of the latest read that returned data arrived, or
    /// `None` before any data was read.
    pub fn latest(&self) -> Option<Instant> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, at: Instant) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(at);
    }
}

impl RxStream {
    /// Wraps `inner`, turning on receive timestamps where the platform has
    /// them. Failing to do so is not an error: reads are then stamped when
    /// they happen.
    pub fn new(inner: TcpStream) -> (Self, RxClock) {
        let clock = RxClock::default();
        let cmsg = sys::enable(&inner).then(sys::cmsg_buffer);
        let stream = RxStream {
            inner,
            cmsg,
            clock: clock.clone(),
            optimistic: true,
        };
        (stream, clock)
    }

    /// Whether the kernel timestamps this socket's reads.
    pub fn kernel_timestamps(&self) -> bool {
        self.cmsg.is_some()
    }

    pub fn get_ref(&self) -> &TcpStream {
        &self.inner
    }
}

/// The largest read through [`RxStream`].
const SCRATCH_LEN: usize = 64 * 1024;

thread_local! {
    /// Where [`RxStream`] reads before copying into the caller's buffer.
    /// `recvmsg` needs initialised memory without `unsafe`, and hyper
    /// hands each read its fresh, uninitialised 8 KiB or more: zeroing
    /// that before every read cost more than copying the bytes that came
    /// (a small response is a few hundred), and touched pages the response
    /// never reached. One buffer per thread, zeroed once.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; SCRATCH_LEN]);
}

impl AsyncRead for RxStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(cmsg) = this.cmsg.as_mut() else {
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            if buf.filled().len() > before {
                this.clock.record(Instant::now());
            }
            return Poll::Ready(Ok(()));
        };
        loop {
            ready!(this.inner.poll_read_ready(cx))?;
            let inner = &this.inner;
            let read = SCRATCH.with_borrow_mut(|scratch| {
                let want = buf.remaining().min(scratch.len());
                // A read that returns less than it asked for has emptied
                // the receive queue (epoll(7) on stream sockets): the
                // socket is then reported not ready, as a read that would
                // block would report it, so the next read (hyper's check
                // for a closed keep-alive connection, after every
                // response) waits for the next arrival instead of costing
                // a system call that finds nothing. Reporting it from
                // inside `try_io` clears only the readiness seen before
                // this read; data or a close that arrives after it is
                // still reported.
                let mut drained = None;
                let r = inner.try_io(Interest::READABLE, || {
                    match sys::recv(inner, &mut scratch[..want], cmsg)? {
                        (n, at) if n > 0 && n < want => {
                            drained = Some((n, at));
                            Err(io::ErrorKind::WouldBlock.into())
                        }
                        full => Ok(full),
                    }
                });
                let r = drained.map_or(r, Ok);
                if let Ok((n, _)) = &r {
                    buf.put_slice(&scratch[..*n]);
                }
                r
            });
            match read {
                Ok((n, arrived)) => {
                    if n > 0 {
                        this.clock
                            .record(arrived.map_or_else(Instant::now, to_instant));
                    }
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for RxStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    /// The runtime writes to a socket only once its event loop has reported
    /// it writable, and a new connection has no report yet: the request
    /// would wait for a trip through the event loop, and that wait (the
    /// agent's, not the target's) would be timed as the target's. So the
    /// first writes are tried on the socket directly; once one would block,
    /// writing goes back to waiting for readiness as usual.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.optimistic {
            match sys::send(&this.inner, bufs) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => this.optimistic = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Maps a wall-clock arrival time onto the monotonic clock the probe times
/// with, through one pair of readings of both clocks taken now. The result
/// is never later than now; a wall clock stepped backwards since the
/// arrival gives now.
fn to_instant(arrived: SystemTime) -> Instant {
    let wall = SystemTime::now();
    let mono = Instant::now();
    let age = wall.duration_since(arrived).unwrap_or_default();
    mono.checked_sub(age).unwrap_or(mono)
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod sys {
    use std::io;
    use std::io::IoSliceMut;
    use std::net::{Ipv4Addr, UdpSocket};
    use std::os::fd::AsRawFd;
    use std::sync::OnceLock;
    use std::time::{Duration, SystemTime};

    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, sendmsg, setsockopt, sockopt};
    use nix::sys::time::TimeSpec;
    use tokio::net::TcpStream;

    use super::UNIX_EPOCH;

    pub fn enable(stream: &TcpStream) -> bool {
        keep_timestamping_on();
        setsockopt(stream, sockopt::ReceiveTimestampns, &true).is_ok()
    }

    /// Holds one socket with timestamps on, so the host never switches
    /// them off between two probes (see the module's documentation).
    fn keep_timestamping_on() {
        static KEEP: OnceLock<Option<UdpSocket>> = OnceLock::new();
        KEEP.get_or_init(|| {
            let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).ok()?;
            setsockopt(&socket, sockopt::ReceiveTimestampns, &true).ok()?;
            Some(socket)
        });
    }

    pub fn cmsg_buffer() -> Vec<u8> {
        nix::cmsg_space!(TimeSpec)
    }

    /// One non-blocking `sendmsg` of `bufs`, whatever the runtime last
    /// heard about the socket's readiness.
    pub fn send(stream: &TcpStream, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        sendmsg::<()>(
            stream.as_raw_fd(),
            bufs,
            &[],
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(io::Error::from)
    }

    /// One `recvmsg` into `buf`: the bytes read and, when the kernel
    /// attached one, when they arrived.
    pub fn recv(
        stream: &TcpStream,
        buf: &mut [u8],
        cmsg: &mut [u8],
    ) -> io::Result<(usize, Option<SystemTime>)> {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(cmsg),
            MsgFlags::MSG_DONTWAIT,
        )
        .map_err(io::Error::from)?;
        // A truncated control buffer cannot be read; the data still counts.
        let arrived = msg.cmsgs().ok().and_then(|mut cmsgs| {
            cmsgs.find_map(|c| match c {
                ControlMessageOwned::ScmTimestampns(ts) if ts.tv_sec() > 0 => {
                    Some(UNIX_EPOCH + Duration::from(ts))
                }
                _ => None,
            })
        });
        Ok((msg.bytes, arrived))
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod sys {
    use std::io;
    use std::time::SystemTime;

    use tokio::net::TcpStream;

    pub fn enable(_: &TcpStream) -> bool {
        false
    }

    pub fn cmsg_buffer() -> Vec<u8> {
        Vec::new()
    }

    pub fn send(stream: &TcpStream, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        stream.try_write_vectored(bufs)
    }

    pub fn recv(
        stream: &TcpStream,
        buf: &mut [u8],
        _: &mut [u8],
    ) -> io::Result<(usize, Option<SystemTime>)> {
        stream.try_read(buf).map(|n| (n, None))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// A connected pair: the probe's side wrapped, the peer a blocking std
    /// socket that a test thread writes to.
    async fn pair() -> (RxStream, RxClock, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (peer, _) = listener.accept().expect("accept");
        let (stream, clock) = RxStream::new(client);
        (stream, clock, peer)
    }

    #[tokio::test]
    async fn a_new_connection_writes_without_waiting_for_the_event_loop() {
        // Made as a probe makes it: nothing has yet told the runtime that
        // the socket is writable.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = crate::probes::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (mut peer, _) = listener.accept().expect("accept");
        let (mut stream, _clock) = RxStream::new(client);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let request = b"GET / HTTP/1.1\r\n\r\n";
        let polled = Pin::new(&mut stream).poll_write(&mut cx, request);
        assert!(matches!(polled, Poll::Ready(Ok(18))), "{polled:?}");
        let mut got = [0u8; 18];
        std::io::Read::read_exact(&mut peer, &mut got).expect("read");
        assert_eq!(&got, request);
        // A peer that has gone away is an error, not a hang.
        drop(peer);
        drop(listener);
        let mut result = Poll::Ready(Ok(0));
        for _ in 0..50 {
            result = Pin::new(&mut stream).poll_write(&mut cx, request);
            if matches!(result, Poll::Ready(Err(_))) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(matches!(result, Poll::Ready(Err(_))), "{result:?}");
    }

    /// Whether the runtime still reports `stream` readable: `try_io` runs
    /// its closure only then.
    fn reported_readable(stream: &RxStream) -> bool {
        let mut ran = false;
        let _ = stream.inner.try_io(Interest::READABLE, || {
            ran = true;
            Ok(())
        });
        ran
    }

    #[tokio::test]
    async fn a_short_read_ends_readiness_without_losing_later_bytes_or_the_close() {
        let (mut stream, _clock, mut peer) = pair().await;
        let mut buf = [0u8; 64];
        peer.write_all(b"abc").expect("write");
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("first read")
            .expect("read");
        assert_eq!(&buf[..n], b"abc");
        if !stream.kernel_timestamps() {
            return; // plain reads: the runtime's own readiness rules
        }
        // Fewer bytes than asked for: the queue is empty, and the next read
        // waits for an arrival rather than asking the kernel.
        assert!(
            !reported_readable(&stream),
            "readiness kept after a short read"
        );
        // Bytes that come later still wake the reader.
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            peer.write_all(b"def").expect("write");
            peer
        });
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("bytes written after a short read were never reported")
            .expect("read");
        assert_eq!(&buf[..n], b"def");
        // Data and the close in one go: the close is still seen.
        let mut peer = writer.join().expect("writer");
        peer.write_all(b"ghi").expect("write");
        drop(peer);
        std::thread::sleep(Duration::from_millis(20));
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
            .await
            .expect("the close after a short read was never reported")
            .expect("read to end");
        assert_eq!(rest, b"ghi");
    }

    #[tokio::test]
    async fn a_full_read_keeps_the_socket_readable() {
        let (mut stream, _clock, mut peer) = pair().await;
        peer.write_all(b"abcdef").expect("write");
        std::thread::sleep(Duration::from_millis(20));
        let mut buf = [0u8; 3];
        stream.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"abc");
        // The buffer filled: there may be more, so the next read asks.
        assert!(reported_readable(&stream));
        stream.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"def");
    }

    /// Waits until the host stamps received segments: the first stream of
    /// the process has just asked it to, and it does so in deferred work.
    /// There is nothing to await, so this polls, for a second at most.
    async fn timestamping_on() {
        let (mut stream, clock, mut peer) = pair().await;
        let mut buf = [0u8; 1];
        for _ in 0..100 {
            peer.write_all(b"x").expect("write");
            std::thread::sleep(Duration::from_millis(10));
            let n = stream.read(&mut buf).await.expect("read");
            assert_eq!(n, 1);
            let read_at = Instant::now();
            if clock
                .latest()
                .is_some_and(|t| read_at - t >= Duration::from_millis(5))
            {
                return;
            }
        }
        panic!("the kernel never stamped a received segment");
    }

    /// Bytes that arrive while the runtime is blocked are stamped with their
    /// arrival, not with the read that happens 80 ms later.
    #[tokio::test]
    async fn a_late_read_reports_when_the_bytes_arrived() {
        timestamping_on().await;
        let (mut stream, clock, mut peer) = pair().await;
        assert!(stream.kernel_timestamps(), "SO_TIMESTAMPNS refused");
        assert_eq!(clock.latest(), None);
        let written = std::thread::spawn(move || {
            let before = Instant::now();
            peer.write_all(b"hello").expect("write");
            let after = Instant::now();
            (before, after, peer)
        })
        .join()
        .expect("writer thread");
        let (before, after, _peer) = written;
        // The runtime is busy elsewhere: this is the wake-up latency that
        // polling-time measurements would count.
        std::thread::sleep(Duration::from_millis(80));
        let mut buf = [0u8; 16];
        let n = stream.read(&mut buf).await.expect("read");
        let read_at = Instant::now();
        assert_eq!(&buf[..n], b"hello");
        let arrived = clock
            .latest()
            .expect("a read that returned data is stamped");
        assert!(read_at - after >= Duration::from_millis(80));
        // The kernel stamps loopback data inside the sender's write; the
        // mapping between clocks is good to microseconds.
        let slack = Duration::from_micros(500);
        assert!(
            arrived + slack >= before && arrived <= after + slack,
            "stamped {:?} after the write began, write took {:?}",
            arrived.saturating_duration_since(before),
            after - before
        );
    }

    /// Reads larger than the per-thread buffer, and reads into buffers much
    /// smaller than it, deliver every byte in order.
    #[tokio::test]
    async fn reads_of_any_size_deliver_every_byte_in_order() {
        let (mut stream, _clock, mut peer) = pair().await;
        assert!(stream.kernel_timestamps(), "SO_TIMESTAMPNS refused");
        let sent: Vec<u8> = (0..3 * SCRATCH_LEN + 12_345)
            .map(|i| (i % 251) as u8)
            .collect();
        let expect = sent.clone();
        let writer = std::thread::spawn(move || {
            peer.write_all(&sent).expect("write");
        });
        let mut got = vec![0u8; 7];
        stream.read_exact(&mut got).await.expect("small read");
        let mut big = vec![0u8; 2 * SCRATCH_LEN];
        let mut n = stream.read(&mut big).await.expect("large read");
        assert!(n > 0 && n <= SCRATCH_LEN, "read {n} bytes");
        got.extend_from_slice(&big[..n]);
        while got.len() < expect.len() {
            n = stream.read(&mut big).await.expect("read");
            assert!(n > 0, "early end after {} bytes", got.len());
            got.extend_from_slice(&big[..n]);
        }
        writer.join().expect("writer thread");
        assert!(got == expect, "bytes differ");
    }

    /// The stamp follows the latest read, and writes pass through.
    #[tokio::test]
    async fn the_latest_read_wins_and_writes_pass_through() {
        timestamping_on().await;
        let (mut stream, clock, mut peer) = pair().await;
        stream.write_all(b"ping").await.expect("write");
        stream.flush().await.expect("flush");
        let mut got = [0u8; 4];
        std::io::Read::read_exact(&mut peer, &mut got).expect("peer read");
        assert_eq!(&got, b"ping");

        peer.write_all(b"one").expect("write");
        let mut buf = [0u8; 16];
        let n = stream.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"one");
        let first = clock.latest().expect("stamped");

        std::thread::sleep(Duration::from_millis(20));
        let before = Instant::now();
        peer.write_all(b"two").expect("write");
        let n = stream.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"two");
        let second = clock.latest().expect("stamped");
        assert!(second >= before, "{second:?} < {before:?}");
        assert!(second - first >= Duration::from_millis(20));

        // End of stream reads no data and leaves the stamp alone.
        drop(peer);
        let n = stream.read(&mut buf).await.expect("read at EOF");
        assert_eq!(n, 0);
        assert_eq!(clock.latest(), Some(second));
    }

    #[test]
    fn mapped_instants_are_never_in_the_future() {
        let now = Instant::now();
        assert!(to_instant(SystemTime::now() + Duration::from_secs(5)) >= now);
        assert!(to_instant(SystemTime::now() + Duration::from_secs(5)) <= Instant::now());
        let old = to_instant(SystemTime::now() - Duration::from_millis(250));
        let age = Instant::now() - old;
        assert!(
            age >= Duration::from_millis(250) && age < Duration::from_millis(260),
            "{age:?}"
        );
    }
}
