//! A session fed arbitrary frames and clock steps: no panic, and it never sends two
//! `subscribe` frames for the same identifier without an `unsubscribe` or a reject between them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use voxsig_protocol::{Happening, PubsubToken, RoomIdentifier, Session, SessionConfig};

fuzz_target!(|bytes: &[u8]| {
    let t0 = Instant::now();
    let mut session = Session::new(SessionConfig::default(), t0);
    let ids = [
        RoomIdentifier::user(PubsubToken::new("tok-a"), 1, 7),
        RoomIdentifier::contact(PubsubToken::new("tok-b")),
    ];
    for id in &ids {
        session.add(id.clone(), t0);
    }
    let mut now = t0;
    let mut held: HashMap<String, bool> = HashMap::new();
    // Each chunk: one byte of clock step (x100 ms), then a frame up to the next newline.
    for chunk in bytes.split(|b| *b == b'\n') {
        let Some((step, frame)) = chunk.split_first() else { continue };
        now += Duration::from_millis(u64::from(*step) * 100);
        session.handle_timeout(now);
        if let Ok(text) = std::str::from_utf8(frame) {
            let _ = session.handle_text(text, now);
        }
        while let Some(out) = session.poll_transmit() {
            for id in &ids {
                if out.contains(id.escaped()) {
                    let was = held.get(id.escaped()).copied().unwrap_or(false);
                    if out.starts_with(r#"{"command":"subscribe""#) {
                        assert!(!was, "double subscribe");
                        held.insert(id.escaped().to_owned(), true);
                    } else if out.starts_with(r#"{"command":"unsubscribe""#) {
                        held.insert(id.escaped().to_owned(), false);
                    }
                }
            }
        }
        while let Some(happening) = session.poll_happening() {
            // After a reject the server holds nothing: subscribing again is right.
            if let Happening::Rejected { sub, .. } = happening {
                if let Some(id) = session.identifier(sub) {
                    held.insert(id.escaped().to_owned(), false);
                }
            }
        }
        if matches!(session.state(), voxsig_protocol::session::ConnectionState::Closed(_)) {
            session.reconnected(now);
            held.clear();
        }
    }
});
