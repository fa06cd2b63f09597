//! The listener (stoppable and restartable on the same port) and the ping timer.

use crate::door;
use crate::error::{Result, SimError};
use crate::hub::Outgoing;
use crate::shared::{ListenerTask, Shared};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::warn;

/// Resolves when the simulator shuts down.
pub(crate) async fn shutting_down(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|down| *down).await;
}

/// Serves `app` on `listener` until the simulator shuts down (the admin endpoint, the REST
/// surface); a failure is logged naming `what`.
pub(crate) fn serve_router<L>(shared: &Shared, listener: L, app: axum::Router, what: &'static str)
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let mut shutdown = shared.shutdown.subscribe();
    tokio::spawn(async move {
        let stop = async move { shutting_down(&mut shutdown).await };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            warn!(error = %e, "{what} failed");
        }
    });
}

/// Binds a TCP listener.
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| SimError::Bind { addr, source })
}

/// Runs the accept loop on `listener` until stopped or shut down.
pub(crate) fn spawn_accept(shared: &Arc<Shared>, listener: TcpListener) -> ListenerTask {
    let (stop, mut stopped) = oneshot::channel::<()>();
    let mut shutdown = shared.shutdown.subscribe();
    let shared = shared.clone();
    shared.hub.gauges.send_modify(|s| s.listening = true);
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        tokio::spawn(door::serve(shared.clone(), tcp, peer));
                    }
                    Err(e) => {
                        // Out of descriptors and the like: back off a little instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                _ = &mut stopped => break,
                _ = shutting_down(&mut shutdown) => break,
            }
        }
        shared.hub.gauges.send_modify(|s| s.listening = false);
    });
    ListenerTask {
        stop: Some(stop),
        task,
    }
}

impl Shared {
    /// Binds the original address again and accepts.
    pub(crate) async fn start_listener(self: &Arc<Self>) -> Result<()> {
        let mut slot = self.listener.lock().await;
        if slot.is_some() {
            return Err(SimError::Listener("running"));
        }
        if self.is_shut_down() {
            return Err(SimError::Shutdown);
        }
        let listener = bind(self.addr).await?;
        *slot = Some(spawn_accept(self, listener));
        Ok(())
    }

    /// Stops accepting and closes the listening socket (open connections stay).
    pub(crate) async fn stop_listener(&self) -> Result<()> {
        let Some(mut running) = self.listener.lock().await.take() else {
            return Err(SimError::Listener("stopped"));
        };
        if let Some(stop) = running.stop.take() {
            let _ = stop.send(());
        }
        let _ = running.task.await;
        Ok(())
    }
}

/// Sends `{"type":"ping","message":<unix seconds>}` to every socket each interval, as Rails'
/// global timer does; skipped while pings are stopped by a fault.
pub(crate) fn spawn_pings(shared: Arc<Shared>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut shutdown = shared.shutdown.subscribe();
        loop {
            let interval = shared.knobs.ping_interval();
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shared.knobs.changed.notified() => continue,
                _ = shutting_down(&mut shutdown) => break,
            }
            if !shared.knobs.pings() {
                continue;
            }
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let frame = Utf8Bytes::from(format!("{{\"type\":\"ping\",\"message\":{now}}}"));
            for (_, tx) in shared.hub.socket_queues() {
                if tx.try_send(Outgoing::Text(frame.clone())).is_err() {
                    shared.hub.pings_skipped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    })
}
