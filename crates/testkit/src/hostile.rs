//! A hand-written ActionCable server for hostile-case tests: each accepted socket is handed to a
//! script (an async closure) that sends whatever it likes — welcome, confirms, events with
//! poison names, junk floods, invalid UTF-8, a disconnect right after welcome.

use futures_util::{SinkExt, StreamExt};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A running hostile server on a free loopback port; stops on drop.
pub struct Hostile {
    /// Its `ws://` URL.
    pub url: String,
    /// Sockets accepted so far (upgraded).
    pub connects: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Hostile {
    /// Serves every socket with `script` (given the socket and its number, from 0).
    pub async fn start<F, Fut>(script: F) -> Hostile
    where
        F: Fn(Conn, usize) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("ws://{}/cable", listener.local_addr().expect("addr"));
        let connects = Arc::new(AtomicUsize::new(0));
        let counter = connects.clone();
        let script = Arc::new(script);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let script = script.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    #[allow(clippy::result_large_err)] // tungstenite's callback signature
                    let upgrade = |_: &Request, mut response: Response| {
                        response.headers_mut().insert(
                            "Sec-WebSocket-Protocol",
                            HeaderValue::from_static(voxsig_sim::SUBPROTOCOL),
                        );
                        Ok(response)
                    };
                    let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, upgrade).await else {
                        return;
                    };
                    let n = counter.fetch_add(1, Ordering::SeqCst);
                    script(Conn { ws }, n).await;
                });
            }
        });
        Hostile {
            url,
            connects,
            task,
        }
    }

    /// Sockets accepted (upgraded) so far.
    pub fn connects(&self) -> usize {
        self.connects.load(Ordering::SeqCst)
    }
}

/// One accepted socket.
pub struct Conn {
    /// The WebSocket, for what the helpers below do not cover.
    pub ws: WebSocketStream<TcpStream>,
}

impl Conn {
    /// Sends a text frame (flushed); false once the socket is gone.
    pub async fn text(&mut self, text: impl Into<String>) -> bool {
        self.ws.send(Message::text(text.into())).await.is_ok()
    }

    /// Queues a frame without flushing (floods); call [`Conn::flush`] after.
    pub async fn feed(&mut self, text: impl Into<String>) -> bool {
        self.ws.feed(Message::text(text.into())).await.is_ok()
    }

    /// Flushes what [`Conn::feed`] queued.
    pub async fn flush(&mut self) -> bool {
        self.ws.flush().await.is_ok()
    }

    /// The `welcome` frame.
    pub async fn welcome(&mut self) -> bool {
        self.text(r#"{"type":"welcome"}"#).await
    }

    /// A `ping` frame carrying `at`.
    pub async fn ping(&mut self, at: u64) -> bool {
        self.text(format!(r#"{{"type":"ping","message":{at}}}"#))
            .await
    }

    /// Waits (at most `timeout`) for a `subscribe` command; returns its identifier.
    pub async fn subscribe(&mut self, timeout: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let message = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??
                .ok()?;
            if let Message::Text(text) = message {
                let v: serde_json::Value = serde_json::from_str(&text).ok()?;
                if v["command"] == "subscribe" {
                    return v["identifier"].as_str().map(str::to_owned);
                }
            }
        }
    }

    /// Confirms the subscription of `identifier`.
    pub async fn confirm(&mut self, identifier: &str) -> bool {
        let frame = serde_json::json!({"identifier": identifier, "type": "confirm_subscription"});
        self.text(frame.to_string()).await
    }

    /// An event frame (name and data object as given), unflushed.
    pub async fn event(&mut self, identifier: &str, name: &str, data: serde_json::Value) -> bool {
        let frame =
            serde_json::json!({"identifier": identifier, "message": {"event": name, "data": data}});
        self.feed(frame.to_string()).await
    }

    /// Writes raw bytes on the TCP stream (after flushing what the WebSocket queued): e.g. a text
    /// frame that is not UTF-8.
    pub async fn raw(&mut self, bytes: &[u8]) -> bool {
        if self.ws.flush().await.is_err() {
            return false;
        }
        let tcp = self.ws.get_mut();
        tcp.write_all(bytes).await.is_ok() && tcp.flush().await.is_ok()
    }

    /// Reads and discards whatever the client sends, until it closes or `timeout` passes.
    pub async fn drain(&mut self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// An unmasked server text frame holding `payload` as is (not checked for UTF-8).
pub fn raw_text_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x81];
    match payload.len() {
        n if n < 126 => frame.push(n as u8),
        n if n <= 0xFFFF => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    frame
}
