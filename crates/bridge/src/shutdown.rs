//! Telling every task that the bridge is stopping (after mini-redis's `Shutdown`).
//!
//! [`Bridge`](crate::Bridge) holds the one [`ShutdownTrigger`]; every task that must stop with it
//! (each connection, the catch-up worker) holds a [`Shutdown`] and asks it: either
//! [`Shutdown::is_shutdown`] between steps, or [`Shutdown::recv`] as a branch of a `select!`.
//! Once triggered, a shutdown stays triggered: `recv` returns at once for every later caller, and
//! a trigger that is dropped without firing counts as fired (nobody is left to stop the tasks).

use tokio::sync::watch;

/// The sending side: fires the shutdown once for every [`Shutdown`] made from it.
#[derive(Debug)]
pub struct ShutdownTrigger {
    fired: watch::Sender<bool>,
}

/// The listening side, one per task (cheap to clone).
#[derive(Debug, Clone)]
pub struct Shutdown {
    fired: watch::Receiver<bool>,
}

impl ShutdownTrigger {
    /// A trigger that has not fired.
    pub fn new() -> Self {
        ShutdownTrigger {
            fired: watch::Sender::new(false),
        }
    }

    /// A listener for this trigger.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            fired: self.fired.subscribe(),
        }
    }

    /// Tells every listener to stop (idempotent).
    pub fn fire(&self) {
        self.fired.send_replace(true);
    }
}

impl Default for ShutdownTrigger {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// Whether the shutdown has been triggered.
    pub fn is_shutdown(&self) -> bool {
        *self.fired.borrow() || self.fired.has_changed().is_err()
    }

    /// Waits until the shutdown is triggered (at once if it already was). Cancel-safe: use it
    /// as a branch of `select!` as often as needed.
    pub async fn recv(&mut self) {
        // `Err`: the trigger is gone, which means the same.
        let _ = self.fired.wait_for(|fired| *fired).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn fires_once_for_every_listener_and_stays_fired() {
        let trigger = ShutdownTrigger::new();
        let mut early = trigger.subscribe();
        assert!(!early.is_shutdown());
        let pending = tokio::time::timeout(Duration::from_millis(20), early.recv()).await;
        assert!(pending.is_err(), "recv must wait until the trigger fires");
        trigger.fire();
        assert!(early.is_shutdown());
        early.recv().await;
        early.recv().await; // Stays fired: a second wait returns at once.
        let mut late = trigger.subscribe();
        assert!(late.is_shutdown());
        late.recv().await;
    }

    #[tokio::test]
    async fn a_dropped_trigger_counts_as_fired() {
        let trigger = ShutdownTrigger::new();
        let mut listener = trigger.subscribe();
        drop(trigger);
        assert!(listener.is_shutdown());
        tokio::time::timeout(Duration::from_secs(1), listener.recv())
            .await
            .expect("recv returns once the trigger is gone");
    }
}
