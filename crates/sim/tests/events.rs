//! Event generation and routing, checked against the ground truth.

use voxsig_testkit::client as common;

use common::*;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use voxsig_protocol::catalogue::Audience;
use voxsig_protocol::models::TypedEvent;
use voxsig_protocol::{EventKind, ServerFrame};
use voxsig_sim::{
    DeliveryStatus, EventSpec, Origin, Rate, RunSpec, Selection, Sim, StopReason, WorldSpec,
};

/// Every event a socket received: (identifier, account, sim_seq, event name, data bytes).
type Received = Vec<(String, u64, u64, String, String)>;

fn decode(frames: &[String]) -> Received {
    frames
        .iter()
        .map(|t| {
            let ServerFrame::Event(ev) = ServerFrame::parse(t).expect("a valid frame") else {
                panic!("not an event: {t}");
            };
            // The protocol crate's typed models accept every payload.
            TypedEvent::decode(ev.kind, ev.data).unwrap_or_else(|e| panic!("{e}: {t}"));
            let data: Value = serde_json::from_str(ev.data).unwrap();
            let identifier: Value = serde_json::from_str(t).unwrap();
            (
                identifier["identifier"].as_str().unwrap().to_owned(),
                ev.account_id.expect("account_id"),
                data["sim_seq"].as_u64().expect("sim_seq"),
                ev.name.to_string(),
                ev.data.to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn every_catalogued_event_reaches_exactly_the_tokens_entitled_to_it() {
    let sim = start().await;
    let world = sim.world();
    // Every token of the world on its own subscription, all on one socket.
    let mut c = Client::connect(&sim).await;
    let mut ids = Vec::new();
    for u in &world.users {
        ids.push((
            u.pubsub_token.clone(),
            world.user_identifier(u.id, u.accounts[0]).unwrap(),
        ));
    }
    for ct in &world.contacts {
        ids.push((
            ct.pubsub_token.clone(),
            world.contact_identifier(ct.id).unwrap(),
        ));
    }
    for (_, id) in &ids {
        c.subscribe_confirmed(id).await;
    }
    let contact = &world.contacts[0];
    let conversation = contact.conversations[0];
    for _ in 0..3 {
        for kind in EventKind::ALL {
            let spec = EventSpec::new(1, *kind).in_conversation(conversation);
            sim.emit(spec).await.unwrap();
        }
        // And the other account, random conversations.
        sim.burst(10, &Selection::all().accounts([2]))
            .await
            .unwrap();
    }
    sim.wait_for_delivery(LONG).await.unwrap();
    let received = decode(&c.drain(SHORT).await);
    let truth = sim.ground_truth();
    assert!(!truth.truncated);
    // Presence replies came during the subscribes; everything else is in `received`.
    let written = truth
        .broadcasts()
        .flat_map(|e| &e.deliveries)
        .filter(|d| d.status == DeliveryStatus::Written)
        .count();
    assert_eq!(written, received.len());

    // Exactly once per (identifier, event), byte-identical, and every written frame received.
    let mut by_key: HashMap<(String, u64, u64), String> = HashMap::new();
    for (identifier, account, seq, _, data) in &received {
        assert!(by_key
            .insert((identifier.clone(), *account, *seq), data.clone())
            .is_none());
    }
    for ev in truth.broadcasts() {
        for d in &ev.deliveries {
            let got = by_key
                .get(&(d.identifier.clone(), ev.account_id, ev.sim_seq))
                .unwrap_or_else(|| panic!("{} {} not received", ev.event, ev.sim_seq));
            assert_eq!(got.as_str(), &*ev.data);
        }
    }
    // Routing rules.
    let tokens_of = |account: u64| -> BTreeSet<String> {
        world
            .users_of(account)
            .map(|u| u.pubsub_token.clone())
            .collect()
    };
    for ev in truth.broadcasts().filter(|e| e.account_id == 1) {
        let to: BTreeSet<String> = ev.deliveries.iter().map(|d| d.token.clone()).collect();
        let data: Value = serde_json::from_str(&ev.data).unwrap();
        let mut expected = tokens_of(1);
        if ev.kind.audience() == Some(Audience::AgentsAndContacts)
            && ev.conversation_id.is_some()
            && data["private"] != true
            && data["is_private"] != true
        {
            expected.insert(contact.pubsub_token.clone());
        }
        if ev.event.starts_with("notification") {
            assert_eq!(to.len(), 1, "a notification is for one user");
            assert!(expected.is_superset(&to));
        } else {
            assert_eq!(to, expected, "{}", ev.event);
        }
        if let Some(conv) = ev.conversation_id {
            assert_eq!(conv, conversation);
        }
    }
    // The contact saw its conversation's events, including every message and typing kind.
    let contact_kinds: BTreeSet<&str> = truth
        .written_to(&contact.pubsub_token)
        .map(|e| e.event)
        .collect();
    assert!(
        contact_kinds.contains("conversation.created"),
        "{contact_kinds:?}"
    );
    assert!(!contact_kinds.contains("contact.created"));
    assert!(!contact_kinds.contains("assignee.changed"));
    // Nobody of account 1 got account 2's events and vice versa.
    for ev in truth.broadcasts() {
        for d in &ev.deliveries {
            let owner_accounts: Vec<u64> = world
                .users
                .iter()
                .find(|u| u.pubsub_token == d.token)
                .map(|u| u.accounts.clone())
                .or_else(|| {
                    world
                        .contacts
                        .iter()
                        .find(|c| c.pubsub_token == d.token)
                        .map(|c| vec![c.account_id])
                })
                .unwrap();
            assert!(owner_accounts.contains(&ev.account_id));
        }
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn conversation_ids_in_frames_match_the_ground_truth() {
    let sim = start().await;
    let world = sim.world();
    let mut c = Client::connect(&sim).await;
    c.subscribe_confirmed(&user(&world, 0)).await;
    sim.burst(200, &Selection::all().accounts([1]))
        .await
        .unwrap();
    sim.wait_for_delivery(LONG).await.unwrap();
    let truth = sim.ground_truth();
    for text in c.drain(SHORT).await {
        let ServerFrame::Event(ev) = ServerFrame::parse(&text).unwrap() else {
            panic!("{text}");
        };
        let seq = serde_json::from_str::<Value>(ev.data).unwrap()["sim_seq"]
            .as_u64()
            .unwrap();
        let sent = truth.find(1, seq).unwrap();
        assert_eq!(ev.conversation_id, sent.conversation_id, "{}", sent.event);
        assert_eq!(ev.name, sent.event);
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn sequence_numbers_are_per_account_and_arrive_in_order() {
    let sim = start().await;
    let world = sim.world();
    let mut c = Client::connect(&sim).await;
    let a1 = user(&world, 0);
    let a2 = user(&world, 2);
    c.subscribe_confirmed(&a1).await;
    c.subscribe_confirmed(&a2).await;
    let report = sim.burst(1000, &Selection::all()).await.unwrap();
    assert_eq!((report.events, report.stopped), (1000, StopReason::Count));
    sim.wait_for_delivery(LONG).await.unwrap();
    let received = decode(&c.drain(SHORT).await);
    let mut last: HashMap<u64, u64> = HashMap::new();
    let mut per_conversation: HashMap<u64, u64> = HashMap::new();
    let truth = sim.ground_truth();
    for (_, account, seq, _, _) in &received {
        let prev = last.insert(*account, *seq).unwrap_or(0);
        assert!(*seq > prev, "account {account}: {seq} after {prev}");
        if let Some(conv) = truth.find(*account, *seq).unwrap().conversation_id {
            let prev = per_conversation.insert(conv, *seq).unwrap_or(0);
            assert!(*seq > prev);
        }
    }
    // Round robin: both accounts got half; the presence replies took sequence number 1.
    let broadcasts: Vec<_> = truth.broadcasts().collect();
    assert_eq!(broadcasts.len(), 1000);
    assert_eq!(broadcasts.iter().filter(|e| e.account_id == 1).count(), 500);
    assert_eq!(truth.find(1, 1).unwrap().origin, Origin::Reply);
    assert_eq!(truth.for_account(1).map(|e| e.sim_seq).max(), Some(501));
    // Users receive every one of their account's non-notification broadcasts.
    let expected = broadcasts
        .iter()
        .filter(|e| {
            e.written_to(&world.users[0].pubsub_token) || e.written_to(&world.users[2].pubsub_token)
        })
        .count();
    assert_eq!(received.len(), expected);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_user_of_two_accounts_receives_both_on_one_subscription() {
    let sim = Sim::start(common::config().with_world_spec(WorldSpec {
        shared_users: 1,
        ..WorldSpec::default()
    }))
    .await
    .unwrap();
    let world = sim.world();
    let shared_user = world.users.iter().find(|u| u.accounts.len() == 2).unwrap();
    let mut c = Client::connect(&sim).await;
    let id = world
        .user_identifier(shared_user.id, shared_user.accounts[0])
        .unwrap();
    c.subscribe_confirmed(&id).await;
    // The second account's id is also accepted for that token.
    c.subscribe_confirmed(
        &world
            .user_identifier(shared_user.id, shared_user.accounts[1])
            .unwrap(),
    )
    .await;
    c.unsubscribe(
        &world
            .user_identifier(shared_user.id, shared_user.accounts[1])
            .unwrap(),
    )
    .await;
    sim.wait_until("one subscription", LONG, |s| s.subscriptions == 1)
        .await
        .unwrap();
    for account in &shared_user.accounts {
        sim.emit(EventSpec::new(*account, EventKind::MessageCreated))
            .await
            .unwrap();
    }
    let first = c.json(LONG).await;
    let second = c.json(LONG).await;
    assert_eq!(first["identifier"], id.wire());
    assert_eq!(second["identifier"], id.wire());
    let accounts: Vec<u64> = [first, second]
        .iter()
        .map(|f| f["message"]["data"]["account_id"].as_u64().unwrap())
        .collect();
    assert_eq!(accounts, shared_user.accounts);
    sim.shutdown().await;
}

#[tokio::test]
async fn runs_keep_their_rate_and_stop_on_time_or_count() {
    let sim = start().await;
    let run = sim
        .run(RunSpec {
            selection: Selection::all(),
            rate: Rate::PerAccount(100.0),
            duration: Duration::from_millis(500),
            max_events: None,
        })
        .unwrap();
    let report = run.wait().await.unwrap();
    assert_eq!(report.stopped, StopReason::Duration);
    // 2 accounts x 100/s x 0.5 s.
    assert!((90..=101).contains(&report.events), "{report:?}");
    let per_account = sim.ground_truth().for_account(1).count();
    assert!((45..=51).contains(&per_account), "{per_account}");

    let counted = sim
        .run(RunSpec {
            selection: Selection::all().kinds([EventKind::ConversationTypingOn]),
            rate: Rate::Total(1000.0),
            duration: Duration::from_secs(5),
            max_events: Some(20),
        })
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!((counted.events, counted.stopped), (20, StopReason::Count));

    let stopped = sim
        .run(RunSpec {
            selection: Selection::all(),
            rate: Rate::Total(50.0),
            duration: Duration::from_secs(30),
            max_events: None,
        })
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stopped.stop();
    assert_eq!(stopped.wait().await.unwrap().stopped, StopReason::Stopped);
    assert!(sim
        .run(RunSpec {
            selection: Selection::all().accounts([99]),
            rate: Rate::Total(1.0),
            duration: Duration::from_secs(1),
            max_events: None,
        })
        .is_err());
    sim.shutdown().await;
}

#[tokio::test]
async fn emit_rejects_what_the_world_does_not_have() {
    let sim = start().await;
    let world = sim.world();
    assert!(sim
        .emit(EventSpec::new(9, EventKind::MessageCreated))
        .await
        .is_err());
    let other_account_conversation = world.contacts_of(2).next().unwrap().conversations[0];
    assert!(sim
        .emit(
            EventSpec::new(1, EventKind::MessageCreated)
                .in_conversation(other_account_conversation)
        )
        .await
        .is_err());
    assert!(sim.emit(EventSpec::new(1, EventKind::Other)).await.is_err());
    // Nobody subscribed: sent to no one, still recorded.
    let sent = sim.emit(EventSpec::default()).await.unwrap();
    assert_eq!(sent.frames, 0);
    assert_eq!(sim.ground_truth().total_events, 1);
    sim.shutdown().await;
}
