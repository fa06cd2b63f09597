//! The REST surface: auth, profile, conversations, message pages consistent with the events
//! broadcast, hostile inputs, and the faults (REST errors, outage, silent token rotation).

use voxsig_testkit::client as common;

use common::{get_json, http_with, post_json, rest, Client, Got, LONG, SHORT};
use serde_json::Value;
use std::time::{Duration, Instant, SystemTime};
use voxsig_protocol::EventKind;
use voxsig_sim::{
    ConversationStatus, Endpoint, EventSpec, FaultSpan, RestFault, RestFaultSpec, Selection, Sim,
};

fn token(sim: &Sim, user: usize) -> String {
    sim.world().users[user].api_access_token.clone()
}

#[tokio::test]
async fn profile_needs_the_api_token_and_shows_the_pubsub_token() {
    let sim = common::start().await;
    let api = sim.api_url();
    // Same origin as the cable.
    assert_eq!(format!("{api}/cable").replace("http", "ws"), sim.url());
    let world = sim.world();
    let user = &world.users[0];
    assert_ne!(user.api_access_token, user.pubsub_token);
    for bad in [
        None,
        Some("nope"),
        Some(user.pubsub_token.as_str()),
        Some(""),
    ] {
        let (status, _, body) = rest(&api, "/api/v1/profile", bad).await;
        assert_eq!(status, 401, "{bad:?}: {body}");
        assert_eq!(body["error"], "Invalid Access Token");
        // The token never comes back in an error.
        assert!(!body.to_string().contains(&user.pubsub_token));
    }
    let (status, head, p) = rest(&api, "/api/v1/profile", Some(&user.api_access_token)).await;
    assert_eq!(status, 200, "{p}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert_eq!(p["id"], user.id);
    assert_eq!(p["name"], user.name.as_str());
    assert_eq!(p["pubsub_token"], user.pubsub_token.as_str());
    assert_eq!(p["access_token"], user.api_access_token.as_str());
    assert!(p["email"].as_str().unwrap().contains('@'));
    let accounts = p["accounts"].as_array().unwrap();
    assert_eq!(accounts.len(), user.accounts.len());
    assert_eq!(accounts[0]["id"], user.accounts[0]);
    assert_eq!(accounts[0]["role"], "administrator");
    assert!(accounts[0]["name"].is_string());
    let stats = sim.stats().rest;
    assert_eq!((stats.profile, stats.unauthorized), (5, 4));
    sim.shutdown().await;
}

#[tokio::test]
async fn conversations_follow_status_and_updated_within() {
    let sim = common::start().await;
    let api = sim.api_url();
    let world = sim.world();
    let admin = token(&sim, 0);
    let list = |query: &'static str| {
        let api = api.clone();
        let admin = admin.clone();
        async move {
            let (status, _, body) = rest(
                &api,
                &format!("/api/v1/accounts/1/conversations{query}"),
                Some(&admin),
            )
            .await;
            assert_eq!(status, 200, "{query}: {body}");
            body
        }
    };
    let ids = |body: &Value| -> Vec<u64> {
        body["data"]["payload"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_u64().unwrap())
            .collect()
    };
    let in_account: Vec<u64> = world
        .contacts_of(1)
        .flat_map(|c| c.conversations.clone())
        .collect();
    // At the start: every conversation open, none updated lately.
    let all = list("").await;
    assert_eq!(all["data"]["meta"]["all_count"], in_account.len());
    assert_eq!(ids(&all).len(), in_account.len());
    assert!(ids(&list("?updated_within=60&status=all").await).is_empty());

    let (a, b) = (in_account[0], in_account[1]);
    let sent = sim
        .emit(EventSpec::new(1, EventKind::MessageCreated).in_conversation(a))
        .await
        .unwrap();
    sim.emit(EventSpec::new(1, EventKind::ConversationStatusChanged).in_conversation(b))
        .await
        .unwrap();
    let status_b = sim.conversation_status(b).unwrap();
    assert_ne!(status_b, ConversationStatus::Open);
    // The event said what the store holds.
    let truth = sim.ground_truth();
    let changed: Value = serde_json::from_str(&truth.events.last().unwrap().data).unwrap();
    assert_eq!(changed["status"], status_b.as_str());

    let recent = list("?updated_within=60&status=all").await;
    let mut got = ids(&recent);
    got.sort_unstable();
    let mut want = vec![a, b];
    want.sort_unstable();
    assert_eq!(got, want);
    // Without status: only open ones (b left that state).
    assert_eq!(ids(&list("?updated_within=60").await), vec![a]);
    let by_status = list(match status_b {
        ConversationStatus::Resolved => "?updated_within=60&status=resolved",
        ConversationStatus::Pending => "?updated_within=60&status=pending",
        _ => "?updated_within=60&status=snoozed",
    })
    .await;
    assert_eq!(ids(&by_status), vec![b]);
    // The conversation object: Chatwoot's partial, with the last message.
    let conv = recent["data"]["payload"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == a)
        .unwrap()
        .clone();
    assert_eq!(conv["account_id"], 1);
    assert_eq!(conv["inbox_id"], world.account(1).unwrap().inbox_id);
    assert_eq!(conv["status"], "open");
    assert!(conv["updated_at"].is_f64());
    assert_eq!(
        conv["messages"][0]["id"],
        sent_message_id(&sim, sent.sim_seq)
    );
    assert!(conv["meta"]["sender"]["id"].is_u64());

    // Another account's user: 401; an unknown account: 404.
    let other = world
        .users
        .iter()
        .find(|u| !u.accounts.contains(&1))
        .unwrap();
    let (status, _, _) = rest(
        &api,
        "/api/v1/accounts/1/conversations",
        Some(&other.api_access_token),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _, _) = rest(&api, "/api/v1/accounts/99/conversations", Some(&admin)).await;
    assert_eq!(status, 404);
    sim.shutdown().await;
}

/// The message id in the `message.created` event with this account-1 `sim_seq`.
fn sent_message_id(sim: &Sim, sim_seq: u64) -> u64 {
    let truth = sim.ground_truth();
    let event = truth.find(1, sim_seq).unwrap();
    let data: Value = serde_json::from_str(&event.data).unwrap();
    data["id"].as_u64().unwrap()
}

#[tokio::test]
async fn message_pages_match_the_broadcast_events() {
    let sim = common::start().await;
    let api = sim.api_url();
    let world = sim.world();
    let admin = token(&sim, 0);
    // A subscriber, so the events really go out.
    let mut c = common::subscribed(&sim).await;
    let conv = world.contacts_of(1).next().unwrap().conversations[0];
    let started = SystemTime::now();
    for _ in 0..230 {
        sim.emit(EventSpec::new(1, EventKind::MessageCreated).in_conversation(conv))
            .await
            .unwrap();
    }
    // Other traffic in between: other conversations and accounts, updates.
    sim.burst(200, &Selection::all()).await.unwrap();
    sim.wait_for_delivery(LONG).await.unwrap();
    let received: Vec<Value> = c
        .drain(SHORT)
        .await
        .iter()
        .map(|t| serde_json::from_str::<Value>(t).unwrap())
        .filter(|f| f["message"]["data"]["conversation_id"] == conv)
        .map(|f| f["message"].clone())
        .collect();
    let created: Vec<Value> = received
        .iter()
        .filter(|m| m["event"] == "message.created")
        .map(|m| m["data"].clone())
        .collect();
    assert!(created.len() >= 230, "{}", created.len());
    // A later message.updated (or first.reply.created) carries the message's current content.
    let latest_content = |id: &Value| {
        received
            .iter()
            .rev()
            .find(|m| &m["data"]["id"] == id)
            .map(|m| m["data"]["content"].clone())
    };

    let page = |query: String| {
        let (api, admin) = (api.clone(), admin.clone());
        async move {
            let (status, _, body) = rest(
                &api,
                &format!("/api/v1/accounts/1/conversations/{conv}/messages{query}"),
                Some(&admin),
            )
            .await;
            assert_eq!(status, 200, "{query}: {body}");
            body["payload"].as_array().unwrap().clone()
        }
    };
    // Catch up from the start: pages of 100, oldest first, until fewer come back.
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let got = page(format!("?after={after}")).await;
        assert!(got.len() <= 100);
        all.extend(got.iter().cloned());
        if got.len() < 100 {
            break;
        }
        after = got.last().unwrap()["id"].as_u64().unwrap();
    }
    assert_eq!(all.len(), created.len());
    for (rest_m, event) in all.iter().zip(&created) {
        assert_eq!(
            Some(rest_m["content"].clone()),
            latest_content(&event["id"])
        );
        for key in [
            "id",
            "conversation_id",
            "created_at",
            "inbox_id",
            "message_type",
            "private",
            "content_type",
            "status",
        ] {
            assert_eq!(rest_m[key], event[key], "{key}");
        }
        assert_eq!(rest_m["sender"]["id"], event["sender"]["id"]);
        assert!(rest_m.get("sim_seq").is_none());
    }
    let ids: Vec<u64> = all.iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first");
    // Updates name a stored message and say the same about it.
    let updates: Vec<&Value> = received
        .iter()
        .filter(|m| m["event"] != "message.created" && m["data"]["content"].is_string())
        .map(|m| &m["data"])
        .collect();
    assert!(
        !updates.is_empty(),
        "the burst updates messages of the conversation"
    );
    for update in &updates {
        let Some(stored) = all.iter().find(|m| m["id"] == update["id"]) else {
            // A conversation without messages yet: the pre-run message, not listed.
            assert!(update["id"].as_u64().unwrap() < 1_000_000, "{update}");
            continue;
        };
        for key in ["created_at", "message_type", "private", "conversation_id"] {
            assert_eq!(stored[key], update[key], "{key}");
        }
        assert_eq!(stored["sender"]["id"], update["sender"]["id"]);
    }
    // before: the 20 below, oldest first; neither: the latest 20.
    let before = page(format!("?before={}", ids[50])).await;
    let before_ids: Vec<u64> = before.iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert_eq!(before_ids, ids[30..50].to_vec());
    let latest = page(String::new()).await;
    assert_eq!(latest.len(), 20);
    assert_eq!(latest.last().unwrap()["id"], *ids.last().unwrap());
    let between = page(format!("?after={}&before={}", ids[10], ids[15])).await;
    assert_eq!(between.len(), 5);
    // The ground truth lists the same messages, and every account's.
    let truth = sim.messages_between(Some(1), started, SystemTime::now());
    let in_conv: Vec<u64> = truth
        .iter()
        .filter(|m| m.conversation_id == conv)
        .map(|m| m.id)
        .collect();
    assert_eq!(in_conv, ids);
    let everywhere = sim.messages(None);
    let events = sim
        .ground_truth()
        .broadcasts()
        .filter(|e| e.event == "message.created")
        .count();
    assert_eq!(everywhere.len(), events);
    assert!(everywhere.windows(2).all(|w| w[1].id == w[0].id + 1));
    assert_eq!(sim.stats().messages.created, events as u64);
    sim.shutdown().await;
}

#[tokio::test]
async fn hostile_requests_get_400_or_404_and_the_server_stays_up() {
    let sim = common::start().await;
    let api = sim.api_url();
    let admin = token(&sim, 0);
    let conv = sim.world().contacts_of(1).next().unwrap().conversations[0];
    let other_conv = sim.world().contacts_of(2).next().unwrap().conversations[0];
    let base = format!("/api/v1/accounts/1/conversations/{conv}/messages");
    let long = "9".repeat(5_000);
    let cases: Vec<(String, u16)> = vec![
        (format!("{base}?after=abc"), 400),
        (format!("{base}?after=-1"), 400),
        (format!("{base}?after=99999999999999999999999"), 400),
        (format!("{base}?before=1e9"), 400),
        (format!("{base}?after={long}"), 400),
        (format!("{base}?after=%ZZ"), 400),
        (format!("{base}?after=18446744073709551615"), 200),
        (
            "/api/v1/accounts/1/conversations?updated_within=-5".into(),
            400,
        ),
        (
            "/api/v1/accounts/1/conversations?updated_within=18446744073709551615".into(),
            200,
        ),
        ("/api/v1/accounts/1/conversations?status=bogus".into(), 400),
        ("/api/v1/accounts/1/conversations?page=0".into(), 200),
        (
            "/api/v1/accounts/1/conversations?page=18446744073709551615".into(),
            200,
        ),
        ("/api/v1/accounts/abc/conversations".into(), 404),
        (format!("/api/v1/accounts/{long}/conversations"), 404),
        ("/api/v1/accounts/1/conversations/abc/messages".into(), 404),
        (
            format!("/api/v1/accounts/1/conversations/{other_conv}/messages"),
            404,
        ),
        ("/api/v1/accounts/1/conversations/1/messages".into(), 404),
        ("/api/v2/nothing".into(), 404),
        ("/".into(), 404),
        ("/api/v1/profile/../../etc/passwd".into(), 404),
    ];
    for (path, want) in &cases {
        let (status, _, body) = rest(&api, path, Some(&admin)).await;
        assert_eq!(status, *want, "{}: {body}", &path[..path.len().min(120)]);
        if *want != 200 {
            assert!(body["error"].is_string(), "{body}");
        }
    }
    let (status, _, body) = http_with(&api, "POST", "/api/v1/profile", "", Some("{}")).await;
    assert_eq!(status, 404, "{body}");
    // Not HTTP at all, and a head that never ends: the connection closes, nothing else.
    let addr = sim.addr();
    let mut garbage = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    garbage
        .write_all(b"\x16\x03\x01\x00\x00\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(LONG, garbage.read_to_end(&mut buf)).await;
    let mut huge = tokio::net::TcpStream::connect(addr).await.unwrap();
    let header = format!(
        "GET /api/v1/profile HTTP/1.1\r\nX: {}\r\n",
        "a".repeat(40_000)
    );
    let _ = huge.write_all(header.as_bytes()).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(LONG, huge.read_to_end(&mut buf)).await;
    let (status, _, _) = rest(&api, "/api/v1/profile", Some(&admin)).await;
    assert_eq!(status, 200);
    let stats = sim.stats().rest;
    assert!(stats.bad_request >= 8 && stats.not_found >= 8, "{stats:?}");
    // The WebSocket still works on the same port.
    common::subscribed(&sim).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn a_keep_alive_connection_serves_several_requests() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let sim = common::start().await;
    let admin = token(&sim, 0);
    let tcp = tokio::net::TcpStream::connect(sim.addr()).await.unwrap();
    let mut tcp = BufReader::new(tcp);
    for path in [
        "/api/v1/profile",
        "/api/v1/accounts/1/conversations",
        "/api/v1/profile",
    ] {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: x\r\napi_access_token: {admin}\r\n\r\n");
        tcp.get_mut().write_all(request.as_bytes()).await.unwrap();
        let mut status = String::new();
        tcp.read_line(&mut status).await.unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{path}: {status}");
        let mut length = 0;
        loop {
            let mut line = String::new();
            tcp.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        tcp.read_exact(&mut body).await.unwrap();
        let _: Value = serde_json::from_slice(&body).unwrap();
    }
    assert_eq!(sim.stats().rest.profile, 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn rest_faults_throttle_fail_and_slow_requests() {
    let sim = common::start().await;
    let api = sim.api_url();
    let admin = token(&sim, 0);
    let faults = sim.faults();
    faults.rest_fault(RestFaultSpec {
        fault: RestFault::TooManyRequests {
            retry_after_secs: 3,
        },
        span: FaultSpan::Requests(2),
        endpoint: None,
    });
    for _ in 0..2 {
        let (status, head, body) = rest(&api, "/api/v1/profile", Some(&admin)).await;
        assert_eq!(status, 429, "{body}");
        assert!(head.contains("retry-after: 3"), "{head}");
    }
    assert_eq!(rest(&api, "/api/v1/profile", Some(&admin)).await.0, 200);
    // 500 on one endpoint only.
    faults.rest_fault(RestFaultSpec {
        fault: RestFault::ServerError,
        span: FaultSpan::For(Duration::from_secs(30)),
        endpoint: Some(Endpoint::Conversations),
    });
    let convs = "/api/v1/accounts/1/conversations";
    assert_eq!(rest(&api, convs, Some(&admin)).await.0, 500);
    assert_eq!(rest(&api, "/api/v1/profile", Some(&admin)).await.0, 200);
    faults.clear_rest_faults();
    assert_eq!(rest(&api, convs, Some(&admin)).await.0, 200);
    faults.rest_fault(RestFaultSpec {
        fault: RestFault::Slow { delay_ms: 300 },
        span: FaultSpan::Requests(1),
        endpoint: Some(Endpoint::Profile),
    });
    let t = Instant::now();
    assert_eq!(rest(&api, "/api/v1/profile", Some(&admin)).await.0, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
    let s = sim.stats().rest;
    assert_eq!((s.profile, s.conversations, s.messages), (5, 2, 0));
    assert_eq!((s.throttled, s.server_errors, s.slowed), (2, 1, 1));
    sim.shutdown().await;
}

#[tokio::test]
async fn an_outage_drops_sockets_and_refuses_upgrades_while_events_are_stored() {
    let sim = common::start().await;
    let mut c = common::subscribed(&sim).await;
    assert_eq!(sim.faults().outage(Duration::from_millis(1_500)), 1);
    assert!(sim.faults().in_outage());
    assert!(matches!(c.next(LONG).await, Got::Ended));
    let refused = Client::connect_url(&sim.url(), true).await;
    let err = refused.err().expect("upgrade refused");
    assert_eq!(err.status(), Some(503), "{err}");
    assert_eq!(sim.stats().upgrades_refused_total, 1);
    // Events keep coming and are stored; REST answers throughout.
    let before = sim.messages(None).len();
    sim.burst(50, &Selection::all().kinds([EventKind::MessageCreated]))
        .await
        .unwrap();
    assert_eq!(sim.messages(None).len(), before + 50);
    let (status, _, _) = rest(&sim.api_url(), "/api/v1/profile", Some(&token(&sim, 0))).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    assert!(!sim.faults().in_outage());
    common::subscribed(&sim).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn silent_rotation_leaves_the_old_token_unanswered_and_the_profile_tells_the_new_one() {
    // Even with `reject_subscription` for unknown tokens, the silent rotation answers nothing.
    let common::Rotating {
        sim,
        before,
        old_id,
        client: mut c,
    } = common::rotating().await;
    let user = &before.users[0];
    let new_token = sim
        .faults()
        .rotate_token_silently(&user.pubsub_token)
        .unwrap();
    sim.emit(EventSpec::new(1, EventKind::MessageCreated))
        .await
        .unwrap();
    // No frame at all: no event, no logout, no disconnect.
    c.expect_silence(SHORT).await;
    let mut fresh = Client::connect(&sim).await;
    fresh.subscribe(&old_id).await;
    fresh.expect_silence(SHORT).await;
    let (status, _, p) = rest(
        &sim.api_url(),
        "/api/v1/profile",
        Some(&user.api_access_token),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(p["pubsub_token"], new_token.as_str());
    let new_id = sim.world().user_identifier(user.id, 1).unwrap();
    fresh.subscribe_confirmed(&new_id).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn admin_api_drives_the_new_faults_and_exports_api_tokens() {
    let sim = common::start().await;
    let admin = sim.admin_url().unwrap();
    let api = sim.api_url();
    let user_token = token(&sim, 0);
    let (status, _) = post_json(
        &admin,
        "/faults/rest",
        r#"{"kind":"too_many_requests","retry_after_secs":1,"requests":1,"endpoint":"profile"}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        rest(&api, "/api/v1/profile", Some(&user_token)).await.0,
        429
    );
    let (status, _) = post_json(&admin, "/faults/rest", r#"{"kind":"server_error"}"#).await;
    assert_eq!(status, 400, "needs requests or seconds");
    let (status, _) = post_json(
        &admin,
        "/faults/rest",
        r#"{"kind":"slow","delay_ms":1,"seconds":5}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(post_json(&admin, "/faults/rest/clear", "{}").await.0, 200);
    assert_eq!(
        rest(&api, "/api/v1/profile", Some(&user_token)).await.0,
        200
    );

    let (status, v) = post_json(&admin, "/faults/outage", r#"{"seconds":30}"#).await;
    assert_eq!((status, v["affected"].as_u64()), (200, Some(0)));
    assert!(Client::connect_url(&sim.url(), true).await.is_err());
    assert_eq!(post_json(&admin, "/faults/outage/end", "{}").await.0, 200);
    Client::connect(&sim).await;
    assert_eq!(
        post_json(&admin, "/faults/outage", r#"{"seconds":-1}"#)
            .await
            .0,
        400
    );

    let old = sim.world().users[1].pubsub_token.clone();
    let body = format!(r#"{{"token":"{old}","silent":true}}"#);
    let (status, v) = post_json(&admin, "/faults/rotate-token", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        sim.world().users[1].pubsub_token,
        v["new_token"].as_str().unwrap()
    );

    sim.emit(EventSpec::new(2, EventKind::MessageCreated))
        .await
        .unwrap();
    let listed = get_json(&admin, "/messages?account=2").await;
    assert_eq!(listed["messages"].as_array().unwrap().len(), 1);
    assert_eq!(listed["messages"][0]["account_id"], 2);
    let stats = get_json(&admin, "/stats").await;
    assert_eq!(stats["messages"]["created"], 1);
    assert_eq!(stats["rest"]["profile"], 2);

    let (status, _, text) = http_with(
        &admin,
        "GET",
        "/world/bridge-config?api_tokens=true",
        "",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        text.contains(&format!("api_access_token = \"{user_token}\"")),
        "{text}"
    );
    let (_, _, plain) = http_with(&admin, "GET", "/world/bridge-config", "", None).await;
    assert!(!plain.contains("api_access_token"));
    sim.shutdown().await;
}
