//! The admin HTTP endpoint.

use voxsig_testkit::client as common;

use common::*;
use serde_json::Value;
use voxsig_sim::World;

#[tokio::test]
async fn read_endpoints_serve_world_stats_truth_and_presence() {
    let sim = start().await;
    let admin = sim.admin_url().unwrap();
    let world = sim.world();
    let mut c = Client::connect(&sim).await;
    let id = user(&world, 0);
    c.subscribe_confirmed(&id).await;
    c.update_presence(&id).await;
    c.json(LONG).await;

    assert_eq!(
        http(&admin, "GET", "/health", None).await,
        (200, "ok".to_owned())
    );
    let stats = get_json(&admin, "/stats").await;
    assert_eq!(
        (stats["sockets"].as_u64(), stats["subscriptions"].as_u64()),
        (Some(1), Some(1))
    );
    let served: World = serde_json::from_value(get_json(&admin, "/world").await).unwrap();
    assert_eq!(served, world);

    let (status, toml_text) = http(
        &admin,
        "GET",
        "/world/bridge-config?tokens=all&max_per_account=1&accounts=2",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(toml_text.matches("[[accounts]]").count(), 2, "{toml_text}");
    assert!(toml_text.contains("account_id = 2"));
    assert_eq!(
        http(&admin, "GET", "/world/bridge-config?tokens=some", None)
            .await
            .0,
        400
    );

    let presence = get_json(
        &admin,
        &format!("/presence?token={}", world.users[0].pubsub_token),
    )
    .await;
    assert_eq!(presence.as_array().unwrap().len(), 1);
    assert_eq!(presence[0]["identifier"], id.wire());

    let truth = get_json(&admin, "/ground-truth").await;
    assert_eq!(truth["total_events"], 2);
    let first = &truth["events"][0];
    assert_eq!(first["origin"], "reply");
    assert_eq!(first["data"]["account_id"], 1, "data is embedded as JSON");
    assert_eq!(first["deliveries"][0]["status"], "written");
    let paged = get_json(&admin, "/ground-truth?data=false&since=1&limit=5").await;
    assert_eq!(paged["events"].as_array().unwrap().len(), 1);
    assert_eq!(paged["events"][0]["data"], Value::Null);
    sim.shutdown().await;
}

#[tokio::test]
async fn emit_burst_and_run_over_http() {
    let sim = start().await;
    let admin = sim.admin_url().unwrap();
    let world = sim.world();
    let mut c = Client::connect(&sim).await;
    c.subscribe_confirmed(&user(&world, 0)).await;

    let (status, sent) = post_json(
        &admin,
        "/emit",
        r#"{"account_id":1,"event":"message.created"}"#,
    )
    .await;
    assert_eq!(status, 200, "{sent}");
    assert_eq!(sent["event"], "message.created");
    assert_eq!(sent["frames"], 1);
    assert_eq!(
        c.json(LONG).await["message"]["data"]["sim_seq"],
        sent["sim_seq"]
    );

    let (status, burst) = post_json(
        &admin,
        "/burst",
        r#"{"count":30,"accounts":[2],"events":["contact.created"]}"#,
    )
    .await;
    assert_eq!(status, 200, "{burst}");
    assert_eq!(burst["events"], 30);
    assert_eq!(burst["frames"], 0, "nobody of account 2 is subscribed");

    let (status, run) = post_json(
        &admin,
        "/run",
        r#"{"rate":200,"seconds":0.2,"wait":true,"accounts":[1]}"#,
    )
    .await;
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["stopped"], "duration");
    let (status, started) = post_json(&admin, "/run", r#"{"rate":10,"seconds":30}"#).await;
    assert_eq!((status, started["started"].as_bool()), (200, Some(true)));
    let (_, stopped) = post_json(&admin, "/runs/stop", "").await;
    assert_eq!(stopped["stopped"], 1);

    for (body, code) in [
        (r#"{"account_id":1,"event":"no.such.event"}"#, 400),
        (r#"{"account_id":99}"#, 404),
        (r#"{"account_id":1,"conversation_id":1}"#, 404),
    ] {
        let (status, err) = post_json(&admin, "/emit", body).await;
        assert_eq!(status, code, "{body}: {err}");
        assert!(err["error"].is_string());
    }
    assert_eq!(
        post_json(&admin, "/run", r#"{"rate":10,"seconds":0}"#)
            .await
            .0,
        400
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn every_fault_has_an_endpoint() {
    let sim = start().await;
    let admin = sim.admin_url().unwrap();
    let world = sim.world();
    let id = user(&world, 0);
    let mut c = Client::connect(&sim).await;

    let (status, v) = post_json(
        &admin,
        "/faults/malformed",
        r#"{"kind":"oversize","size":5000}"#,
    )
    .await;
    assert_eq!((status, v["affected"].as_u64()), (200, Some(1)));
    assert_eq!(c.text(LONG).await.len(), 5000);
    assert_eq!(
        post_json(&admin, "/faults/malformed", r#"{"kind":"binary"}"#)
            .await
            .0,
        200
    );
    assert!(matches!(c.next(LONG).await, Got::Binary(_)));

    assert_eq!(
        post_json(
            &admin,
            "/faults/refuse-subscriptions",
            r#"{"mode":"reject"}"#
        )
        .await
        .0,
        200
    );
    c.subscribe(&id).await;
    assert!(c.text(LONG).await.contains("reject_subscription"));
    assert_eq!(
        post_json(&admin, "/faults/refuse-subscriptions", r#"{"mode":"off"}"#)
            .await
            .0,
        200
    );
    assert_eq!(
        post_json(&admin, "/faults/refusal", r#"{"mode":"reject"}"#)
            .await
            .0,
        200
    );
    c.subscribe(&voxsig_protocol::RoomIdentifier::contact(
        voxsig_protocol::PubsubToken::new("x"),
    ))
    .await;
    assert!(c.text(LONG).await.contains("reject_subscription"));
    c.subscribe_confirmed(&id).await;

    assert_eq!(
        post_json(&admin, "/faults/pings", r#"{"enabled":false}"#)
            .await
            .0,
        200
    );
    assert_eq!(
        post_json(&admin, "/faults/ping-interval", r#"{"ms":50}"#)
            .await
            .0,
        200
    );
    assert!(matches!(c.next(SHORT).await, Got::Nothing));
    assert_eq!(
        post_json(&admin, "/faults/pings", r#"{"enabled":true}"#)
            .await
            .0,
        200
    );
    assert!(matches!(c.next(SHORT).await, Got::Text(t) if t.contains("ping")));

    let (status, v) = post_json(&admin, "/faults/slow-writer", r#"{"delay_ms":5}"#).await;
    assert_eq!((status, v["delay_ms"].as_f64()), (200, Some(5.0)));
    assert_eq!(
        post_json(&admin, "/faults/slow-writer", r#"{"delay_ms":0}"#)
            .await
            .0,
        200
    );

    let body = format!(r#"{{"token":"{}"}}"#, world.users[1].pubsub_token);
    let (status, v) = post_json(&admin, "/faults/rotate-token", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_ne!(v["new_token"], world.users[1].pubsub_token.as_str());
    assert_eq!(
        post_json(&admin, "/faults/rotate-token", r#"{"token":"nope"}"#)
            .await
            .0,
        404
    );

    assert_eq!(post_json(&admin, "/faults/listener/stop", "").await.0, 200);
    assert!(Client::connect_url(&sim.url(), true).await.is_err());
    assert_eq!(post_json(&admin, "/faults/listener/stop", "").await.0, 400);
    assert_eq!(post_json(&admin, "/faults/listener/start", "").await.0, 200);

    let (_, v) = post_json(
        &admin,
        "/faults/disconnect",
        r#"{"reason":"server_restart"}"#,
    )
    .await;
    assert_eq!(v["affected"], 1);
    assert!(c.text(LONG).await.contains(r#""reconnect":true"#));
    let mut d = Client::connect(&sim).await;
    let (_, v) = post_json(&admin, "/faults/drop-connections", "").await;
    assert!(v["affected"].as_u64().unwrap() >= 1);
    assert!(matches!(d.next(LONG).await, Got::Ended));
    sim.shutdown().await;
}
