//! Connections a peer opens on the gRPC or the HTTP port, bounded so that no client — a stray
//! one without the token or a token holder — can exhaust the coordinator's descriptors:
//! - at most `max` connections at once per port (derived from the process's descriptor limit,
//!   which is first raised to its hard limit); one more is closed as soon as it is accepted, so
//!   the coordinator never runs out of descriptors for its store and artifacts;
//! - a connection that has not made one authenticated request within `authenticate_within` is
//!   closed (an idle TCP connection, a TLS handshake that never ends, HTTP/2 pings without a
//!   token);
//! - a connection from which nothing arrived for `idle` is closed. Workers send a heartbeat every
//!   ≤ 2 s while their session is open; `idle` is at least twice the lease timeout, so a paused
//!   worker is expired by the scheduler (and may come back), not cut off by this guard first.
//!
//! Accept errors (out of descriptors and the like) are logged and retried after 100 ms; they
//! never end the server.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Bounds on one port's connections (see the module documentation).
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    pub max: usize,
    pub authenticate_within: Duration,
    pub idle: Duration,
}

/// Descriptors kept for the store, artifacts being written, logs and the other port.
const RESERVED_DESCRIPTORS: u64 = 128;

impl ConnectionLimits {
    /// The limits of a coordinator whose lease timeout is `lease_timeout`, with `share` (in
    /// (0, 1]) of the descriptors left after the reserve: the gRPC port takes most, the HTTP
    /// port the rest.
    pub fn for_this_process(lease_timeout: Duration, share: f64) -> ConnectionLimits {
        let descriptors = raise_descriptor_limit();
        let usable = descriptors.saturating_sub(RESERVED_DESCRIPTORS) as f64 * share.clamp(0.0, 1.0);
        ConnectionLimits {
            max: (usable as usize).clamp(8, 1 << 20),
            authenticate_within: Duration::from_secs(10),
            idle: (lease_timeout * 2).max(Duration::from_secs(60)),
        }
    }
}

/// Raise the soft limit on open descriptors to the hard limit (as servers commonly do: the
/// default soft limit, often 1024, is far below what a fleet of workers needs); returns the
/// soft limit in force afterwards.
pub fn raise_descriptor_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
    }
    limit.rlim_cur
}

/// What a request learns of its connection (a tonic request extension): the peer's address, and
/// the switch a successful token check turns on.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    authenticated: Arc<AtomicBool>,
}

impl ConnInfo {
    /// The connection made an authenticated request: only the idle bound applies from now on.
    pub fn authenticated(&self) {
        self.authenticated.store(true, Ordering::Relaxed);
    }

    /// The connection behind a tonic request, over TLS or not.
    pub fn of<T>(request: &tonic::Request<T>) -> Option<&ConnInfo> {
        let extensions = request.extensions();
        extensions
            .get::<ConnInfo>()
            .or_else(|| extensions.get::<tonic::transport::server::TlsConnectInfo<ConnInfo>>().map(|t| t.get_ref()))
    }
}

/// A connection under its bounds: reads fail with `TimedOut` past a deadline, which ends it.
pub struct Guarded {
    stream: TcpStream,
    info: ConnInfo,
    opened: Instant,
    last_read: Instant,
    limits: Arc<ConnectionLimits>,
    timer: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl Guarded {
    /// What requests on this connection learn of it (the HTTP port marks it authenticated).
    pub fn info(&self) -> &ConnInfo {
        &self.info
    }

    fn deadline(&self) -> (Instant, &'static str) {
        let idle = self.last_read + self.limits.idle;
        let unauthenticated = self.opened + self.limits.authenticate_within;
        if !self.info.authenticated.load(Ordering::Relaxed) && unauthenticated < idle {
            (unauthenticated, "no authenticated request")
        } else {
            (idle, "idle")
        }
    }
}

impl tonic::transport::server::Connected for Guarded {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Guarded {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.last_read = Instant::now();
                }
                return Poll::Ready(result);
            }
            Poll::Pending => {}
        }
        // Nothing to read: wait for the next data or the deadline, whichever comes first.
        loop {
            let (deadline, why) = this.deadline();
            if Instant::now() >= deadline {
                tracing::debug!(peer = ?this.info.remote, why, "connection closed");
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)));
            }
            if this.timer.deadline() != deadline {
                this.timer.as_mut().reset(deadline);
            }
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The accepted connections of a listener, each [`Guarded`]; never yields an error.
pub struct Incoming {
    listener: TcpListener,
    limits: Arc<ConnectionLimits>,
    permits: Arc<Semaphore>,
    /// Connections closed at once for being over `max` (logged at the first and every 1000th).
    refused: Arc<AtomicU64>,
    pause: Option<Pin<Box<Sleep>>>,
}

impl Incoming {
    pub fn new(listener: TcpListener, limits: ConnectionLimits) -> Incoming {
        let permits = Arc::new(Semaphore::new(limits.max));
        Incoming { listener, limits: Arc::new(limits), permits, refused: Arc::default(), pause: None }
    }

    /// The next guarded connection (for accept loops that are not a `Stream` consumer).
    pub async fn accept(&mut self) -> Guarded {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<Guarded> {
        loop {
            if let Some(pause) = self.pause.as_mut() {
                if pause.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.pause = None;
            }
            let (stream, remote) = match self.listener.poll_accept(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(accepted)) => accepted,
                Poll::Ready(Err(e)) => {
                    // Out of descriptors and the like: keep serving once it passes.
                    tracing::warn!(error = %e, "accept failed; retrying in 100 ms");
                    self.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(100))));
                    continue;
                }
            };
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                let n = self.refused.fetch_add(1, Ordering::Relaxed);
                if n.is_multiple_of(1000) {
                    tracing::warn!(peer = %remote, max = self.limits.max, refused = n + 1, "too many connections; closed a new one");
                }
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let now = Instant::now();
            let info = ConnInfo { remote: Some(remote), authenticated: Arc::default() };
            return Poll::Ready(Guarded {
                stream,
                info,
                opened: now,
                last_read: now,
                limits: self.limits.clone(),
                timer: Box::pin(tokio::time::sleep_until(now + self.limits.authenticate_within)),
                _permit: permit,
            });
        }
    }
}

impl tokio_stream::Stream for Incoming {
    type Item = Result<Guarded, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_accept(cx).map(|c| Some(Ok(c)))
    }
}
