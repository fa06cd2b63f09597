//! The gap book: which accounts stopped receiving, since when and why. Sans-I/O: fed the
//! connections' happenings with the time they happened, it answers with the gaps that closed.
//!
//! A gap on an account opens when one of its subscriptions stops receiving while confirmed
//! (socket dropped, stale, refused, token rotated) or, after a restart, at the checkpoint's last
//! event. Its start is the last frame that subscription received. It closes at the next confirm
//! of a subscription of that account. One account has at most one open gap: a second
//! subscription of the account going down while the gap is open changes nothing.

use serde::Serialize;
use std::collections::HashMap;

/// Why a gap opened. `as_str` is the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GapCause {
    /// The socket closed or failed.
    SocketDropped,
    /// The socket went silent (no ping) and was closed.
    Stale,
    /// The server refused the connection (`disconnect` with `reconnect: false`).
    Refused,
    /// The platform rotated the subscription's pubsub token.
    TokenRotated,
    /// The bridge was not running (a restart resumed from the checkpoint).
    Restart,
}

impl GapCause {
    /// Every cause, so metrics can be pre-registered.
    pub const ALL: [GapCause; 5] = [
        GapCause::SocketDropped,
        GapCause::Stale,
        GapCause::Refused,
        GapCause::TokenRotated,
        GapCause::Restart,
    ];

    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            GapCause::SocketDropped => "socket_dropped",
            GapCause::Stale => "stale",
            GapCause::Refused => "refused",
            GapCause::TokenRotated => "token_rotated",
            GapCause::Restart => "restart",
        }
    }
}

/// A gap on one account, in Unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Gap {
    /// The account.
    pub account: u64,
    /// The last frame received before it.
    pub start_ms: i64,
    /// When a subscription of the account was confirmed again.
    pub end_ms: i64,
    /// Why it opened.
    pub cause: GapCause,
    /// The highest message id published on the account when it opened (`None`: none yet).
    pub watermark: Option<u64>,
}

impl Gap {
    /// How long it lasted, in milliseconds (0 when the clock went backwards).
    pub fn duration_ms(&self) -> i64 {
        (self.end_ms - self.start_ms).max(0)
    }
}

#[derive(Debug, Clone, Copy)]
struct Open {
    start_ms: i64,
    cause: GapCause,
    watermark: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Sub {
    account: u64,
    confirmed: bool,
    /// When `subscribe` was sent, while unanswered: the server may already broadcast to it.
    pending_since: Option<i64>,
}

/// What the book did with a loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// A new gap opened on the account.
    New,
    /// The account already had an open gap (or the subscription was not confirmed).
    Nothing,
}

/// Every subscription's standing and every account's open gap.
#[derive(Debug, Default)]
pub struct GapBook {
    subs: Vec<Sub>,
    open: HashMap<u64, Open>,
}

impl GapBook {
    /// A book for subscriptions `0..accounts.len()`, the account of each given.
    pub fn new(accounts: &[u64]) -> Self {
        GapBook {
            subs: accounts
                .iter()
                .map(|&account| Sub {
                    account,
                    confirmed: false,
                    pending_since: None,
                })
                .collect(),
            open: HashMap::new(),
        }
    }

    /// After a restart: the account stopped receiving at `last_event_ms` (from the checkpoint).
    pub fn restored(&mut self, account: u64, last_event_ms: i64, watermark: Option<u64>) {
        self.open.entry(account).or_insert(Open {
            start_ms: last_event_ms,
            cause: GapCause::Restart,
            watermark,
        });
    }

    /// `subscribe` was sent for `sub` at `at_ms`: from then on the server may broadcast to it,
    /// so losing the socket before the confirm arrives is a gap from this moment.
    pub fn subscribing(&mut self, sub: usize, at_ms: i64) {
        if let Some(s) = self.subs.get_mut(sub) {
            if !s.confirmed {
                s.pending_since.get_or_insert(at_ms);
            }
        }
    }

    /// The server refused `sub` (rejected, or left it unanswered): nothing flows to it.
    pub fn refused(&mut self, sub: usize) {
        if let Some(s) = self.subs.get_mut(sub) {
            s.pending_since = None;
        }
    }

    /// Subscription `sub` stopped receiving; its last frame was at `last_frame_ms`. A
    /// subscription lost before its confirm arrived opens a gap from its `subscribe`.
    /// `watermark` is the account's highest published message id now.
    pub fn lost(
        &mut self,
        sub: usize,
        cause: GapCause,
        last_frame_ms: i64,
        watermark: Option<u64>,
    ) -> Opened {
        let Some(s) = self.subs.get_mut(sub) else {
            return Opened::Nothing;
        };
        let pending = s.pending_since.take();
        let start = if std::mem::replace(&mut s.confirmed, false) {
            last_frame_ms
        } else if let Some(since) = pending {
            since
        } else {
            return Opened::Nothing;
        };
        let account = s.account;
        if self.open.contains_key(&account) {
            return Opened::Nothing;
        }
        self.open.insert(
            account,
            Open {
                start_ms: start,
                cause,
                watermark,
            },
        );
        Opened::New
    }

    /// The account's open gap turned out to have another cause (e.g. a rotated token found by
    /// the profile fetch after an unanswered re-subscribe).
    pub fn recause(&mut self, account: u64, cause: GapCause) {
        if let Some(open) = self.open.get_mut(&account) {
            open.cause = cause;
        }
    }

    /// Subscription `sub` was confirmed at `now_ms`: closes its account's gap, if open.
    pub fn confirmed(&mut self, sub: usize, now_ms: i64) -> Option<Gap> {
        let s = self.subs.get_mut(sub)?;
        s.confirmed = true;
        s.pending_since = None;
        let account = s.account;
        let open = self.open.remove(&account)?;
        Some(Gap {
            account,
            start_ms: open.start_ms,
            end_ms: now_ms.max(open.start_ms),
            cause: open.cause,
            watermark: open.watermark,
        })
    }

    /// Whether the account has an open gap.
    pub fn is_open(&self, account: u64) -> bool {
        self.open.contains_key(&account)
    }

    /// The open gaps: account, start, cause.
    pub fn open_gaps(&self) -> impl Iterator<Item = (u64, i64, GapCause)> + '_ {
        self.open.iter().map(|(a, o)| (*a, o.start_ms, o.cause))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    enum Step {
        Subscribe(usize, i64),
        Refuse(usize),
        Confirm(usize, i64),
        Lose(usize, GapCause, i64),
        Restore(u64, i64),
        Recause(u64, GapCause),
    }
    use Step::*;

    /// A closed gap: account, start, end, cause.
    type Closed = (u64, i64, i64, GapCause);

    /// A case: name, the subscriptions' accounts, the steps, the gaps expected.
    type Case = (&'static str, Vec<u64>, Vec<Step>, Vec<Closed>);

    /// Runs steps, collecting the gaps closed.
    fn run(accounts: &[u64], steps: &[Step]) -> Vec<Closed> {
        let mut book = GapBook::new(accounts);
        let mut closed = Vec::new();
        for step in steps {
            match *step {
                Subscribe(sub, at) => book.subscribing(sub, at),
                Refuse(sub) => book.refused(sub),
                Confirm(sub, at) => {
                    if let Some(g) = book.confirmed(sub, at) {
                        closed.push((g.account, g.start_ms, g.end_ms, g.cause));
                    }
                }
                Lose(sub, cause, last) => {
                    book.lost(sub, cause, last, None);
                }
                Restore(account, at) => book.restored(account, at, None),
                Recause(account, cause) => book.recause(account, cause),
            }
        }
        closed
    }

    #[test]
    fn table() {
        use GapCause::*;
        let cases: Vec<Case> = vec![
            (
                "first confirm is no gap",
                vec![1],
                vec![Confirm(0, 10)],
                vec![],
            ),
            (
                "drop then re-confirm: one gap from the last frame",
                vec![1],
                vec![Confirm(0, 10), Lose(0, SocketDropped, 50), Confirm(0, 90)],
                vec![(1, 50, 90, SocketDropped)],
            ),
            (
                "a loss before any subscribe opens nothing",
                vec![1],
                vec![Lose(0, Stale, 5), Confirm(0, 90)],
                vec![],
            ),
            (
                "a loss while the first subscribe is unanswered: a gap from the subscribe",
                vec![1],
                vec![
                    Subscribe(0, 3),
                    Lose(0, SocketDropped, 5),
                    Subscribe(0, 7),
                    Confirm(0, 9),
                ],
                vec![(1, 3, 9, SocketDropped)],
            ),
            (
                "a refused subscribe lost afterwards opens nothing",
                vec![1],
                vec![
                    Subscribe(0, 3),
                    Refuse(0),
                    Lose(0, SocketDropped, 5),
                    Confirm(0, 9),
                ],
                vec![],
            ),
            (
                "re-subscribing after a confirm changes nothing",
                vec![1],
                vec![
                    Subscribe(0, 1),
                    Confirm(0, 2),
                    Subscribe(0, 3),
                    Lose(0, Stale, 4),
                    Confirm(0, 8),
                ],
                vec![(1, 4, 8, Stale)],
            ),
            (
                "two losses in a row (no confirm between) are one gap",
                vec![1],
                vec![
                    Confirm(0, 10),
                    Lose(0, Stale, 40),
                    Lose(0, SocketDropped, 60),
                    Confirm(0, 100),
                ],
                vec![(1, 40, 100, Stale)],
            ),
            (
                "two subscriptions of one account: one gap, closed by either",
                vec![7, 7],
                vec![
                    Confirm(0, 1),
                    Confirm(1, 1),
                    Lose(0, SocketDropped, 20),
                    Lose(1, SocketDropped, 25),
                    Confirm(1, 30),
                    Confirm(0, 31),
                ],
                vec![(7, 20, 30, SocketDropped)],
            ),
            (
                "accounts are separate",
                vec![1, 2],
                vec![
                    Confirm(0, 1),
                    Confirm(1, 1),
                    Lose(0, SocketDropped, 10),
                    Lose(1, Refused, 12),
                    Confirm(1, 20),
                    Confirm(0, 30),
                ],
                vec![(2, 12, 20, Refused), (1, 10, 30, SocketDropped)],
            ),
            (
                "restart gap closes at the first confirm",
                vec![3],
                vec![Restore(3, 1000), Confirm(0, 5000)],
                vec![(3, 1000, 5000, Restart)],
            ),
            (
                "a cause found later replaces the first",
                vec![3],
                vec![
                    Confirm(0, 1),
                    Lose(0, SocketDropped, 2),
                    Recause(3, TokenRotated),
                    Confirm(0, 9),
                ],
                vec![(3, 2, 9, TokenRotated)],
            ),
            (
                "clock going backwards never gives a negative gap",
                vec![1],
                vec![Confirm(0, 100), Lose(0, Stale, 100), Confirm(0, 50)],
                vec![(1, 100, 100, Stale)],
            ),
            (
                "an unknown subscription is ignored",
                vec![1],
                vec![Lose(9, Stale, 1), Confirm(9, 2)],
                vec![],
            ),
        ];
        for (name, accounts, steps, want) in cases {
            assert_eq!(run(&accounts, &steps), want, "{name}");
        }
    }

    #[test]
    fn watermark_is_kept_from_the_opening() {
        let mut book = GapBook::new(&[1]);
        book.confirmed(0, 0);
        assert_eq!(book.lost(0, GapCause::Stale, 5, Some(42)), Opened::New);
        assert!(book.is_open(1));
        assert_eq!(book.open_gaps().count(), 1);
        let gap = book.confirmed(0, 10).unwrap();
        assert_eq!(gap.watermark, Some(42));
        assert_eq!(gap.duration_ms(), 5);
        assert!(!book.is_open(1));
    }
}
