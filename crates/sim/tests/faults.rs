//! Every fault, as a client sees it.

use voxsig_testkit::client as common;

use common::*;
use std::time::Duration;
use voxsig_protocol::{EventKind, ServerFrame};
use voxsig_sim::{DeliveryStatus, EventSpec, Malformed, Refusal, Sim, SimConfig};

#[tokio::test]
async fn dropping_connections_ends_sockets_without_a_close_frame() {
    let sim = start().await;
    let mut a = subscribed(&sim).await;
    let mut b = Client::connect(&sim).await;
    assert_eq!(sim.faults().drop_connections(), 2);
    for c in [&mut a, &mut b] {
        loop {
            match c.next(LONG).await {
                Got::Text(t) if t.contains("ping") => continue,
                Got::Ended => break,
                other => panic!("expected an abrupt end, got {other:?}"),
            }
        }
    }
    let stats = sim.wait_for_sockets(0, LONG).await.unwrap();
    assert_eq!(stats.subscriptions, 0);
    // Clients reconnect and subscribe as before.
    let _again = subscribed(&sim).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn disconnect_sends_the_frame_then_closes_with_1000() {
    let sim = start().await;
    let mut a = subscribed(&sim).await;
    let mut b = Client::connect(&sim).await;
    assert_eq!(sim.faults().disconnect("unauthorized", false).await, 2);
    for c in [&mut a, &mut b] {
        let frame = c.text(LONG).await;
        assert_eq!(
            frame,
            r#"{"type":"disconnect","reason":"unauthorized","reconnect":false}"#
        );
        assert!(matches!(
            ServerFrame::parse(&frame),
            Ok(ServerFrame::Disconnect {
                reconnect: Some(false),
                ..
            })
        ));
        match c.next(LONG).await {
            Got::Close(code) => assert_eq!(code, Some(1000)),
            other => panic!("{other:?}"),
        }
    }
    sim.wait_for_sockets(0, LONG).await.unwrap();
    let mut c = Client::connect(&sim).await;
    sim.faults().disconnect("server_restart", true).await;
    assert_eq!(
        c.text(LONG).await,
        r#"{"type":"disconnect","reason":"server_restart","reconnect":true}"#
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn stopped_pings_leave_a_stale_open_connection() {
    let sim = start().await; // pings every 150 ms
    let mut c = Client::connect(&sim).await;
    sim.faults().stop_pings();
    match c.next(Duration::from_millis(500)).await {
        Got::Nothing => {}
        other => panic!("expected silence, got {other:?}"),
    }
    // Still open: events flow.
    let world = sim.world();
    c.subscribe_confirmed(&user(&world, 0)).await;
    sim.faults().resume_pings();
    sim.faults().set_ping_interval(Duration::from_millis(50));
    match c.next(Duration::from_millis(400)).await {
        Got::Text(t) => assert!(t.starts_with(r#"{"type":"ping","message":"#), "{t}"),
        other => panic!("{other:?}"),
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn malformed_frames_of_each_kind() {
    let sim = start().await;
    let mut c = Client::connect(&sim).await;
    let f = sim.faults();
    f.send_malformed(Malformed::InvalidJson).await;
    let text = c.text(LONG).await;
    assert!(
        serde_json::from_str::<serde_json::Value>(&text).is_err(),
        "{text}"
    );
    f.send_malformed(Malformed::UnknownType).await;
    assert!(matches!(
        ServerFrame::parse(&c.text(LONG).await),
        Ok(ServerFrame::Unknown { .. })
    ));
    f.send_malformed(Malformed::Oversize(200_000)).await;
    let big = c.text(LONG).await;
    assert_eq!(big.len(), 200_000);
    assert!(serde_json::from_str::<serde_json::Value>(&big).is_ok());
    f.send_malformed(Malformed::Binary).await;
    assert!(matches!(c.next(LONG).await, Got::Binary(b) if !b.is_empty()));
    // The connection survives all of it.
    sim.emit(EventSpec::default()).await.unwrap();
    assert_eq!(sim.stats().sockets, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_slow_writer_delays_frames_and_a_drop_counts_what_was_lost() {
    let sim = start().await;
    let mut c = subscribed(&sim).await;
    sim.faults().slow_writer(Some(Duration::from_millis(40)));
    let started = tokio::time::Instant::now();
    for _ in 0..5 {
        sim.emit(EventSpec::new(1, EventKind::ContactUpdated))
            .await
            .unwrap();
    }
    for _ in 0..5 {
        c.text(LONG).await;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(180),
        "{:?}",
        started.elapsed()
    );

    // Queue 10 more, drop the socket part way: every frame is written or dropped, none lost track of.
    for _ in 0..10 {
        sim.emit(EventSpec::new(1, EventKind::ContactUpdated))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    sim.faults().drop_connections();
    sim.wait_for_delivery(LONG).await.unwrap();
    let truth = sim.ground_truth();
    let (written, dropped) = (
        truth.count(DeliveryStatus::Written),
        truth.count(DeliveryStatus::Dropped),
    );
    // 1 presence reply + 5 + 10 frames.
    assert_eq!(written + dropped, 16);
    assert!(
        dropped >= 5 && written >= 7,
        "written {written}, dropped {dropped}"
    );
    let stats = sim.stats();
    assert_eq!(stats.event_frames_dropped as usize, dropped);
    sim.faults().slow_writer(None);
    sim.shutdown().await;
}

#[tokio::test]
async fn refusing_every_subscription_rejects_or_ignores_even_valid_tokens() {
    let sim = start().await;
    let world = sim.world();
    let id = user(&world, 0);
    let mut c = Client::connect(&sim).await;
    sim.faults().refuse_subscriptions(Some(Refusal::Reject));
    c.subscribe(&id).await;
    assert!(c.text(LONG).await.contains("reject_subscription"));
    sim.faults().refuse_subscriptions(Some(Refusal::Silent));
    c.subscribe(&id).await;
    c.expect_silence(SHORT).await;
    c.unsubscribe(&id).await;
    sim.faults().refuse_subscriptions(None);
    c.subscribe_confirmed(&id).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn the_listener_stops_and_restarts_on_the_same_port() {
    let sim = start().await;
    let mut open = subscribed(&sim).await;
    sim.faults().stop_listener().await.unwrap();
    assert!(!sim.stats().listening);
    assert!(Client::connect_url(&sim.url(), true).await.is_err());
    assert!(sim.faults().stop_listener().await.is_err());
    // Open sockets are untouched.
    sim.emit(EventSpec::new(1, EventKind::ContactCreated))
        .await
        .unwrap();
    assert!(open.text(LONG).await.contains("contact.created"));
    sim.faults().start_listener().await.unwrap();
    assert!(sim.stats().listening);
    let _again = subscribed(&sim).await;
    assert!(sim.faults().start_listener().await.is_err());
    sim.shutdown().await;
}

#[tokio::test]
async fn a_rotated_token_is_refused_and_its_old_subscriptions_go_quiet() {
    let common::Rotating {
        sim,
        before,
        old_id,
        client: mut c,
    } = common::rotating().await;
    let user = &before.users[0];
    let new_token = sim.faults().rotate_token(&user.pubsub_token).unwrap();
    assert_ne!(new_token, user.pubsub_token);
    let after = sim.world();
    assert_eq!(after.user(user.id).unwrap().pubsub_token, new_token);
    // The old identifier: rejected on a new socket; the old subscription receives nothing more.
    let mut fresh = Client::connect(&sim).await;
    fresh.subscribe(&old_id).await;
    assert!(fresh.text(LONG).await.contains("reject_subscription"));
    let new_id = after.user_identifier(user.id, 1).unwrap();
    fresh.subscribe_confirmed(&new_id).await;
    sim.emit(EventSpec::new(1, EventKind::ContactUpdated))
        .await
        .unwrap();
    assert_eq!(fresh.json(LONG).await["identifier"], new_id.wire());
    c.expect_silence(SHORT).await;
    assert!(sim.faults().rotate_token("no-such-token").is_err());
    sim.faults()
        .rotate_token_to(&new_token, "chosen-token")
        .unwrap();
    assert!(sim
        .faults()
        .rotate_token_to("chosen-token", &before.users[1].pubsub_token)
        .is_err());
    sim.shutdown().await;
}

#[tokio::test]
async fn streaming_before_auth_leaks_events_to_a_refused_known_token() {
    let sim = Sim::start(SimConfig {
        stream_before_auth: true,
        ..common::config()
    })
    .await
    .unwrap();
    let world = sim.world();
    let user = &world.users[0];
    // Right token, wrong account: no answer, like the platform, yet the token's events flow.
    let wrong = world.user_identifier(user.id, 2).unwrap();
    let mut c = Client::connect(&sim).await;
    c.subscribe(&wrong).await;
    c.expect_silence(SHORT).await;
    sim.emit(EventSpec::new(1, EventKind::MessageCreated))
        .await
        .unwrap();
    let frame = c.json(LONG).await;
    assert_eq!(frame["identifier"], wrong.wire());
    assert_eq!(sim.stats().subscriptions, 0);
    c.unsubscribe(&wrong).await;
    sim.wait_until("released", LONG, |s| s.pending_subscriptions == 0)
        .await
        .unwrap();
    sim.emit(EventSpec::new(1, EventKind::MessageCreated))
        .await
        .unwrap();
    c.expect_silence(SHORT).await;
    sim.shutdown().await;
}
