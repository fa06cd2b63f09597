//! One port, two services, as the platform serves `/cable` and `/api` from one origin: the front
//! door reads each connection's request head, hands WebSocket requests for the cable path to
//! [`crate::connection`] and everything else to the REST router ([`crate::rest`]), replaying the
//! bytes it read. During an outage fault, cable requests are answered 503 and closed.

use crate::shared::Shared;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::debug;

/// The largest request head read before routing (Rails/Puma allow 8 KiB of headers per line; a
/// head past this is routed by its request line and left to the service to refuse).
pub(crate) const MAX_HEAD: usize = 16 * 1024;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a connection goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// The WebSocket path.
    Cable,
    /// Anything else: the REST router (which answers 404 off its routes).
    Rest,
    /// Not HTTP: close.
    Close,
}

/// Routes by the request line's path (without the query). Sans-I/O.
pub(crate) fn route(head: &[u8], cable_path: &str) -> Route {
    let line_end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return Route::Close;
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Route::Close;
    };
    if method.is_empty() || !version.starts_with("HTTP/") {
        return Route::Close;
    }
    let path = target.split('?').next().unwrap_or(target);
    if path == cable_path {
        Route::Cable
    } else {
        Route::Rest
    }
}

/// Whether `buf` holds a whole request head.
fn head_complete(buf: &[u8]) -> bool {
    buf.windows(4).any(|w| w == b"\r\n\r\n")
}

/// A TCP stream that first replays the bytes the door read.
#[derive(Debug)]
pub(crate) struct Rewind {
    prefix: Vec<u8>,
    at: usize,
    inner: TcpStream,
}

impl Rewind {
    fn new(prefix: Vec<u8>, inner: TcpStream) -> Self {
        Rewind {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = (self.prefix.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            if self.at == self.prefix.len() {
                self.prefix = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A REST connection handed to the router.
pub(crate) type RestConn = (Rewind, SocketAddr);

/// The REST router's listener: connections the door routed to it.
pub(crate) struct RestListener {
    pub(crate) rx: mpsc::Receiver<RestConn>,
    pub(crate) addr: SocketAddr,
}

impl axum::serve::Listener for RestListener {
    type Io = Rewind;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The door is gone (shut down): no more connections; serve ends on shutdown.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// Reads the request head and routes the connection.
pub(crate) async fn serve(shared: Arc<Shared>, mut tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let mut head = Vec::with_capacity(1024);
    let read = async {
        let mut chunk = [0u8; 2048];
        while !head_complete(&head) && head.len() < MAX_HEAD {
            let n = tcp.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            head.extend_from_slice(&chunk[..n]);
        }
        Ok::<(), io::Error>(())
    };
    match tokio::time::timeout(HEAD_TIMEOUT, read).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            debug!(error = %e, "connection closed before its request head");
            return;
        }
        Err(_) => {
            debug!("request head timed out");
            return;
        }
    }
    match route(&head, &shared.config.path) {
        Route::Cable => {
            if let Some(left) = shared.knobs.outage_left() {
                shared
                    .hub
                    .gauges
                    .send_modify(|s| s.upgrades_refused_total += 1);
                let secs = left.as_secs_f64().ceil().max(1.0) as u64;
                let body = r#"{"error":"service unavailable"}"#;
                let response = format!(
                    "HTTP/1.1 503 Service Unavailable\r\nRetry-After: {secs}\r\n\
                     Content-Type: application/json\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(response.as_bytes()).await;
                let _ = tcp.shutdown().await;
                return;
            }
            crate::connection::serve(shared, Rewind::new(head, tcp)).await;
        }
        Route::Rest => {
            let conn = (Rewind::new(head, tcp), peer);
            if shared.rest_tx.try_send(conn).is_err() {
                debug!("REST connection dropped: the router is not keeping up");
            }
        }
        Route::Close => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_path() {
        let cases: &[(&[u8], Route)] = &[
            (b"GET /cable HTTP/1.1\r\nHost: x\r\n\r\n", Route::Cable),
            (b"GET /cable?x=1 HTTP/1.1\r\n\r\n", Route::Cable),
            (b"GET /api/v1/profile HTTP/1.1\r\n\r\n", Route::Rest),
            (b"POST /cable/x HTTP/1.1\r\n\r\n", Route::Rest),
            (b"GET / HTTP/1.0\r\n\r\n", Route::Rest),
            (b"\x16\x03\x01\x00", Route::Close),
            (b"GET /cable\r\n\r\n", Route::Close),
            (b"garbage", Route::Close),
            (b"", Route::Close),
            (b"\xff\xfe /cable HTTP/1.1\r\n", Route::Close),
        ];
        for (head, want) in cases {
            assert_eq!(
                route(head, "/cable"),
                *want,
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
        assert!(head_complete(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!head_complete(b"GET / HTTP/1.1\r\n"));
    }
}
