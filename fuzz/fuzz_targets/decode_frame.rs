//! Any bytes through the frame decoder and the identifier parser: no panic, and an accepted
//! frame's `data` is valid JSON that stands in the frame unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voxsig_protocol::{scan, RoomIdentifier, ServerFrame};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(ServerFrame::Event(event)) = ServerFrame::parse_bytes(bytes) {
        assert!(scan::validate(event.data).is_ok());
        let text = std::str::from_utf8(bytes).unwrap();
        assert!(text.contains(event.data));
        let _ = RoomIdentifier::parse(&event.identifier.decode());
    }
});
