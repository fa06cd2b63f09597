//! Whether the sink holds a working connection to its broker, as a typed signal (the role of
//! Vector's `Healthcheck`, kept up to date for the whole run instead of checked once at start).
//!
//! The signal is set in one place: the sink telemetry events that mark the connection
//! (`SinkConnected`, `ConnectionFailed`, `SinkStopped` in [`crate::telemetry`]) set it together
//! with the `voxsig_bridge_sink_connected` gauge, so a sink never sets one without the other.
//! Readers ask a [`SinkHealthWatch`], from [`crate::SinkHandle::health`].

use tokio::sync::watch;

/// Where the sink's broker connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkHealth {
    /// Not connected yet.
    Starting,
    /// Connected: records flow (or can).
    Connected,
    /// A connection attempt failed or a working connection was lost; the sink keeps trying.
    Disconnected,
    /// The sink stopped (shutdown).
    Stopped,
}

impl SinkHealth {
    /// Whether records can be delivered now.
    pub fn is_connected(self) -> bool {
        self == SinkHealth::Connected
    }

    /// A stable name (`starting`, `connected`, `disconnected`, `stopped`).
    pub fn as_str(self) -> &'static str {
        match self {
            SinkHealth::Starting => "starting",
            SinkHealth::Connected => "connected",
            SinkHealth::Disconnected => "disconnected",
            SinkHealth::Stopped => "stopped",
        }
    }
}

/// The writing side, held by the sinks' metrics and set by their connection events.
#[derive(Debug)]
pub(crate) struct HealthSignal {
    state: watch::Sender<SinkHealth>,
}

impl HealthSignal {
    pub(crate) fn new() -> Self {
        HealthSignal {
            state: watch::Sender::new(SinkHealth::Starting),
        }
    }

    pub(crate) fn set(&self, health: SinkHealth) {
        self.state.send_if_modified(|now| {
            let changed = *now != health;
            *now = health;
            changed
        });
    }

    pub(crate) fn watch(&self) -> SinkHealthWatch {
        SinkHealthWatch {
            state: self.state.subscribe(),
        }
    }
}

/// The reading side: the sink's health now, or the next change. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SinkHealthWatch {
    state: watch::Receiver<SinkHealth>,
}

impl SinkHealthWatch {
    /// The health now.
    pub fn get(&self) -> SinkHealth {
        *self.state.borrow()
    }

    /// Waits until the health is `wanted` (at once if it is); `false` if the sink's metrics are
    /// gone first.
    pub async fn wait_for(&mut self, wanted: SinkHealth) -> bool {
        self.state.wait_for(|h| *h == wanted).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_watch_follows_the_signal() {
        let signal = HealthSignal::new();
        let mut watch = signal.watch();
        assert_eq!(watch.get(), SinkHealth::Starting);
        assert!(!watch.get().is_connected());
        signal.set(SinkHealth::Connected);
        assert!(watch.wait_for(SinkHealth::Connected).await);
        assert!(watch.get().is_connected());
        signal.set(SinkHealth::Disconnected);
        assert_eq!(watch.get(), SinkHealth::Disconnected);
        signal.set(SinkHealth::Stopped);
        assert_eq!(watch.get().as_str(), "stopped");
        drop(signal);
        assert!(!watch.wait_for(SinkHealth::Connected).await);
    }
}
