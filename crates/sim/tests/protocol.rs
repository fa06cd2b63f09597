//! The ActionCable behaviour: welcome, pings, subscription rules, presence, routing by identifier.

use voxsig_testkit::client as common;

use common::*;
use serde_json::Value;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use voxsig_protocol::{EventKind, IdentifierKey, PubsubToken, RoomIdentifier, ServerFrame};
use voxsig_sim::{EventSpec, Refusal, Sim, SUBPROTOCOL};

#[tokio::test]
async fn welcome_first_then_pings_at_the_configured_cadence() {
    let sim = start().await;
    let mut c = Client::connect(&sim).await;
    assert_eq!(c.protocol.as_deref(), Some(SUBPROTOCOL));
    let started = tokio::time::Instant::now();
    let mut pings = Vec::new();
    while pings.len() < 4 {
        match c.next(LONG).await {
            Got::Text(t) => {
                assert!(
                    matches!(ServerFrame::parse(&t), Ok(ServerFrame::Ping { .. })),
                    "{t}"
                );
                let v: Value = serde_json::from_str(&t).unwrap();
                pings.push((
                    started.elapsed(),
                    v["message"].as_u64().expect("integer seconds"),
                ));
            }
            other => panic!("{other:?}"),
        }
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(pings.iter().all(|(_, secs)| now.abs_diff(*secs) <= 2));
    // Four pings at 150 ms: about 600 ms, never bunched.
    let total = pings[3].0;
    assert!(
        total >= Duration::from_millis(400) && total < Duration::from_millis(1500),
        "{total:?}"
    );
    for pair in pings.windows(2) {
        assert!(
            pair[1].0 - pair[0].0 >= Duration::from_millis(80),
            "{pings:?}"
        );
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn a_client_offering_no_subprotocol_is_accepted_and_other_paths_are_not() {
    let sim = start().await;
    let mut plain = Client::connect_url(&sim.url(), false).await.unwrap();
    assert_eq!(plain.protocol, None);
    assert_eq!(plain.text(LONG).await, r#"{"type":"welcome"}"#);
    let wrong = sim.url().replace("/cable", "/other");
    let err = Client::connect_url(&wrong, true)
        .await
        .err()
        .expect("refused");
    assert_eq!(err.status(), Some(404), "{err}");
    sim.shutdown().await;
}

#[tokio::test]
async fn user_subscription_is_confirmed_then_answered_with_presence() {
    let sim = start().await;
    let world = sim.world();
    let user = &world.users[0];
    let id = world.user_identifier(user.id, 1).unwrap();
    let mut c = Client::connect(&sim).await;
    c.subscribe(&id).await;
    let confirm = c.text(LONG).await;
    assert_eq!(
        confirm,
        format!(
            r#"{{"identifier":"{}","type":"confirm_subscription"}}"#,
            id.escaped()
        )
    );
    let presence = c.text(LONG).await;
    let ServerFrame::Event(ev) = ServerFrame::parse(&presence).unwrap() else {
        panic!("{presence}");
    };
    assert_eq!(ev.kind, EventKind::PresenceUpdate);
    assert_eq!(ev.account_id, Some(1));
    let data: Value = serde_json::from_str(ev.data).unwrap();
    assert_eq!(
        data["users"][user.id.to_string()],
        user.availability.as_str()
    );
    assert!(
        data["contacts"].is_object(),
        "users see the contacts map: {data}"
    );
    assert_eq!(data["sim_seq"], 1);
    let stats = sim.wait_for_subscriptions(1, LONG).await.unwrap();
    assert_eq!((stats.sockets, stats.confirmed_total), (1, 1));
    sim.shutdown().await;
}

#[tokio::test]
async fn contact_subscription_is_the_token_alone_and_sees_no_contacts_map() {
    let sim = start().await;
    let world = sim.world();
    let contact = &world.contacts[0];
    let mut c = Client::connect(&sim).await;
    // A user subscriber first, so the contact's presence shows a user online.
    let mut agent = Client::connect(&sim).await;
    agent.subscribe_confirmed(&user(&world, 0)).await;
    let presence = c
        .subscribe_confirmed(&world.contact_identifier(contact.id).unwrap())
        .await;
    let data = &presence["message"]["data"];
    assert_eq!(data["account_id"], contact.account_id);
    assert!(data.get("contacts").is_none(), "{data}");
    assert!(
        data["users"][world.users[0].id.to_string()].is_string(),
        "{data}"
    );
    // The agent's own next presence shows the contact online.
    agent.update_presence(&user(&world, 0)).await;
    let again = agent.json(LONG).await;
    assert_eq!(
        again["message"]["data"]["contacts"][contact.id.to_string()],
        "online"
    );
    sim.shutdown().await;
}

/// Identifiers the platform refuses.
fn refused_identifiers(sim: &Sim) -> Vec<RoomIdentifier> {
    let world = sim.world();
    let (user, contact) = (&world.users[0], &world.contacts[0]);
    let token = |t: &str| PubsubToken::new(t);
    vec![
        RoomIdentifier::contact(token("not-a-real-token")),
        RoomIdentifier::user(token("not-a-real-token"), 1, user.id),
        // Wrong account for the user, wrong user for the token.
        RoomIdentifier::user(token(&user.pubsub_token), 2, user.id),
        RoomIdentifier::user(token(&user.pubsub_token), 1, world.users[1].id),
        // A user token without a user id is looked up as a contact token.
        RoomIdentifier::contact(token(&user.pubsub_token)),
        // A contact token with a user id is looked up as a user token.
        RoomIdentifier::user(token(&contact.pubsub_token), contact.account_id, user.id),
    ]
}

#[tokio::test]
async fn refusals_are_silent_by_default_and_the_socket_stays_usable() {
    let sim = start().await;
    let mut c = Client::connect(&sim).await;
    let refused = refused_identifiers(&sim);
    for id in &refused {
        c.subscribe(id).await;
    }
    c.expect_silence(SHORT).await;
    let stats = sim.stats();
    assert_eq!(stats.pending_subscriptions, refused.len());
    assert_eq!(stats.refused_silently_total, refused.len() as u64);
    // A silently refused identifier stays held: subscribing again gets nothing either.
    c.subscribe(&refused[0]).await;
    c.expect_silence(SHORT).await;
    assert_eq!(sim.stats().refused_silently_total, refused.len() as u64);
    // ...until it is unsubscribed.
    c.unsubscribe(&refused[0]).await;
    c.subscribe(&refused[0]).await;
    c.expect_silence(SHORT).await;
    assert_eq!(sim.stats().refused_silently_total, refused.len() as u64 + 1);
    let world = sim.world();
    c.subscribe_confirmed(&user(&world, 0)).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn the_switch_sends_reject_subscription_and_allows_retrying() {
    let sim = Sim::start(config().with_refusal(Refusal::Reject))
        .await
        .unwrap();
    let mut c = Client::connect(&sim).await;
    for id in refused_identifiers(&sim) {
        c.subscribe(&id).await;
        let reject = c.text(LONG).await;
        assert_eq!(
            reject,
            format!(
                r#"{{"identifier":"{}","type":"reject_subscription"}}"#,
                id.escaped()
            )
        );
        // Not held after a reject: the same identifier may be tried again.
        c.subscribe(&id).await;
        assert!(c.text(LONG).await.contains("reject_subscription"));
    }
    assert_eq!(sim.stats().pending_subscriptions, 0);
    // And the switch flips at run time.
    sim.faults().set_refusal(Refusal::Silent);
    c.subscribe(&refused_identifiers(&sim)[0]).await;
    c.expect_silence(SHORT).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn repeated_subscribe_unknown_commands_and_bad_json_get_no_answer() {
    let sim = start().await;
    let world = sim.world();
    let id = user(&world, 0);
    let mut c = Client::connect(&sim).await;
    c.subscribe_confirmed(&id).await;
    c.subscribe(&id).await;
    c.send("not json").await;
    c.send(r#"{"command":"dance","identifier":"{}"}"#).await;
    c.send(r#"{"command":"subscribe","identifier":"{\"channel\":\"ChatChannel\"}"}"#)
        .await;
    // update_presence for an identifier that is not subscribed.
    c.update_presence(&user(&world, 1)).await;
    c.expect_silence(SHORT).await;
    assert_eq!(sim.stats().subscriptions, 1);
    assert!(sim.presence_log().is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn several_subscriptions_on_one_socket_are_routed_by_identifier() {
    let sim = start().await;
    let world = sim.world();
    let a1 = user(&world, 0);
    let a2 = user(&world, 2);
    // The same token as a1, encoded differently: a second subscription, echoed byte for byte.
    let reordered = format!(
        r#"{{"account_id":"1","user_id":{},"pubsub_token":"{}","channel":"RoomChannel"}}"#,
        world.users[0].id, world.users[0].pubsub_token
    );
    let mut c = Client::connect(&sim).await;
    c.subscribe_confirmed(&a1).await;
    c.subscribe_confirmed(&a2).await;
    c.send(serde_json::json!({"command":"subscribe","identifier":reordered}).to_string())
        .await;
    assert_eq!(c.json(LONG).await["identifier"], reordered.as_str());
    c.json(LONG).await; // its presence
    sim.emit(EventSpec::new(1, EventKind::ConversationCreated))
        .await
        .unwrap();
    sim.emit(EventSpec::new(2, EventKind::ContactCreated))
        .await
        .unwrap();
    sim.wait_for_delivery(LONG).await.unwrap();
    let frames: Vec<Value> = c
        .drain(SHORT)
        .await
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect();
    let seen: Vec<(String, u64)> = frames
        .iter()
        .map(|f| {
            (
                f["identifier"].as_str().unwrap().to_owned(),
                f["message"]["data"]["account_id"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.contains(&(a1.wire().to_owned(), 1)));
    assert!(seen.contains(&(reordered.clone(), 1)));
    assert!(seen.contains(&(a2.wire().to_owned(), 2)));
    // Identifiers decode to the same key whatever their encoding.
    assert_eq!(IdentifierKey::parse(&reordered).unwrap(), *a1.key());
    sim.shutdown().await;
}

#[tokio::test]
async fn unsubscribe_stops_the_events_of_that_identifier_only() {
    let sim = start().await;
    let world = sim.world();
    let a = user(&world, 0);
    let b = user(&world, 1);
    let mut c = Client::connect(&sim).await;
    c.subscribe_confirmed(&a).await;
    c.subscribe_confirmed(&b).await;
    c.unsubscribe(&a).await;
    sim.wait_until("unsubscribed", LONG, |s| s.subscriptions == 1)
        .await
        .unwrap();
    let sent = sim
        .emit(EventSpec::new(1, EventKind::ContactUpdated))
        .await
        .unwrap();
    assert_eq!(sent.frames, 1);
    let frame = c.json(LONG).await;
    assert_eq!(frame["identifier"], b.wire());
    c.expect_silence(SHORT).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn update_presence_is_recorded_per_token_and_answered() {
    let sim = start().await;
    let world = sim.world();
    let user = user(&world, 0);
    let contact = world.contact_identifier(world.contacts[0].id).unwrap();
    let mut c = Client::connect(&sim).await;
    c.subscribe_confirmed(&user).await;
    c.subscribe_confirmed(&contact).await;
    for _ in 0..3 {
        c.update_presence(&user).await;
        let answer = c.json(LONG).await;
        assert_eq!(answer["identifier"], user.wire());
        assert_eq!(answer["message"]["event"], "presence.update");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    c.update_presence(&contact).await;
    let answer = c.json(LONG).await;
    assert!(answer["message"]["data"].get("contacts").is_none());
    let log = sim.presence_of(&world.users[0].pubsub_token);
    assert_eq!(log.len(), 3);
    assert!(log
        .iter()
        .all(|r| r.identifier == user.wire() && r.connection == log[0].connection));
    for pair in log.windows(2) {
        assert!(
            pair[1].at - pair[0].at >= Duration::from_millis(25),
            "{log:?}"
        );
    }
    assert_eq!(sim.presence_of(&world.contacts[0].pubsub_token).len(), 1);
    assert_eq!(sim.presence_log().len(), 4);
    assert_eq!(sim.stats().presence_updates_total, 4);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_client_close_is_answered_and_the_socket_forgotten() {
    let sim = start().await;
    let mut c = subscribed(&sim).await;
    sim.emit(EventSpec::new(1, EventKind::ContactCreated))
        .await
        .unwrap();
    c.text(LONG).await;
    c.close().await;
    let started = tokio::time::Instant::now();
    loop {
        match c.next(LONG).await {
            Got::Text(t) if t.contains("ping") => continue,
            Got::Close(_) | Got::Ended => break,
            other => panic!("{other:?}"),
        }
    }
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    let stats = sim.wait_for_sockets(0, LONG).await.unwrap();
    assert_eq!(stats.subscriptions, 0);
    sim.shutdown().await;
}
