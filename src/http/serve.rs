//! Serving plain HTTP: hyper (HTTP/1.1 and h2c, through hyper-util's `auto` builder, as
//! `axum::serve` does) for every connection, with one lean path for event streams.
//!
//! A connection whose request is an event stream (`GET`, HTTP/1.1, `Accept: text/event-stream`,
//! no body, no upgrade) has its request head read and parsed here (`httparse`) and is answered
//! by the same router as every other request, so API keys, CORS, request ids, the request log,
//! the counters and the problem format are the router's own. Only the response is written
//! here, without per-connection buffers: the head once, then each body chunk with its chunked
//! framing in one vectored write. An idle subscriber then costs its task, its queue and its
//! response body, not hyper's 8 KiB read and 8 KiB write buffers (BENCHMARKS.md, "Where one
//! idle subscriber's memory goes"). On a kept-alive connection the next request is read here
//! too, so a reconnecting `EventSource` stays on this path; the first request that is not an
//! event stream — and everything after it on that connection — goes to hyper, with the bytes
//! already read. Other requests, h2c, bad or huge heads go to hyper from the first byte.
//!
//! Shutdown: once it begins, no connection is accepted, a lean connection takes no further
//! request (one waiting for its first closes), and a response written meanwhile says
//! `connection: close`.
//!
//! Bounds: a request head is at most [`MAX_HEAD`] bytes on this path (longer ones go to hyper)
//! and must arrive within `head_timeout` once begun (hyper's connections have the same);
//! bytes a client sends while its stream runs are kept up to [`MAX_PIPELINED`] (more closes the
//! connection); a chunk whose write makes no progress for `stall_timeout` closes the
//! connection, so a stuck client holds at most its queue and its kernel send buffer.

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The longest request head the lean path reads; a longer one is hyper's to answer.
pub const MAX_HEAD: usize = 16 * 1024;
/// The most bytes kept from a client that sends more while its stream runs.
pub const MAX_PIPELINED: usize = 16 * 1024;
/// Headers parsed on the lean path; more go to hyper.
const MAX_HEADERS: usize = 64;

/// How client connections are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionSettings {
    /// Event streams over plain HTTP/1.1 are written by the gateway's lean path (no hyper
    /// buffers per subscriber); false serves them with hyper like every other request.
    pub lean_streams: bool,
    /// A lean stream whose next chunk cannot be written for this long is closed (its client
    /// stopped reading).
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
    /// Longest a client may take to send a request head once it has begun one, on the lean
    /// path and on hyper's (whose own default is off without a timer); then it is closed.
    #[serde(with = "humantime_serde")]
    pub head_timeout: Duration,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        ConnectionSettings {
            lean_streams: true,
            stall_timeout: Duration::from_secs(30),
            head_timeout: Duration::from_secs(30),
        }
    }
}

impl ConnectionSettings {
    pub fn check(&self, problems: &mut crate::settings::Problems) {
        problems.check(!self.stall_timeout.is_zero(), "connections.stall_timeout must be more than zero");
        problems.check(!self.head_timeout.is_zero(), "connections.head_timeout must be more than zero");
    }
}

/// The lean path's counters (read by `/metrics`).
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Event streams answered on the lean path.
    pub lean_streams: AtomicU64,
    /// Of those, the ones still open.
    pub lean_streams_open: AtomicU64,
    /// Lean streams closed because their client stopped reading for the stall timeout.
    pub stalled_closes: AtomicU64,
}

/// The next connection. A failed accept (out of descriptors and the like) is logged and
/// retried after a short pause rather than in a spin.
pub async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((tcp, remote)) => {
                // Events are written as they come; Nagle would hold a small one for an ACK.
                let _ = tcp.set_nodelay(true);
                return (tcp, remote);
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves `listener` until `stopping` is cancelled: then it stops accepting, lean connections
/// take no further request (and those waiting for one close), `drained` runs (the hub ends
/// every stream), and open connections get at most `drain` to finish. Each request carries
/// `ConnectInfo<SocketAddr>`, as with `axum::serve`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: ConnectionSettings,
    stats: Arc<ConnectionStats>,
    stopping: CancellationToken,
    drained: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (tcp, remote) = tokio::select! {
            _ = stopping.cancelled() => break,
            accepted = accept(&listener) => accepted,
        };
        tracing::trace!(%remote, "connection accepted");
        let router = router.clone();
        // Held for the connection's whole life, lean part included, so a graceful shutdown
        // waits for it.
        let watcher = graceful.watcher();
        let stopping = stopping.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let (tcp, prefix) = if settings.lean_streams {
                match lean(tcp, remote, &router, &settings, &stopping, &stats).await {
                    Lean::Done => return,
                    Lean::ToHyper(tcp, prefix) => (tcp, prefix),
                }
            } else {
                (tcp, Bytes::new())
            };
            // Boxed: hyper's connection state is then allocated only for connections it serves,
            // not reserved in every lean stream's task.
            Box::pin(with_hyper(tcp, prefix, remote, router, watcher, settings.head_timeout)).await;
        });
    }
    drop(listener);
    drained.await;
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::info!("connections still open after the drain time; they end with the process");
    }
    Ok(())
}

/// Serves a connection with hyper (HTTP/1.1, or h2c by its preface), `prefix` first.
async fn with_hyper(
    tcp: TcpStream,
    prefix: Bytes,
    remote: SocketAddr,
    router: Router,
    watcher: hyper_util::server::graceful::Watcher,
    head_timeout: Duration,
) {
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(remote));
        router.clone().oneshot(request)
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(head_timeout);
    builder.http2().enable_connect_protocol();
    let io = TokioIo::new(Rewind { prefix, inner: tcp });
    let connection = builder.serve_connection_with_upgrades(io, service);
    match watcher.watch(connection.into_owned()).await {
        Ok(()) => tracing::trace!(%remote, "connection closed"),
        Err(e) => tracing::debug!(%remote, error = %e, "connection ended with an error"),
    }
}

/// What the lean path did with a connection.
enum Lean {
    /// Answered and closed (or gone).
    Done,
    /// Hyper's to serve, starting with these bytes.
    ToHyper(TcpStream, Bytes),
}

/// Reads request heads and answers those that ask for an event stream here, one after the
/// other on a kept-alive connection (a browser's `EventSource` reconnects on it); the first
/// other request, and everything after it, is hyper's.
async fn lean(
    mut tcp: TcpStream,
    remote: SocketAddr,
    router: &Router,
    settings: &ConnectionSettings,
    stopping: &CancellationToken,
    stats: &ConnectionStats,
) -> Lean {
    let mut carried = BytesMut::new();
    loop {
        if carried.is_empty() {
            // Nothing is allocated for a connection until it sends something.
            tokio::select! {
                readable = tcp.readable() => if readable.is_err() { return Lean::Done },
                _ = stopping.cancelled() => return Lean::Done,
            }
            carried.reserve(1024);
        }
        let mut buf = carried;
        let next = tokio::select! {
            next = tokio::time::timeout(settings.head_timeout, read_head(&mut tcp, &mut buf)) => next,
            _ = stopping.cancelled() => return Lean::Done,
        };
        let (request, head_len) = match next {
            // A head that never completes holds nothing for long.
            Err(_) => return Lean::Done,
            Ok(Next::Closed) => return Lean::Done,
            Ok(Next::Other) => return Lean::ToHyper(tcp, buf.freeze()),
            Ok(Next::Stream(request, len)) => (*request, len),
        };
        // Whatever followed the head (a pipelined request) is the next request's.
        let mut pending = if buf.len() > head_len { BytesMut::from(&buf[head_len..]) } else { BytesMut::new() };
        drop(buf);
        let close = request
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"))));
        let mut request = request;
        request.extensions_mut().insert(ConnectInfo(remote));
        // Boxed: the middleware stack's future is large and lives only until the response head;
        // inline, the task would reserve its size for the stream's whole life.
        let Ok(response) = Box::pin(router.clone().oneshot(request)).await;
        stats.lean_streams.fetch_add(1, Ordering::Relaxed);
        let outcome = {
            let _open = OpenStream::new(stats);
            let close = close || stopping.is_cancelled();
            respond(&mut tcp, response, close, &mut pending, settings).await
        };
        let keep = match outcome {
            Ok(keep) => keep,
            Err(e) => {
                if e.kind() == io::ErrorKind::TimedOut {
                    stats.stalled_closes.fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!(%remote, error = %e, "event stream connection ended");
                false
            }
        };
        if !keep || stopping.is_cancelled() {
            let _ = tcp.shutdown().await;
            tracing::trace!(%remote, "connection closed");
            return Lean::Done;
        }
        carried = pending;
    }
}

/// Counts a lean response as open until it is dropped (also by a panic in the body).
struct OpenStream<'a>(&'a ConnectionStats);

impl<'a> OpenStream<'a> {
    fn new(stats: &'a ConnectionStats) -> Self {
        stats.lean_streams_open.fetch_add(1, Ordering::Relaxed);
        OpenStream(stats)
    }
}

impl Drop for OpenStream<'_> {
    fn drop(&mut self) {
        self.0.lean_streams_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The next request on a connection, as far as the lean path is concerned.
enum Next {
    /// The client closed (or the socket failed) before a head began.
    Closed,
    /// Not an event-stream request (or not one this path parses): hyper's, from `buf`.
    Other,
    Stream(Box<Request<Body>>, usize),
}

/// Reads until `buf` holds a whole request head (it may already), up to [`MAX_HEAD`] bytes.
async fn read_head(tcp: &mut TcpStream, buf: &mut BytesMut) -> Next {
    loop {
        if !buf.is_empty() {
            match parse_stream_request(buf) {
                Head::Partial if buf.len() < MAX_HEAD => {}
                Head::Partial | Head::Other => return Next::Other,
                Head::Stream(request, len) => return Next::Stream(request, len),
            }
        }
        if buf.capacity() == buf.len() {
            buf.reserve(buf.len().max(1024));
        }
        match tcp.read_buf(buf).await {
            Ok(0) if buf.is_empty() => return Next::Closed,
            // A head cut short: hyper answers it as it would.
            Ok(0) => return Next::Other,
            Ok(_) => {}
            Err(_) => return Next::Closed,
        }
    }
}

enum Head {
    Partial,
    /// Not for the lean path (or not parseable here): hyper's.
    Other,
    Stream(Box<Request<Body>>, usize),
}

/// An HTTP/1.1 `GET` for an event stream with no body and no upgrade, as a request for the
/// router, and the head's length.
fn parse_stream_request(bytes: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let len = match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::Other,
    };
    if parsed.method != Some("GET") || parsed.version != Some(1) {
        return Head::Other;
    }
    // First, without allocating: is this a request for the lean path at all?
    let mut event_stream = false;
    for h in parsed.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("transfer-encoding")
            || (name.eq_ignore_ascii_case("content-length")
                && (h.value.is_empty() || h.value.iter().any(|b| *b != b'0')))
        {
            return Head::Other;
        }
        if name.eq_ignore_ascii_case("accept")
            && h.value.windows(b"text/event-stream".len()).any(|w| w.eq_ignore_ascii_case(b"text/event-stream"))
        {
            event_stream = true;
        }
    }
    if !event_stream {
        return Head::Other;
    }
    let mut builder = Request::builder().method(Method::GET).version(Version::HTTP_11);
    for h in parsed.headers.iter() {
        let Ok(value) = HeaderValue::from_bytes(h.value) else { return Head::Other };
        builder = builder.header(h.name, value);
    }
    match builder.uri(parsed.path.unwrap_or("/")).body(Body::empty()) {
        Ok(request) => Head::Stream(Box::new(request), len),
        Err(_) => Head::Other,
    }
}

/// Writes the response: a sized body at once, any other as chunks while it lasts. Returns
/// whether the connection can serve another request.
async fn respond(
    tcp: &mut TcpStream,
    response: Response<Body>,
    close: bool,
    pending: &mut BytesMut,
    settings: &ConnectionSettings,
) -> io::Result<bool> {
    let (parts, body) = response.into_parts();
    let bodiless = parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    let size = body.size_hint().exact();
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING || name == header::CONNECTION {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if close {
        head.extend_from_slice(b"connection: close\r\n");
    }
    if !bodiless {
        match size {
            Some(n) => {
                head.extend_from_slice(b"content-length: ");
                head.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                head.extend_from_slice(b"\r\n");
            }
            None => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        }
    }
    if !parts.headers.contains_key(header::DATE) {
        head.extend_from_slice(b"date: ");
        head.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    // The response's header map and extensions are not needed past the head: a stream would
    // otherwise keep them (~0.7 KiB) for its whole life.
    drop(parts);
    if bodiless || size.is_some() {
        let body = if bodiless {
            Bytes::new()
        } else {
            axum::body::to_bytes(body, usize::MAX).await.map_err(io::Error::other)?
        };
        write_all(tcp, &[&head[..], &body[..]], settings.stall_timeout).await?;
        return Ok(!close);
    }
    write_all(tcp, &[&head[..]], settings.stall_timeout).await?;
    drop(head);
    let mut chunks = body.into_data_stream();
    let mut probe = [0u8; 64];
    loop {
        tokio::select! {
            chunk = chunks.next() => match chunk {
                Some(Ok(bytes)) if bytes.is_empty() => {}
                Some(Ok(bytes)) => {
                    let mut size = [0u8; 18];
                    let size = chunk_size(bytes.len(), &mut size);
                    write_all(tcp, &[size, &bytes[..], b"\r\n"], settings.stall_timeout).await?;
                }
                // The body failed: the client must not take the cut stream for a whole one.
                Some(Err(e)) => return Err(io::Error::other(e)),
                None => break,
            },
            read = tcp.read(&mut probe) => match read {
                // The client went away: the body (and the subscription) is dropped.
                Ok(0) => return Ok(false),
                Ok(n) if pending.len() + n <= MAX_PIPELINED => pending.extend_from_slice(&probe[..n]),
                Ok(_) => return Ok(false),
                Err(e) => return Err(e),
            },
        }
    }
    write_all(tcp, &[b"0\r\n\r\n"], settings.stall_timeout).await?;
    Ok(!close)
}

/// `{len:X}\r\n` in `out`.
fn chunk_size(len: usize, out: &mut [u8; 18]) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
    for i in 0..digits {
        out[digits - 1 - i] = HEX[(len >> (4 * i)) & 0xF];
    }
    out[digits] = b'\r';
    out[digits + 1] = b'\n';
    &out[..digits + 2]
}

/// Writes every part (at most three), in as few vectored writes as the socket takes; fails if a
/// write makes no progress for `stall`.
async fn write_all(tcp: &mut TcpStream, parts: &[&[u8]], stall: Duration) -> io::Result<()> {
    let mut storage = [IoSlice::new(&[]); 3];
    let mut count = 0;
    for part in parts.iter().filter(|p| !p.is_empty()) {
        storage[count] = IoSlice::new(part);
        count += 1;
    }
    let mut slices = &mut storage[..count];
    while !slices.is_empty() {
        let n = tokio::time::timeout(stall, tcp.write_vectored(slices))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the client has not read for the stall timeout"))??;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

/// A socket that first yields bytes already read from it.
struct Rewind {
    prefix: Bytes,
    inner: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_are_upper_hex() {
        let mut out = [0u8; 18];
        assert_eq!(chunk_size(0, &mut out), b"0\r\n");
        assert_eq!(chunk_size(10, &mut out), b"A\r\n");
        assert_eq!(chunk_size(4567, &mut out), b"11D7\r\n");
        assert_eq!(chunk_size(usize::MAX, &mut out), b"FFFFFFFFFFFFFFFF\r\n");
    }

    #[test]
    fn only_plain_event_stream_gets_take_the_lean_path() {
        let stream = b"GET /computations/x/events?a=1 HTTP/1.1\r\nHost: h\r\nAccept: text/event-stream\r\n\r\nGET /";
        let Head::Stream(request, len) = parse_stream_request(stream) else { panic!("a stream request") };
        assert_eq!(&stream[len..], b"GET /");
        assert_eq!(request.uri(), "/computations/x/events?a=1");
        assert_eq!(request.headers()["host"], "h");
        assert!(matches!(parse_stream_request(b"GET / HTTP/1.1\r\nAccept: text/event"), Head::Partial));
        for other in [
            &b"GET / HTTP/1.1\r\nAccept: application/json\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nAccept: text/event-stream\r\nContent-Length: 2\r\n\r\n{}",
            b"GET / HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n",
            b"GET / HTTP/1.1\r\nAccept: text/event-stream\r\nUpgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.1\r\nAccept: text/event-stream\r\nContent-Length: 5\r\n\r\nhello",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GARBAGE\r\n\r\n",
        ] {
            assert!(matches!(parse_stream_request(other), Head::Other), "{}", String::from_utf8_lossy(other));
        }
    }
}
