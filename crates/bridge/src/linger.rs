//! `[runtime] linger`: fewer wake-ups at low and moderate rates, for a bounded delay.
//!
//! Without it the runtime's worker sleeps in the I/O driver whenever it has nothing to do, so
//! every frame that arrives on an idle bridge wakes it once; at a few thousand events per
//! second over many sockets that is one wake-up per event, and on a VM the wake-up (context
//! switch, interrupt) costs more than everything the bridge does with the event
//! (docs/BENCHMARKS.md, "linger"). With `linger = P`, a worker that runs out of work less than
//! `P` after it woke waits out the rest of `P` *before* it goes back to the driver: frames that
//! arrive meanwhile queue in their sockets, and the next look at the driver finds them all, so
//! one wake-up serves every event of the period. The first event after an idle spell is handled
//! at once; any event waits at most about `P` (plus the sleep's overshoot) longer than without.
//! Under full load the worker never runs out of work, so nothing changes there.
//!
//! The rule is [`Linger::nap`] (no clock, no I/O: table-tested); [`install`] is the adapter that
//! reads the clock in the runtime's park and unpark hooks and sleeps. It needs one worker: a
//! second would sit in the driver the first one leaves and be woken per event
//! ([`crate::config::RuntimeConfig`] enforces it).

use std::cell::Cell;
use std::time::{Duration, Instant};

/// The linger rule for one worker thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Linger {
    period: Duration,
}

impl Linger {
    /// Lingering for `period` (zero: never).
    pub fn new(period: Duration) -> Self {
        Linger { period }
    }

    /// How long a worker that last woke at `woke_at` (`None`: not since it started) and has
    /// nothing to do at `now` waits before it parks: the rest of the period, or nothing once the
    /// period is over (it was busy for all of it) or when it never woke.
    pub fn nap(&self, woke_at: Option<Instant>, now: Instant) -> Option<Duration> {
        let due = woke_at?.checked_add(self.period)?;
        let left = due.checked_duration_since(now)?;
        (!left.is_zero()).then_some(left)
    }
}

thread_local! {
    /// When this worker last came back from parking.
    static WOKE_AT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Makes the runtime's workers linger for `period` before they park (nothing when zero).
pub fn install(builder: &mut tokio::runtime::Builder, period: Duration) {
    if period.is_zero() {
        return;
    }
    let linger = Linger::new(period);
    builder
        .on_thread_start(precise_sleeps)
        .on_thread_unpark(|| WOKE_AT.with(|w| w.set(Some(Instant::now()))))
        .on_thread_park(move || {
            let woke_at = WOKE_AT.with(Cell::get);
            if let Some(wait) = linger.nap(woke_at, Instant::now()) {
                // Deliberately blocking: the worker has nothing to run, and the point is that it
                // does not sit in the driver, where each arriving frame would wake it.
                std::thread::sleep(wait);
            }
        });
}

/// The kernel lets a sleep overshoot by the thread's timer slack (50 µs by default), which
/// would come on top of every lingered event's wait: a lingering worker asks for 1 µs. Best
/// effort: without it the naps are only less precise.
fn precise_sleeps() {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(1_000));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_that_ran_out_of_work_early_waits_out_the_rest_of_its_period() {
        let t0 = Instant::now();
        let us = Duration::from_micros;
        // (period µs, woke at µs after t0, now µs after t0, expected nap µs)
        let cases: &[(u64, Option<u64>, u64, Option<u64>)] = &[
            (500, Some(0), 0, Some(500)),
            (500, Some(0), 120, Some(380)),
            (500, Some(100), 599, Some(1)),
            // The period is over: it was busy all along, so it parks at once.
            (500, Some(0), 500, None),
            (500, Some(0), 5_000, None),
            // It never woke (the first park after the start).
            (500, None, 10, None),
            // Off.
            (0, Some(0), 0, None),
        ];
        for &(period, woke, now, want) in cases {
            let got = Linger::new(us(period)).nap(woke.map(|w| t0 + us(w)), t0 + us(now));
            assert_eq!(got, want.map(us), "period {period} woke {woke:?} now {now}");
        }
    }

    /// A worker that has just handled a message lingers: a message sent 5 ms later waits for
    /// the end of the period (sleeps never end early, so the lower bound is safe to assert).
    #[test]
    fn a_message_that_comes_while_the_worker_lingers_waits_for_the_period_to_end() {
        let period = Duration::from_millis(60);
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(1).enable_all();
        install(&mut builder, period);
        let runtime = builder.build().expect("runtime");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let receiver = runtime.spawn(async move {
            rx.recv().await.expect("first");
            let first = Instant::now();
            rx.recv().await.expect("second");
            (first.elapsed(), rustix::thread::current_timer_slack().ok())
        });
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.send(()).expect("first sent");
            std::thread::sleep(Duration::from_millis(5));
            tx.send(()).expect("second sent");
        });
        let (gap, slack) = runtime.block_on(receiver).expect("receiver");
        sender.join().expect("sender");
        // Sent ~5 ms after the first, handled once the period that began with the first ended.
        assert!(gap >= Duration::from_millis(45), "{gap:?}");
        // The worker's naps are precise to a microsecond.
        assert_eq!(slack, Some(1_000));
    }
}
