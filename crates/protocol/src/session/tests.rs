//! Deterministic tests of the session: the clock is `t0 + n seconds`, never the wall clock.

use super::*;
use crate::token::PubsubToken;

fn secs(n: f64) -> Duration {
    Duration::from_secs_f64(n)
}

struct Harness {
    session: Session,
    t0: Instant,
}

impl Harness {
    fn new() -> Self {
        Self::with(SessionConfig::default())
    }

    fn with(config: SessionConfig) -> Self {
        let t0 = Instant::now();
        Harness {
            session: Session::new(config, t0),
            t0,
        }
    }

    fn at(&self, s: f64) -> Instant {
        self.t0 + secs(s)
    }

    fn feed(&mut self, s: f64, frame: &str) -> Result<Option<SubscriptionId>, FrameError> {
        let now = self.at(s);
        self.session
            .handle_text(frame, now)
            .map(|d| d.map(|d| d.sub))
    }

    fn tick(&mut self, s: f64) {
        let now = self.at(s);
        self.session.handle_timeout(now);
    }

    fn sent(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.session.poll_transmit()).collect()
    }

    fn happened(&mut self) -> Vec<Happening> {
        std::iter::from_fn(|| self.session.poll_happening()).collect()
    }

    /// Drives time forward as an event loop honouring `poll_timeout` would, with a server that
    /// pings every 3 s, handing every frame the session sends to `on_frame`.
    fn run_until(&mut self, end: f64, mut on_frame: impl FnMut(f64, &str)) {
        let mut next_ping = self.session.last_frame_at() + secs(3.0);
        loop {
            let Some(due) = self.session.poll_timeout() else {
                return;
            };
            let now = due.min(next_ping);
            if now > self.at(end) {
                return;
            }
            if now == next_ping {
                self.session
                    .handle_text(r#"{"type":"ping","message":1}"#, now)
                    .unwrap();
                next_ping = now + secs(3.0);
            } else {
                self.session.handle_timeout(now);
            }
            let s = now.duration_since(self.t0).as_secs_f64();
            for frame in self.sent() {
                on_frame(s, &frame);
            }
        }
    }
}

fn user(token: &str, account: u64, user: u64) -> RoomIdentifier {
    RoomIdentifier::user(PubsubToken::new(token), account, user)
}

fn confirm(id: &RoomIdentifier) -> String {
    format!(
        r#"{{"identifier":"{}","type":"confirm_subscription"}}"#,
        id.escaped()
    )
}

fn reject(id: &RoomIdentifier) -> String {
    format!(
        r#"{{"identifier":"{}","type":"reject_subscription"}}"#,
        id.escaped()
    )
}

fn broadcast(identifier_escaped: &str, event: &str) -> String {
    format!(
        r#"{{"identifier":"{identifier_escaped}","message":{{"event":"{event}","data":{{"account_id":1,"id":3}}}}}}"#
    )
}

const WELCOME: &str = r#"{"type":"welcome"}"#;

#[test]
fn subscribes_every_subscription_after_welcome_and_not_before() {
    let mut h = Harness::new();
    let (a, b) = (user("tok-a", 1, 7), user("tok-b", 2, 8));
    h.session.add(a.clone(), h.at(0.0));
    h.session.add(b.clone(), h.at(0.0));
    assert!(h.sent().is_empty(), "nothing may be sent before welcome");
    h.feed(0.1, WELCOME).unwrap();
    assert_eq!(
        h.sent(),
        [
            Command::Subscribe(&a).encode(),
            Command::Subscribe(&b).encode()
        ]
    );
    assert_eq!(h.session.state(), &ConnectionState::Open);
    // A subscription added on an open connection goes out at once.
    let c = RoomIdentifier::contact(PubsubToken::new("tok-c"));
    h.session.add(c.clone(), h.at(0.2));
    assert_eq!(h.sent(), [Command::Subscribe(&c).encode()]);
}

#[test]
fn the_same_identifier_is_never_subscribed_twice() {
    let mut h = Harness::new();
    let a = user("tok-a", 1, 7);
    let first = h.session.add(a.clone(), h.at(0.0));
    h.feed(0.1, WELCOME).unwrap();
    let second = h.session.add(a.clone(), h.at(0.2));
    assert_eq!(first, second);
    assert_eq!(h.sent(), [Command::Subscribe(&a).encode()]);
    h.feed(0.3, WELCOME).unwrap(); // a repeated welcome must not resubscribe either
    assert!(h.sent().is_empty());
}

#[test]
fn presence_goes_only_to_confirmed_subscriptions_at_the_interval() {
    let config = SessionConfig {
        presence_interval: secs(30.0),
        ..SessionConfig::default()
    };
    let mut h = Harness::with(config);
    let (a, b) = (user("tok-a", 1, 7), user("tok-b", 2, 8));
    let sa = h.session.add(a.clone(), h.at(0.0));
    h.session.add(b.clone(), h.at(0.0));
    h.feed(0.0, WELCOME).unwrap();
    h.sent();
    h.feed(0.5, &confirm(&a)).unwrap();
    assert_eq!(h.sent(), [Command::UpdatePresence(&a).encode()]);
    let mut presence_times = vec![0.5];
    h.run_until(95.0, |s, frame| {
        if frame == Command::UpdatePresence(&a).encode() {
            presence_times.push(s);
        } else {
            assert_ne!(
                frame,
                Command::UpdatePresence(&b).encode(),
                "b is not confirmed"
            );
        }
    });
    assert_eq!(presence_times, [0.5, 30.5, 60.5, 90.5]);
    assert!(h.happened().contains(&Happening::PresenceSent { sub: sa }));
}

#[test]
fn a_rejected_subscription_backs_off_long_and_leaves_the_others_alone() {
    let mut h = Harness::new();
    let (good, bad) = (user("tok-good", 1, 7), user("tok-bad", 1, 9));
    let sg = h.session.add(good.clone(), h.at(0.0));
    let sb = h.session.add(bad.clone(), h.at(0.0));
    h.feed(0.0, WELCOME).unwrap();
    h.sent();
    // Replies come out of order: the reject of the second before the confirm of the first.
    h.feed(0.2, &reject(&bad)).unwrap();
    h.feed(0.3, &confirm(&good)).unwrap();
    let happened = h.happened();
    let retry_in = happened
        .iter()
        .find_map(|e| match e {
            Happening::Rejected {
                sub,
                attempt: 1,
                retry_in,
            } if *sub == sb => Some(*retry_in),
            _ => None,
        })
        .expect("rejected reported");
    assert!(
        retry_in >= secs(30.0) && retry_in <= secs(60.0),
        "{retry_in:?}"
    );
    assert!(matches!(
        h.session.subscription_state(sg),
        Some(SubscriptionState::Confirmed { .. })
    ));
    assert!(matches!(
        h.session.subscription_state(sb),
        Some(SubscriptionState::Retrying {
            cause: RetryCause::Rejected,
            ..
        })
    ));
    // Events keep flowing on the good one meanwhile.
    assert_eq!(
        h.feed(1.0, &broadcast(good.escaped(), "message.created")),
        Ok(Some(sg))
    );
    // No resubscribe before the back-off ends; exactly one after it.
    let retry_at = 0.2 + retry_in.as_secs_f64();
    let mut subscribes = vec![];
    h.run_until(retry_at + 1.0, |s, frame| {
        if frame == Command::Subscribe(&bad).encode() {
            subscribes.push(s);
        }
    });
    assert_eq!(subscribes.len(), 1);
    assert!(
        (subscribes[0] - retry_at).abs() < 0.01,
        "{subscribes:?} vs {retry_at}"
    );
    // A second reject doubles the back-off ceiling.
    h.feed(retry_at + 1.0, &reject(&bad)).unwrap();
    let second = h.happened().into_iter().find_map(|e| match e {
        Happening::Rejected {
            attempt: 2,
            retry_in,
            ..
        } => Some(retry_in),
        _ => None,
    });
    assert!(
        second.is_some_and(|d| d >= secs(60.0) && d <= secs(120.0)),
        "{second:?}"
    );
}

#[test]
fn an_unanswered_subscription_is_reported_unsubscribed_then_retried_never_doubled() {
    let mut h = Harness::new();
    let ghost = user("tok-unknown", 1, 7);
    let sub = h.session.add(ghost.clone(), h.at(0.0));
    h.feed(0.0, WELCOME).unwrap();
    let subscribe = Command::Subscribe(&ghost).encode();
    let unsubscribe = Command::Unsubscribe(&ghost).encode();
    let mut log: Vec<(f64, String)> = vec![(0.0, h.sent().remove(0))];
    h.happened();
    h.run_until(200.0, |s, frame| log.push((s, frame.to_owned())));
    // The sequence on the wire alternates subscribe / unsubscribe: never two subscribes in a row.
    let kinds: Vec<&str> = log
        .iter()
        .map(|(_, f)| {
            if *f == subscribe {
                "sub"
            } else if *f == unsubscribe {
                "unsub"
            } else {
                "other"
            }
        })
        .collect();
    assert!(kinds.len() >= 6, "{kinds:?}");
    for pair in kinds.windows(2) {
        assert_ne!(pair[0], pair[1], "{kinds:?}");
    }
    // The first timeout fires at confirm_timeout (10 s), the retry comes after the back-off.
    assert_eq!(log[1].0, 10.0);
    assert!(log[2].0 >= 12.5 && log[2].0 <= 15.0, "{log:?}");
    let reports: Vec<u32> = h
        .happened()
        .into_iter()
        .filter_map(|e| match e {
            Happening::Unanswered {
                sub: s, attempt, ..
            } if s == sub => Some(attempt),
            _ => None,
        })
        .collect();
    assert_eq!(reports[..3], [1, 2, 3]);
}

#[test]
fn a_late_confirm_after_giving_up_is_ignored() {
    let mut h = Harness::new();
    let a = user("tok-a", 1, 7);
    let sub = h.session.add(a.clone(), h.at(0.0));
    h.feed(0.0, WELCOME).unwrap();
    h.feed(5.0, r#"{"type":"ping","message":1}"#).unwrap();
    h.tick(10.0);
    h.sent();
    h.feed(10.5, &confirm(&a)).unwrap();
    assert!(
        h.sent().is_empty(),
        "no presence for a subscription we unsubscribed"
    );
    assert!(matches!(
        h.session.subscription_state(sub),
        Some(SubscriptionState::Retrying { .. })
    ));
}

#[test]
fn events_arriving_on_an_unconfirmed_subscription_are_still_delivered() {
    // The platform streams before it looks the token up: events can come without a confirm.
    let mut h = Harness::new();
    let a = user("tok-a", 1, 7);
    let sub = h.session.add(a.clone(), h.at(0.0));
    h.feed(0.0, WELCOME).unwrap();
    assert_eq!(
        h.feed(0.1, &broadcast(a.escaped(), "message.created")),
        Ok(Some(sub))
    );
}

#[test]
fn identifiers_are_matched_by_content_when_the_server_re_encodes_them() {
    let mut h = Harness::new();
    let a = user("tok-a", 1, 7);
    let sub = h.session.add(a.clone(), h.at(0.0));
    h.feed(0.0, WELCOME).unwrap();
    let reordered = r#"{\"user_id\": \"7\", \"account_id\": 1, \"pubsub_token\": \"tok-a\", \"channel\": \"RoomChannel\"}"#;
    h.feed(
        0.1,
        &format!(r#"{{"type":"confirm_subscription","identifier":"{reordered}"}}"#),
    )
    .unwrap();
    assert!(matches!(
        h.session.subscription_state(sub),
        Some(SubscriptionState::Confirmed { .. })
    ));
    assert_eq!(
        h.feed(0.2, &broadcast(reordered, "presence.update")),
        Ok(Some(sub))
    );
}

#[test]
fn frames_for_identifiers_not_ours_are_errors_that_change_nothing() {
    let mut h = Harness::new();
    h.session.add(user("tok-a", 1, 7), h.at(0.0));
    h.feed(0.0, WELCOME).unwrap();
    let other = user("tok-z", 1, 7);
    assert_eq!(
        h.feed(0.1, &confirm(&other)),
        Err(FrameError::UnknownIdentifier)
    );
    assert_eq!(
        h.feed(0.2, &broadcast(other.escaped(), "message.created")),
        Err(FrameError::UnknownIdentifier)
    );
    let err = h
        .feed(0.3, &broadcast("not json", "message.created"))
        .unwrap_err();
    assert_eq!(err.kind(), "bad_identifier");
    assert_eq!(h.session.state(), &ConnectionState::Open);
}

#[test]
fn silence_past_stale_after_closes_the_session_and_pings_keep_it_alive() {
    let mut h = Harness::new();
    h.feed(0.0, WELCOME).unwrap();
    for s in [3.0, 6.0, 9.0] {
        h.feed(s, r#"{"type":"ping","message":1}"#).unwrap();
        h.tick(s + 5.9);
        assert_eq!(h.session.state(), &ConnectionState::Open, "at {s}");
    }
    assert_eq!(
        h.session.poll_timeout(),
        Some(h.at(15.0) + Duration::from_millis(1))
    );
    h.tick(15.0);
    assert_eq!(
        h.session.state(),
        &ConnectionState::Open,
        "exactly 6 s is not yet stale"
    );
    h.tick(15.001);
    assert_eq!(
        h.session.state(),
        &ConnectionState::Closed(CloseReason::Stale)
    );
    assert!(h
        .happened()
        .contains(&Happening::Closed(CloseReason::Stale)));
    assert_eq!(h.session.poll_timeout(), None);
}

#[test]
fn time_spent_not_reading_does_not_count_against_the_server() {
    // A ping at 3 s, then the caller stops reading for `stalled` seconds, up to 8 s (its
    // output was full). The default stale_after is 6 s: stale after 9 s without a stall.
    let table = [
        // (stalled, tick at, still open)
        (0.0, 9.0, true),
        (0.0, 9.01, false),
        (4.0, 12.9, true),
        (4.0, 13.01, false),
        // Never pushed past the moment it is reported: alive at 8 s at the latest.
        (100.0, 13.9, true),
        (100.0, 14.01, false),
    ];
    for (stalled, tick, open) in table {
        let mut h = Harness::new();
        h.feed(0.0, WELCOME).unwrap();
        h.feed(3.0, r#"{"type":"ping","message":1}"#).unwrap();
        h.session.handle_stall(secs(stalled), h.at(8.0));
        h.tick(tick);
        assert_eq!(
            h.session.state() == &ConnectionState::Open,
            open,
            "stalled {stalled} s, at {tick} s"
        );
    }
    // A confirm waiting unread behind events: its timeout (10 s) is pushed back too.
    let mut h = Harness::new();
    let a = user("tok-a", 1, 7);
    let sub = h.session.add(a, h.at(0.0));
    h.feed(0.0, WELCOME).unwrap();
    h.feed(5.0, r#"{"type":"ping","message":1}"#).unwrap();
    h.session.handle_stall(secs(3.0), h.at(8.0));
    h.tick(12.9);
    assert!(matches!(
        h.session.subscription_state(sub),
        Some(SubscriptionState::Pending { .. })
    ));
    h.tick(13.0);
    assert!(matches!(
        h.session.subscription_state(sub),
        Some(SubscriptionState::Retrying { .. })
    ));
}

#[test]
fn a_missing_welcome_is_stale_too() {
    let mut h = Harness::new();
    h.tick(6.5);
    assert_eq!(
        h.session.state(),
        &ConnectionState::Closed(CloseReason::Stale)
    );
}

#[test]
fn disconnect_closes_and_carries_the_reconnect_flag() {
    for (frame, reconnect) in [
        (
            r#"{"type":"disconnect","reason":"unauthorized","reconnect":false}"#,
            false,
        ),
        (
            r#"{"type":"disconnect","reason":"server_restart","reconnect":true}"#,
            true,
        ),
        (r#"{"type":"disconnect"}"#, true),
    ] {
        let mut h = Harness::new();
        h.feed(0.0, WELCOME).unwrap();
        h.feed(1.0, frame).unwrap();
        match h.session.state() {
            ConnectionState::Closed(CloseReason::Disconnected { reconnect: r, .. }) => {
                assert_eq!(*r, reconnect, "{frame}")
            }
            other => panic!("{frame}: {other:?}"),
        }
    }
}

#[test]
fn reconnecting_resubscribes_all_but_those_backing_off() {
    let mut h = Harness::new();
    let (a, b) = (user("tok-a", 1, 7), user("tok-b", 1, 8));
    let sa = h.session.add(a.clone(), h.at(0.0));
    let sb = h.session.add(b.clone(), h.at(0.0));
    h.feed(0.0, WELCOME).unwrap();
    h.feed(0.1, &confirm(&a)).unwrap();
    h.feed(0.1, &reject(&b)).unwrap();
    h.sent();
    h.session.reconnected(h.at(2.0));
    assert_eq!(h.session.state(), &ConnectionState::AwaitingWelcome);
    assert_eq!(
        h.session.subscription_state(sa),
        Some(SubscriptionState::Waiting)
    );
    assert!(matches!(
        h.session.subscription_state(sb),
        Some(SubscriptionState::Retrying { .. })
    ));
    h.feed(2.1, WELCOME).unwrap();
    assert_eq!(h.sent(), [Command::Subscribe(&a).encode()]);
}

#[test]
fn removing_a_subscription_unsubscribes_it() {
    let mut h = Harness::new();
    let a = user("tok-a", 1, 7);
    let sub = h.session.add(a.clone(), h.at(0.0));
    h.feed(0.0, WELCOME).unwrap();
    h.sent();
    assert_eq!(h.session.remove(sub), Some(a.clone()));
    assert_eq!(h.sent(), [Command::Unsubscribe(&a).encode()]);
    assert_eq!(
        h.feed(0.1, &confirm(&a)),
        Err(FrameError::UnknownIdentifier)
    );
    assert_eq!(h.session.subscriptions().count(), 0);
}

/// Issue 12: only `welcome` and `ping` prove the server alive (as in the official ActionCable
/// client). Presence echoes, events, binary and oversize frames arriving every second must not
/// hide a dead heartbeat.
#[test]
fn only_pings_prove_the_server_alive() {
    let config = SessionConfig {
        max_frame_bytes: 1024,
        ..SessionConfig::default()
    };
    let mut h = Harness::with(config);
    let a = user("tok-a", 1, 7);
    h.session.add(a.clone(), h.at(0.0));
    h.feed(0.0, WELCOME).unwrap();
    h.feed(0.1, &confirm(&a)).unwrap();
    h.feed(1.0, r#"{"type":"ping","message":1}"#).unwrap();
    let big = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(2000));
    for s in 2..=7 {
        let s = f64::from(s);
        assert!(h
            .feed(s, &broadcast(a.escaped(), "presence.update"))
            .unwrap()
            .is_some());
        assert!(h.feed(s + 0.1, &big).is_err());
        let _ = h.session.handle_binary(10, h.at(s + 0.2));
        h.tick(s + 0.3);
    }
    assert_eq!(
        h.session.state(),
        &ConnectionState::Closed(CloseReason::Stale),
        "6 s without a ping after the last one at 1 s"
    );
    let mut h = Harness::new();
    h.feed(0.0, WELCOME).unwrap();
    h.feed(5.0, r#"{"type":"ping","message":1}"#).unwrap();
    h.tick(10.9);
    assert_eq!(
        h.session.state(),
        &ConnectionState::Open,
        "a ping resets it"
    );
}

#[test]
fn the_captured_rails_frames_drive_a_session() {
    let frames = crate::fixtures::captured();
    let token = "furNHtAQnqxQN2FmkLzf8x4T";
    let mut h = Harness::new();
    let ours = user(token, 1, 7);
    let sub = h.session.add(ours.clone(), h.at(0.0));
    h.feed(0.0, &frames["welcome"]).unwrap();
    assert_eq!(h.sent(), [Command::Subscribe(&ours).encode()]);
    h.feed(0.1, &frames["confirm_subscription"]).unwrap();
    assert_eq!(h.sent(), [Command::UpdatePresence(&ours).encode()]);
    h.feed(3.0, &frames["ping"]).unwrap();
    assert_eq!(h.session.last_ping_at(), Some(h.at(3.0)));
    for name in [
        "presence.update",
        "message.created",
        "conversation.typing_on",
        "notification.created",
    ] {
        let delivery = h
            .session
            .handle_text(&frames[name], h.at(3.5))
            .unwrap()
            .expect(name);
        assert_eq!(delivery.sub, sub);
        assert_eq!(delivery.event.name, name);
        assert_eq!(delivery.event.account_id, Some(1));
    }
    // The reject in the capture is for another token: not ours.
    assert_eq!(
        h.feed(4.0, &frames["reject_subscription"]),
        Err(FrameError::UnknownIdentifier)
    );
    h.feed(4.0, &frames["disconnect_reconnect_false"]).unwrap();
    assert!(matches!(
        h.session.state(),
        ConnectionState::Closed(CloseReason::Disconnected {
            reconnect: false,
            ..
        })
    ));
}

/// Issue 12: a real token with a wrong `account_id` gets its events (the platform attaches the
/// stream before it raises) but never a confirm. It is kept, reported once, never unsubscribed,
/// and takes no presence; a subscription with neither events nor confirm is unanswered as before;
/// an event racing ahead of its confirm changes nothing.
#[test]
fn events_on_an_unconfirmed_subscription_keep_it_streaming() {
    let mut h = Harness::new();
    let (wrong, silent, racing) = (
        user("tok-wrong", 2, 7),
        user("tok-silent", 1, 8),
        user("tok-race", 1, 9),
    );
    let w = h.session.add(wrong.clone(), h.at(0.0));
    let s = h.session.add(silent.clone(), h.at(0.0));
    let r = h.session.add(racing.clone(), h.at(0.0));
    h.feed(0.0, WELCOME).unwrap();
    h.sent();
    h.happened();
    assert_eq!(
        h.feed(0.5, &broadcast(wrong.escaped(), "message.created")),
        Ok(Some(w))
    );
    assert_eq!(
        h.feed(0.5, &broadcast(racing.escaped(), "message.created")),
        Ok(Some(r))
    );
    h.feed(0.6, &confirm(&racing)).unwrap();
    h.feed(5.0, r#"{"type":"ping","message":1}"#).unwrap();
    h.tick(10.0);
    let happened = h.happened();
    assert!(
        happened.contains(&Happening::StreamingUnconfirmed { sub: w }),
        "{happened:?}"
    );
    assert!(
        !happened.contains(&Happening::StreamingUnconfirmed { sub: r }),
        "{happened:?}"
    );
    assert!(happened
        .iter()
        .any(|x| matches!(x, Happening::Unanswered { sub, .. } if *sub == s)));
    assert!(!happened
        .iter()
        .any(|x| matches!(x, Happening::Unanswered { sub, .. } if *sub == w)));
    let sent = h.sent().join("\n");
    assert!(!sent.contains("tok-wrong"), "never unsubscribed: {sent}");
    assert!(matches!(
        h.session.subscription_state(w),
        Some(SubscriptionState::StreamingUnconfirmed { .. })
    ));
    // It keeps delivering, takes no presence and sets no timer of its own.
    h.feed(9.0, r#"{"type":"ping","message":1}"#).unwrap();
    h.tick(14.0);
    assert_eq!(
        h.feed(14.0, &broadcast(wrong.escaped(), "message.created")),
        Ok(Some(w))
    );
    assert!(!h.sent().join("\n").contains("tok-wrong"));
    assert!(
        !h.happened()
            .iter()
            .any(|x| matches!(x, Happening::StreamingUnconfirmed { .. })),
        "reported once"
    );
    // A late confirm still confirms it.
    h.feed(14.5, &confirm(&wrong)).unwrap();
    assert!(h
        .happened()
        .iter()
        .any(|x| matches!(x, Happening::Confirmed { sub, .. } if *sub == w)));
}

#[test]
fn presence_off_sends_no_update_presence_ever() {
    let config = SessionConfig {
        presence_interval: secs(30.0),
        presence: false,
        ..SessionConfig::default()
    };
    let mut h = Harness::with(config);
    let a = user("tok-a", 1, 7);
    let sa = h.session.add(a.clone(), h.at(0.0));
    h.feed(0.0, WELCOME).unwrap();
    h.sent();
    h.feed(0.5, &confirm(&a)).unwrap();
    assert!(h.sent().is_empty(), "no presence after the confirm");
    h.run_until(95.0, |_, frame| {
        assert_ne!(frame, Command::UpdatePresence(&a).encode());
    });
    assert!(!h.happened().contains(&Happening::PresenceSent { sub: sa }));
    assert_eq!(
        h.session
            .subscription_state(sa)
            .map(|s| matches!(s, SubscriptionState::Confirmed { .. })),
        Some(true)
    );
}
