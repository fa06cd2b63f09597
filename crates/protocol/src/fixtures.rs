//! The frames captured from a real Rails ActionCable 6.1 server (`shared/fixtures/`), for tests.

use std::collections::HashMap;

/// The captured frames by name (`welcome`, `ping`, `message.created`, ...).
pub(crate) fn captured() -> HashMap<String, String> {
    let text = include_str!("../tests/fixtures/actioncable-rails-6.1-frames.json");
    serde_json::from_str(text).expect("the fixture file is a JSON object of strings")
}
