//! End to end: voxsig-sim -> voxsig-bridge -> an in-memory sink, checked against the sim's
//! ground truth.

use voxsig_testkit::rig as support;

use std::collections::HashSet;
use std::time::Duration;
use support::*;
use voxsig_protocol::EventKind;
use voxsig_sim::{
    EventSpec, Malformed, Rate, Refusal, RunSpec, Selection, SimConfig, TokenSelection,
};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_account_users_and_contacts_every_event_exactly_once() {
    let sim = sim(world(1, 2, 3, 0), SimConfig::default()).await;
    let rig = rig_on(sim, TokenSelection::All, "", "").await;
    rig.confirmed(5).await;
    rig.sim.burst(300, &Selection::all()).await.unwrap();
    let n = rig.assert_exactly_once(WAIT).await;
    assert!(n >= 250, "{n}");
    // Two agents and the contacts all received most broadcasts: copies were suppressed.
    assert!(rig.metric("voxsig_bridge_events_deduplicated_total", &[]) > 0.0);
    let report = rig.stop().await;
    assert_eq!(report.undelivered, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_for_per_user_topics_are_each_published_whatever_their_order() {
    // Issue 14: dedup (and the message ledger) kept the first copy of a broadcast, so with
    // `{user}` in the topic which user's topic got it depended on arrival order. Copies that
    // render to different topics are different records: each user's topic gets its own.
    let sim = sim(world(1, 2, 1, 0), SimConfig::default()).await;
    let rig = rig_on(
        sim,
        TokenSelection::Users,
        "[route]\ntopic = \"voxsig/{user}/{event}\"\n",
        "",
    )
    .await;
    rig.confirmed(2).await;
    rig.sim.burst(200, &Selection::all()).await.unwrap();
    rig.sim
        .wait_for_delivery(Duration::from_secs(30))
        .await
        .expect("sim delivered");
    let user_of: std::collections::HashMap<String, u64> = rig
        .sim
        .world()
        .users
        .iter()
        .map(|u| (u.pubsub_token.clone(), u.id))
        .collect();
    let truth = rig.sim.ground_truth();
    // (sim_seq, user) for every broadcast written to a user's socket.
    let mut expected = std::collections::BTreeSet::new();
    for e in &truth.events {
        if e.origin != voxsig_sim::Origin::Broadcast || e.event == "presence.update" {
            continue;
        }
        for d in &e.deliveries {
            if d.status == voxsig_sim::DeliveryStatus::Written {
                expected.insert((e.sim_seq, user_of[&d.token]));
            }
        }
    }
    let copies = expected.len()
        - expected
            .iter()
            .map(|(seq, _)| seq)
            .collect::<HashSet<_>>()
            .len();
    assert!(copies > 50, "most broadcasts reach both users: {copies}");
    rig.memory.wait_for(expected.len(), WAIT).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut got = std::collections::BTreeSet::new();
    for record in rig.memory.records() {
        let data: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
        let user: u64 = record.topic.split('/').nth(1).unwrap().parse().unwrap();
        assert!(
            got.insert((data["sim_seq"].as_u64().unwrap(), user)),
            "one record per broadcast and user: {}",
            record.topic
        );
    }
    let missing: Vec<_> = expected.difference(&got).collect();
    let extra: Vec<_> = got.difference(&expected).collect();
    let events: std::collections::HashMap<u64, &str> =
        truth.events.iter().map(|e| (e.sim_seq, e.event)).collect();
    let missing_events: Vec<_> = missing
        .iter()
        .take(10)
        .map(|(seq, u)| (events[seq], *u))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} expected, {} missing (e.g. {missing_events:?}), {} extra",
        expected.len(),
        missing.len(),
        extra.len()
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_accounts_with_users_in_two_accounts() {
    // Each account's first user also belongs to the next account: its token receives both
    // accounts' events, which must be published under the account in the data, once.
    let sim = sim(world(100, 2, 1, 1), SimConfig::default()).await;
    let rig = rig_on(sim, TokenSelection::All, "", "").await;
    let subs = rig.tokens.len();
    rig.confirmed(subs).await;
    rig.sim.burst(2000, &Selection::all()).await.unwrap();
    let n = rig.assert_exactly_once(WAIT).await;
    assert!(n >= 1500, "{n}");
    assert_eq!(rig.bridge().sockets(), subs.div_ceil(50));
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_dedup_table_forgets_counts_and_loses_nothing() {
    // Room for one broadcast per shard: almost every new one makes the table forget others.
    // Copies arriving after their original was forgotten are published again (counted), and
    // nothing is lost.
    let sim = sim(world(4, 2, 1, 1), SimConfig::default()).await;
    let rig = rig_on(sim, TokenSelection::All, "[dedup]\nmax_entries = 16\n", "").await;
    rig.confirmed(rig.tokens.len()).await;
    rig.sim.burst(600, &Selection::all()).await.unwrap();
    rig.sim
        .wait_for_delivery(Duration::from_secs(30))
        .await
        .expect("sim delivered");
    let truth = rig.sim.ground_truth();
    let expected: HashSet<(u64, u64)> = rig.expected(&truth).into_iter().collect();
    assert!(expected.len() >= 400, "{}", expected.len());
    let deadline = tokio::time::Instant::now() + WAIT;
    let missing = loop {
        let arrived: HashSet<(u64, u64)> = rig
            .memory
            .records()
            .iter()
            .map(|r| {
                let data: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
                (
                    data["account_id"].as_u64().unwrap(),
                    data["sim_seq"].as_u64().unwrap(),
                )
            })
            .collect();
        let missing = expected.difference(&arrived).count();
        if missing == 0 || tokio::time::Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(missing, 0, "every broadcast arrives at least once");
    assert!(rig.metric("voxsig_bridge_dedup_forgotten_total", &[]) > 0.0);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_larger_than_the_read_buffer_arrive_whole_without_tcp_nodelay() {
    // The smallest read buffer allowed (1 KiB) under message frames of 1.5-3 KB and every other
    // kind: most frames span several reads, and each must arrive byte-identical, exactly once.
    let sim = sim(world(2, 2, 1, 0), SimConfig::default()).await;
    let extra = "[source]\nread_buffer_bytes = 1024\ntcp_nodelay = false\n";
    let rig = rig_on(sim, TokenSelection::All, extra, "").await;
    let subs = rig.tokens.len();
    rig.confirmed(subs).await;
    rig.sim.burst(600, &Selection::all()).await.unwrap();
    let n = rig.assert_exactly_once(WAIT).await;
    assert!(n >= 500, "{n}");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_accounts() {
    let sim = sim(world(1000, 1, 1, 0), SimConfig::default()).await;
    let rig = rig_on(sim, TokenSelection::All, "", "").await;
    assert_eq!(rig.tokens.len(), 2000);
    rig.confirmed(2000).await;
    rig.sim.burst(4000, &Selection::all()).await.unwrap();
    let n = rig.assert_exactly_once(WAIT).await;
    assert!(n >= 3000, "{n}");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_token_is_reported_while_the_others_flow() {
    let sim = sim(
        world(2, 1, 1, 0),
        SimConfig::default().with_refusal(Refusal::Reject),
    )
    .await;
    let bogus = "[[accounts]]\naccount_id = 1\nuser_id = 999\npubsub_token = \"notARealToken000000000000\"\n";
    let rig = rig_on(sim, TokenSelection::All, "", bogus).await;
    rig.confirmed(4).await;
    eventually("the reject is counted", WAIT, || {
        rig.metric(
            "voxsig_bridge_subscription_failures_total",
            &[("cause", "rejected")],
        ) >= 1.0
    })
    .await;
    rig.sim.burst(200, &Selection::all()).await.unwrap();
    rig.assert_exactly_once(WAIT).await;
    let snapshot = rig.bridge().status().snapshot();
    let bogus = snapshot
        .subscriptions
        .iter()
        .find(|s| s.user_id == Some(999))
        .unwrap();
    assert_eq!(bogus.state, voxsig_bridge::status::SubState::Rejected);
    assert!(!serde_json::to_string(&snapshot)
        .unwrap()
        .contains("notARealToken"));
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_token_times_out_and_is_retried_while_the_others_flow() {
    // The platform's own behaviour for an unknown token: no confirm, no reject.
    let sim = sim(world(1, 1, 1, 0), SimConfig::default()).await;
    let bogus = "[[accounts]]\naccount_id = 1\nuser_id = 999\npubsub_token = \"notARealToken000000000000\"\n";
    let rig = rig_on(sim, TokenSelection::All, "", bogus).await;
    rig.confirmed(2).await;
    eventually("two unanswered attempts", WAIT, || {
        rig.metric(
            "voxsig_bridge_subscription_failures_total",
            &[("cause", "unanswered")],
        ) >= 2.0
    })
    .await;
    rig.sim.burst(100, &Selection::all()).await.unwrap();
    rig.assert_exactly_once(WAIT).await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_restart_mid_stream_reconnects_resubscribes_and_resumes() {
    let sim = sim(world(3, 1, 1, 0), SimConfig::default()).await;
    let rig = rig_on(sim, TokenSelection::All, "", "").await;
    rig.confirmed(6).await;
    let run = rig
        .sim
        .run(RunSpec {
            selection: Selection::all(),
            rate: Rate::Total(400.0),
            duration: Duration::from_secs(3),
            max_events: Some(1200),
        })
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let first_generation = rig.sim.stats().connections_total;
    rig.sim.faults().stop_listener().await.unwrap();
    rig.sim.faults().drop_connections();
    tokio::time::sleep(Duration::from_millis(500)).await;
    rig.sim.faults().start_listener().await.unwrap();
    rig.confirmed(6).await;
    run.wait().await.unwrap();
    rig.assert_exactly_once_across_a_drop(first_generation, WAIT)
        .await;
    assert!(rig.metric("voxsig_bridge_reconnects_total", &[]) >= 1.0);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_frames_both_ways() {
    let sim = sim(world(1, 1, 1, 0), SimConfig::default()).await;
    let rig = rig_on(sim, TokenSelection::All, "", "").await;
    rig.confirmed(2).await;
    // reconnect: true: back quickly.
    rig.sim.faults().disconnect("server_restart", true).await;
    eventually("a reconnect", WAIT, || {
        rig.metric("voxsig_bridge_reconnects_total", &[]) >= 1.0
    })
    .await;
    rig.confirmed(2).await;
    // reconnect: false: a long back-off (2 s in this test), not a tight loop.
    let before = rig.sim.stats().connections_total;
    rig.sim.faults().disconnect("unauthorized", false).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        rig.sim.stats().connections_total,
        before,
        "no reconnect during the refusal back-off"
    );
    assert!(
        rig.metric(
            "voxsig_bridge_disconnects_total",
            &[("reason", "server_refused")]
        ) >= 1.0
    );
    rig.confirmed(2).await;
    assert!(rig.sim.stats().connections_total > before);
    rig.sim.burst(50, &Selection::all()).await.unwrap();
    rig.assert_exactly_once(WAIT).await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_is_detected_as_stale_and_flow_resumes() {
    let sim = sim(world(1, 1, 1, 0), SimConfig::default()).await;
    let rig = rig_on(sim, TokenSelection::Users, "", "").await;
    rig.confirmed(1).await;
    rig.sim.faults().stop_pings();
    eventually("a stale detection", WAIT, || {
        rig.metric("voxsig_bridge_stale_connections_total", &[]) >= 1.0
    })
    .await;
    rig.sim.faults().resume_pings();
    rig.confirmed(1).await;
    rig.sim.burst(50, &Selection::all()).await.unwrap();
    rig.assert_exactly_once(WAIT).await;
    rig.stop().await;
}

/// Issue 12: the platform echoes `presence.update` for every subscription on every
/// `update_presence`; those echoes must not hide a dead heartbeat (only pings prove life).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_echoes_do_not_hide_a_dead_heartbeat() {
    let sim = sim(world(1, 3, 1, 0), SimConfig::default()).await;
    let rig = rig_on(
        sim,
        TokenSelection::Users,
        "[source]\npresence_interval = \"1s\"\n",
        "",
    )
    .await;
    rig.confirmed(3).await;
    let echoes = || {
        rig.metric(
            "voxsig_bridge_events_received_total",
            &[("event", "presence.update")],
        )
    };
    let before = echoes();
    rig.sim.faults().stop_pings();
    eventually("a stale detection despite presence echoes", WAIT, || {
        rig.metric("voxsig_bridge_stale_connections_total", &[]) >= 1.0
    })
    .await;
    assert!(echoes() > before, "presence echoes kept arriving");
    rig.sim.faults().resume_pings();
    rig.confirmed(3).await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_mid_stream_are_counted_and_skipped() {
    let sim = sim(world(1, 1, 1, 0), SimConfig::default()).await;
    let rig = rig_on(sim, TokenSelection::All, "", "").await;
    rig.confirmed(2).await;
    rig.sim.burst(50, &Selection::all()).await.unwrap();
    let faults = rig.sim.faults();
    faults.send_malformed(Malformed::InvalidJson).await;
    faults.send_malformed(Malformed::UnknownType).await;
    faults.send_malformed(Malformed::Binary).await;
    faults
        .send_malformed(Malformed::Oversize(5 * 1024 * 1024))
        .await;
    rig.sim.burst(50, &Selection::all()).await.unwrap();
    rig.assert_exactly_once(WAIT).await;
    let errors = |kind| rig.metric("voxsig_bridge_frame_errors_total", &[("kind", kind)]);
    assert!(errors("invalid_json") >= 1.0);
    assert!(errors("binary") >= 1.0);
    assert!(errors("too_large") >= 1.0);
    assert!(rig.metric("voxsig_bridge_unknown_frames_total", &[]) >= 1.0);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_heartbeats_at_the_interval() {
    let sim = sim(world(1, 1, 1, 0), SimConfig::default()).await;
    let rig = rig_on(
        sim,
        TokenSelection::All,
        "[source]\npresence_interval = \"1s\"\n",
        "",
    )
    .await;
    rig.confirmed(2).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    for token in &rig.tokens {
        let log = rig.sim.presence_of(token);
        assert!((3..=5).contains(&log.len()), "{} heartbeats", log.len());
        for pair in log.windows(2) {
            let gap = pair[1].at.duration_since(pair[0].at);
            assert!(
                gap >= Duration::from_millis(900) && gap <= Duration::from_millis(1300),
                "{gap:?}"
            );
        }
    }
    assert!(rig.metric("voxsig_bridge_presence_updates_sent_total", &[]) >= 6.0);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_delivers_everything_accepted() {
    let sim = sim(world(2, 1, 1, 0), SimConfig::default()).await;
    let mut rig = rig_on(sim, TokenSelection::All, "", "").await;
    rig.confirmed(4).await;
    rig.memory.set_delay(Duration::from_millis(3));
    rig.sim.burst(400, &Selection::all()).await.unwrap();
    rig.sim.wait_for_delivery(WAIT).await.unwrap();
    // Let the bridge accept what was sent, then stop while the slow sink is still busy.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let expected = rig.expected(&rig.sim.ground_truth());
    assert!(
        rig.memory.len() < expected.len(),
        "the sink should still be behind"
    );
    let report = rig.shut_down(Duration::from_secs(20)).await;
    assert_eq!(report.undelivered, 0);
    check_records(&rig.sim.ground_truth(), &expected, &rig.memory.records());
    rig.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_account_of_an_event_is_the_one_in_its_data() {
    let sim = sim(world(2, 1, 1, 1), SimConfig::default()).await;
    let rig = rig_on(sim, TokenSelection::Users, "", "").await;
    rig.confirmed(rig.tokens.len()).await;
    for account in [1, 2] {
        for _ in 0..10 {
            rig.sim
                .emit(EventSpec::new(account, EventKind::MessageCreated))
                .await
                .unwrap();
        }
    }
    rig.assert_exactly_once(WAIT).await;
    let topics: std::collections::BTreeSet<String> =
        rig.memory.records().into_iter().map(|r| r.topic).collect();
    assert!(
        topics.contains("voxsig/1/message.created") && topics.contains("voxsig/2/message.created")
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sink_slows_reading_and_memory_stays_bounded() {
    let sim = sim(world(2, 1, 1, 0), SimConfig::default()).await;
    let rig = rig_on(sim, TokenSelection::All, "[buffer]\nmax_events = 50\n", "").await;
    rig.confirmed(4).await;
    // 600 events at 4 ms each: the backlog takes longer than `stale_after` (1.5 s) to drain,
    // with the sim's pings waiting unread behind it.
    rig.memory.set_delay(Duration::from_millis(4));
    let burst = {
        let sim = rig.sim.clone();
        tokio::spawn(async move { sim.burst(600, &Selection::all()).await })
    };
    // While the sink lags, the buffer never holds more than its capacity: reading waits.
    let mut peak = 0;
    let watch = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < watch {
        peak = peak.max(rig.bridge().buffered());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    burst.await.unwrap().unwrap();
    assert!(
        peak <= 50,
        "buffer held {peak} records with a capacity of 50"
    );
    assert!(
        peak >= 40,
        "the buffer filled up ({peak}): the sink really was the bottleneck"
    );
    rig.assert_exactly_once(WAIT).await;
    assert_eq!(
        rig.metric("voxsig_bridge_buffer_records_dropped_total", &[]),
        0.0,
        "block never drops"
    );
    assert_eq!(
        rig.metric("voxsig_bridge_disconnects_total", &[("reason", "stale")]),
        0.0,
        "time spent waiting for room is not silence from the server"
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logged_out_token_is_reported_and_the_others_keep_flowing() {
    let sim = sim(world(2, 1, 1, 0), SimConfig::default()).await;
    let rig = rig_on(sim, TokenSelection::Users, "", "").await;
    rig.confirmed(2).await;
    rig.sim
        .emit(EventSpec::new(1, EventKind::UserLogout))
        .await
        .unwrap();
    eventually("the logout is counted", WAIT, || {
        rig.metric("voxsig_bridge_token_logouts_total", &[]) >= 1.0
    })
    .await;
    let snapshot = rig.bridge().status().snapshot();
    let states: Vec<_> = snapshot
        .subscriptions
        .iter()
        .map(|s| (s.account_id, s.state))
        .collect();
    assert!(
        states.contains(&(1, voxsig_bridge::status::SubState::LoggedOut)),
        "{states:?}"
    );
    assert!(
        states.contains(&(2, voxsig_bridge::status::SubState::Confirmed)),
        "{states:?}"
    );
    rig.sim
        .burst(100, &Selection::all().accounts([2]))
        .await
        .unwrap();
    rig.assert_exactly_once(WAIT).await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_the_broker_away_and_the_buffer_full_ends_within_the_deadline() {
    let sim = sim(world(1, 1, 1, 0), SimConfig::default()).await;
    let mut rig = rig_on(sim, TokenSelection::All, "[buffer]\nmax_events = 20\n", "").await;
    rig.confirmed(2).await;
    rig.memory.set_failing(true);
    rig.sim.burst(200, &Selection::all()).await.unwrap();
    eventually("the buffer filled", WAIT, || rig.bridge().buffered() >= 20).await;
    let started = std::time::Instant::now();
    let report = rig.shut_down(Duration::from_secs(1)).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(8), "shutdown took {took:?}");
    assert_eq!(report.undelivered, 20, "{report:?}");
    assert!(report.deadline_hit);
    assert!(
        rig.metric(
            "voxsig_bridge_events_dropped_total",
            &[("reason", "buffer_closed")]
        ) >= 1.0
    );
    rig.sim.shutdown().await;
}

/// Issue 12: a real token subscribed with a wrong `account_id`. The platform attaches the stream
/// before it raises, so its events flow on an identifier that is never confirmed. The bridge
/// keeps it (no unsubscribe at the confirm timeout, no on/off), publishes every event once, shows
/// it as `unconfirmed_streaming` and counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_account_id_that_streams_is_kept_and_marked_unconfirmed_streaming() {
    let sim = sim(
        world(2, 1, 1, 0),
        SimConfig {
            stream_before_auth: true,
            ..SimConfig::default()
        },
    )
    .await;
    let world = sim.world();
    let user = world.users[0].clone();
    let wrong_account = if user.accounts.contains(&1) { 2 } else { 1 };
    let right_account = 3 - wrong_account;
    let wrong = format!(
        "[[accounts]]\naccount_id = {wrong_account}\nuser_id = {}\npubsub_token = \"{}\"\n",
        user.id, user.pubsub_token
    );
    let rig = rig_on(sim, TokenSelection::Contacts, "", &wrong).await;
    rig.confirmed(2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let run = rig
        .sim
        .run(RunSpec {
            selection: Selection {
                accounts: vec![right_account],
                ..Selection::all()
            },
            rate: Rate::Total(40.0),
            duration: Duration::from_secs(4),
            max_events: Some(160),
        })
        .unwrap();
    run.wait().await.unwrap();
    rig.assert_exactly_once(WAIT).await;
    let truth = rig.sim.ground_truth();
    let broadcasts: Vec<_> = truth
        .broadcasts()
        .filter(|e| e.account_id == right_account && e.event != "presence.update")
        .collect();
    let to_wrong = broadcasts
        .iter()
        .filter(|e| e.deliveries.iter().any(|d| d.token == user.pubsub_token))
        .count();
    assert!(broadcasts.len() >= 100, "{}", broadcasts.len());
    assert_eq!(
        to_wrong,
        broadcasts.len(),
        "the stream stays attached: every event of the user's account reaches it"
    );
    assert_eq!(
        rig.metric(
            "voxsig_bridge_subscription_failures_total",
            &[("cause", "unanswered")]
        ),
        0.0,
        "never unsubscribed as unanswered"
    );
    assert_eq!(
        rig.metric(
            "voxsig_bridge_subscriptions_unconfirmed_streaming_total",
            &[]
        ),
        1.0
    );
    let snapshot = rig.bridge().status().snapshot();
    let state = snapshot
        .subscriptions
        .iter()
        .find(|s| s.account_id == wrong_account && s.user_id == Some(user.id))
        .map(|s| s.state);
    assert_eq!(
        state,
        Some(voxsig_bridge::status::SubState::UnconfirmedStreaming)
    );
    rig.stop().await;
}

/// `payload = "cloudevents"` with a sink without headers (here stdout's mode, structured): every
/// record is a CloudEvents 1.0 JSON event whose `data` is the event's data byte for byte, with
/// `source` from the platform origin, `type` from the event name and a distinct `id` per event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_structured_mode_end_to_end() {
    let sim = sim(world(2, 1, 1, 0), SimConfig::default()).await;
    let origin = voxsig_bridge::runtime::origin_of(&sim.url());
    let rig = rig_on(
        sim,
        TokenSelection::Users,
        "[route]\npayload = \"cloudevents\"\n",
        "",
    )
    .await;
    rig.confirmed(rig.tokens.len()).await;
    rig.sim.burst(60, &Selection::all()).await.unwrap();
    rig.sim.wait_for_delivery(WAIT).await.unwrap();
    let truth = rig.sim.ground_truth();
    let expected = rig.expected(&truth);
    assert!(expected.len() >= 30, "{} events", expected.len());
    assert!(rig.memory.wait_for(expected.len(), WAIT).await);
    let mut ids = std::collections::HashSet::new();
    for record in rig.memory.records() {
        let event: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["datacontenttype"], "application/json");
        let account = record.headers.account_id.unwrap();
        assert_eq!(event["source"], format!("{origin}/accounts/{account}"));
        assert_eq!(
            event["type"],
            format!("com.voxsig.{}", record.headers.event)
        );
        assert!(
            ids.insert(event["id"].as_str().unwrap().to_owned()),
            "ids differ"
        );
        let data = &event["data"];
        let sent = truth
            .events
            .iter()
            .find(|e| Some(e.sim_seq) == data["sim_seq"].as_u64() && e.account_id == account)
            .expect("a sent event");
        let sent_data: serde_json::Value = serde_json::from_str(&sent.data).unwrap();
        assert_eq!(data, &sent_data);
        let text = std::str::from_utf8(&record.payload).unwrap();
        assert!(text.contains(&*sent.data), "data spliced in byte for byte");
    }
    assert_eq!(ids.len(), expected.len());
    eprintln!("cloudevents end to end: {} events checked", ids.len());
    rig.stop().await;
}
