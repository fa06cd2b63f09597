//! MQTT test support: a rumqttc subscriber, a TCP proxy that can cut the sink off, and the
//! brokers of the interop matrix besides mosquitto (nats-server's MQTT listener, rumqttd).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::brokers::{binary, free_port, Process};
use crate::records::{seq_of, Generator};
use crate::wait::eventually;

/// A PUBLISH as the subscriber received it.
#[derive(Debug, Clone, Default)]
pub struct Received {
    /// Its topic.
    pub topic: String,
    /// Its payload.
    pub payload: Bytes,
    /// Its retain flag.
    pub retain: bool,
    /// MQTT 5 only: user properties.
    pub user_properties: Vec<(String, String)>,
    /// MQTT 5 only: content type.
    pub content_type: Option<String>,
    /// MQTT 5 only: payload format indicator.
    pub payload_format: Option<u8>,
    /// MQTT 5 only: message expiry interval.
    pub message_expiry: Option<u32>,
}

/// What a subscriber's event loop saw, shared with the test.
#[derive(Clone, Default)]
struct Seen {
    received: Arc<Mutex<Vec<Received>>>,
    subacks: Arc<Mutex<u32>>,
    connacks: Arc<Mutex<u32>>,
    resumed: Arc<Mutex<u32>>,
}

impl Seen {
    /// Counts a CONNACK; true when the session is new and the filter must be subscribed again.
    fn connack(&self, session_present: bool) -> bool {
        *self.connacks.lock().unwrap() += 1;
        if session_present {
            // The session (and its subscription) was kept.
            *self.subacks.lock().unwrap() += 1;
            *self.resumed.lock().unwrap() += 1;
        }
        !session_present
    }

    fn suback(&self) {
        *self.subacks.lock().unwrap() += 1;
    }

    fn publish(&self, received: Received) {
        self.received.lock().unwrap().push(received);
    }
}

/// A rumqttc subscriber (MQTT 3.1.1, or 5 with [`Subscriber::start_v5`]) that (re)subscribes
/// whenever its session is new.
pub struct Subscriber {
    seen: Seen,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// An MQTT 3.1.1 subscriber to `filter` at QoS 1, as `id` (with `login`, if given).
    pub fn start(
        port: u16,
        id: &str,
        login: Option<(&str, &str)>,
        clean: bool,
        filter: &str,
    ) -> Self {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options
            .set_keep_alive(Duration::from_secs(5))
            .set_clean_session(clean)
            .set_max_packet_size(4 << 20, 4 << 20);
        if let Some((user, password)) = login {
            options.set_credentials(user, password);
        }
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        let seen = Seen::default();
        let (s, filter) = (seen.clone(), filter.to_owned());
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        if s.connack(ack.session_present) {
                            let _ = client.subscribe(filter.clone(), QoS::AtLeastOnce).await;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => s.suback(),
                    Ok(Event::Incoming(Packet::Publish(p))) => s.publish(Received {
                        topic: p.topic,
                        payload: p.payload,
                        retain: p.retain,
                        ..Received::default()
                    }),
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        });
        Subscriber { seen, task }
    }

    /// An MQTT 5 subscriber (it sees the publish properties).
    pub fn start_v5(port: u16, id: &str, clean: bool, filter: &str) -> Self {
        use rumqttc::v5::mqttbytes::v5::Packet as P5;
        use rumqttc::v5::{AsyncClient as C5, Event as E5, MqttOptions as O5};
        let mut options = O5::new(id, "127.0.0.1", port);
        options
            .set_keep_alive(Duration::from_secs(5))
            .set_clean_start(clean)
            .set_session_expiry_interval((!clean).then_some(3600))
            .set_max_packet_size(Some(4 << 20));
        let (client, mut eventloop) = C5::new(options, 16);
        let seen = Seen::default();
        let (s, filter) = (seen.clone(), filter.to_owned());
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(E5::Incoming(P5::ConnAck(ack))) => {
                        if s.connack(ack.session_present) {
                            let qos = rumqttc::v5::mqttbytes::QoS::AtLeastOnce;
                            let _ = client.subscribe(filter.clone(), qos).await;
                        }
                    }
                    Ok(E5::Incoming(P5::SubAck(_))) => s.suback(),
                    Ok(E5::Incoming(P5::Publish(p))) => {
                        let props = p.properties.clone().unwrap_or_default();
                        s.publish(Received {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload,
                            retain: p.retain,
                            user_properties: props.user_properties,
                            content_type: props.content_type,
                            payload_format: props.payload_format_indicator,
                            message_expiry: props.message_expiry_interval,
                        })
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        });
        Subscriber { seen, task }
    }

    /// Everything received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.seen.received.lock().unwrap().clone()
    }

    /// SUBACKs, plus CONNACKs that resumed a session (the subscription is in place either way).
    pub fn subacks(&self) -> u32 {
        *self.seen.subacks.lock().unwrap()
    }

    /// CONNACKs with `session_present`.
    pub fn resumed(&self) -> u32 {
        *self.seen.resumed.lock().unwrap()
    }

    /// CONNACKs received.
    pub fn connacks(&self) -> u32 {
        *self.seen.connacks.lock().unwrap()
    }

    /// Received generated records by seq (copies of each).
    pub fn by_seq(&self) -> BTreeMap<u64, Vec<Received>> {
        let mut map: BTreeMap<u64, Vec<Received>> = BTreeMap::new();
        for r in self.received() {
            if let Some(seq) = seq_of(&r.payload) {
                map.entry(seq).or_default().push(r);
            }
        }
        map
    }

    /// Waits until subscribed `n` times (SUBACK or resumed session).
    pub async fn wait_subscribed(&self, n: u32) {
        assert!(
            eventually(Duration::from_secs(10), || self.subacks() >= n).await,
            "subscriber did not subscribe"
        );
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Checks every seq in `seqs` but `allowed_missing` arrived at least once, each copy with the
/// generator's topic and payload; returns the number of duplicates.
pub fn check_complete(
    sub: &Subscriber,
    generator: &Generator,
    seqs: std::ops::Range<u64>,
    allowed_missing: usize,
) -> u64 {
    let by_seq = sub.by_seq();
    let missing: Vec<u64> = seqs.clone().filter(|s| !by_seq.contains_key(s)).collect();
    assert!(
        missing.len() <= allowed_missing,
        "{} of {seqs:?} missing, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let mut duplicates = 0;
    for (seq, copies) in &by_seq {
        if !seqs.contains(seq) {
            continue;
        }
        let expected = generator.record(*seq);
        for copy in copies {
            assert_eq!(copy.topic, expected.topic, "topic of seq {seq}");
            assert_eq!(copy.payload, expected.payload, "payload of seq {seq}");
        }
        duplicates += copies.len() as u64 - 1;
    }
    duplicates
}

/// A TCP proxy on a free loopback port in front of a broker: `cut` drops every connection
/// through it (no DISCONNECT: the broker publishes the client's will) and refuses new ones
/// until `open`.
pub struct Proxy {
    /// The port it listens on.
    pub port: u16,
    open: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy in front of `127.0.0.1:target`, open.
    pub async fn start(target: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> =
            Arc::new(Mutex::new(Vec::new()));
        let (o, c) = (open.clone(), connections.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !o.load(Ordering::SeqCst) {
                    continue; // dropped: connection closed at once
                }
                let connection = tokio::spawn(async move {
                    let target = SocketAddr::from(([127, 0, 0, 1], target));
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                let mut list = c.lock().unwrap();
                list.retain(|h| !h.is_finished());
                list.push(connection);
            }
        });
        Proxy {
            port,
            open,
            connections,
            task,
        }
    }

    /// `mqtt://` and its address.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    /// Lets connections through again.
    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

/// nats-server with JetStream (file store in its directory) and an MQTT listener (3.1.1), both
/// on free loopback ports. Never the machine's own instance on 4222.
pub struct Nats {
    /// The port of its MQTT listener.
    pub port: u16,
    process: Process,
    client_port: u16,
}

impl Nats {
    /// Starts nats-server and waits until its MQTT listener listens.
    pub fn start() -> Nats {
        let process = Process::new();
        let mut n = Nats {
            port: process.port,
            process,
            client_port: free_port(),
        };
        n.spawn();
        n
    }

    /// `mqtt://` and the address of its MQTT listener.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let dir = self.process.dir();
        let conf = format!(
            "server_name: voxsig_test_{client}\n\
             listen: 127.0.0.1:{client}\n\
             jetstream {{\n  store_dir: \"{store}\"\n}}\n\
             mqtt {{\n  listen: 127.0.0.1:{mqtt}\n}}\n",
            client = self.client_port,
            store = dir.join("js").display(),
            mqtt = self.port,
        );
        let path = dir.join("nats.conf");
        std::fs::write(&path, conf).expect("write nats.conf");
        let mut command = Command::new(binary("nats-server"));
        command.arg("-c").arg(&path);
        self.process.spawn(command);
    }

    /// SIGTERM and start again on the same ports and store (sessions and retained messages
    /// live in JetStream).
    pub fn restart(&mut self) {
        self.process.stop();
        self.spawn();
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// The environment variable that turns this test binary into a rumqttd process (see
/// `rumqttd_main` in `tests/mqtt_interop.rs`).
pub const RUMQTTD_PORT_ENV: &str = "VOXSIG_TEST_RUMQTTD_PORT";
/// The environment variable that gives that rumqttd process its MQTT 5 port.
pub const RUMQTTD_V5_PORT_ENV: &str = "VOXSIG_TEST_RUMQTTD_V5_PORT";

/// rumqttd in a process of its own (so it can be stopped and restarted): the test binary runs
/// itself with only the test that runs the broker and the ports in the environment.
/// rumqttd keeps sessions and retained messages in memory only. It listens for MQTT 3.1.1 on
/// `port` and MQTT 5 on `v5_port`.
pub struct Rumqttd {
    /// The port of its MQTT 3.1.1 listener.
    pub port: u16,
    /// The port of its MQTT 5 listener.
    pub v5_port: u16,
    process: Process,
    test_name: &'static str,
}

impl Rumqttd {
    /// `test_name` is the (ignored) test of the calling binary that runs the broker.
    pub fn start(test_name: &'static str) -> Rumqttd {
        let process = Process::new();
        let mut r = Rumqttd {
            port: process.port,
            v5_port: free_port(),
            process,
            test_name,
        };
        r.spawn();
        r
    }

    /// `mqtt://` and the address of its MQTT 3.1.1 listener.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let mut command = Command::new(std::env::current_exe().expect("test binary"));
        command
            .args([self.test_name, "--exact", "--ignored", "--nocapture"])
            .env(RUMQTTD_PORT_ENV, self.port.to_string())
            .env(RUMQTTD_V5_PORT_ENV, self.v5_port.to_string())
            .env("RUST_LOG", "off");
        self.process.spawn(command);
        self.process.wait_listening(self.v5_port);
    }

    /// SIGKILL and start again on the same ports (sessions and retained messages are lost).
    pub fn restart(&mut self) {
        self.process.kill();
        self.spawn();
    }
}

/// Subscribes a client with `options` to `filter` at QoS 1 and hands every PUBLISH to `each`;
/// returns once the broker acknowledged the subscription (within 10 s). The client keeps
/// reconnecting after an error (a broker restart) for as long as the runtime runs.
pub async fn on_publish(
    options: MqttOptions,
    filter: &str,
    mut each: impl FnMut(rumqttc::Publish) + Send + 'static,
) {
    let (client, mut events) = AsyncClient::new(options, 10_000);
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
    let mut subscribed_tx = Some(subscribed_tx);
    tokio::spawn(async move {
        let _client = client; // keeps the request channel open
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = subscribed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => each(p),
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed_rx)
        .await
        .expect("suback in time")
        .expect("suback");
}
