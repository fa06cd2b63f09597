//! The hot path on realistic frames: events/s of `ServerFrame::parse`, and its ratio to one
//! `serde_json::from_slice::<IgnoredAny>` pass over the same bytes, measured in the same run.
//!
//! `cargo bench -p voxsig-protocol` prints criterion's figures, then a markdown table of ratios
//! measured by interleaving both decoders (the machine is noisy; a ratio is robust to that).

use criterion::{Criterion, Throughput};
use serde::de::IgnoredAny;
use std::hint::black_box;
use std::time::{Duration, Instant};
use voxsig_protocol::ServerFrame;

/// The captured frames, and a ~2 KB message.created built from the captured one.
fn frames() -> Vec<(&'static str, String)> {
    let text = include_str!("../tests/fixtures/actioncable-rails-6.1-frames.json");
    let captured: std::collections::HashMap<String, String> =
        serde_json::from_str(text).expect("fixture");
    let mut message: serde_json::Value =
        serde_json::from_str(&captured["message.created"]).expect("fixture frame");
    // Enlarge to a typical agent reply: longer content and the conversation's usual fields.
    let data = &mut message["message"]["data"];
    data["content"] =
        "Thanks for reaching out! I have checked your order and the refund is on its \
        way; it usually takes 3-5 business days to appear on your statement. Anything else?"
            .repeat(2)
            .into();
    data["processed_message_content"] = data["content"].clone();
    data["conversation"]["additional_attributes"] = serde_json::json!({
        "browser": {"device_name": "Unknown", "browser_name": "Chrome", "platform_name": "Linux",
                    "browser_version": "124.0.0.0", "platform_version": "0"},
        "referer": "https://voxsig.example/pricing",
        "initiated_at": {"timestamp": "2026-11-21 22:27:09 UTC"}
    });
    data["conversation"]["labels"] = serde_json::json!(["billing", "refund", "priority"]);
    let message = serde_json::to_string(&message).expect("serialise");
    vec![
        ("message.created", message),
        ("presence.update", captured["presence.update"].clone()),
        (
            "conversation.typing_on",
            captured["conversation.typing_on"].clone(),
        ),
    ]
}

fn parse(frame: &str) -> bool {
    matches!(
        ServerFrame::parse(black_box(frame)),
        Ok(ServerFrame::Event(_))
    )
}

fn ignored_any(frame: &str) -> bool {
    serde_json::from_slice::<IgnoredAny>(black_box(frame.as_bytes())).is_ok()
}

fn criterion_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("hot_path");
    group.throughput(Throughput::Elements(1));
    for (name, frame) in frames() {
        group.bench_function(format!("{name} ({} B)/voxsig parse", frame.len()), |b| {
            b.iter(|| parse(&frame))
        });
        group.bench_function(
            format!("{name} ({} B)/serde IgnoredAny", frame.len()),
            |b| b.iter(|| ignored_any(&frame)),
        );
    }
    group.finish();
}

/// Time of `iterations` calls.
fn time(iterations: u32, f: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    for _ in 0..iterations {
        black_box(f());
    }
    start.elapsed()
}

/// Interleaves the two decoders in short rounds and reports medians, so drift in machine load
/// hits both alike.
fn ratio_table() {
    println!("\n| frame | bytes | voxsig parse (events/s) | serde IgnoredAny (passes/s) | ratio |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (name, frame) in frames() {
        assert!(parse(&frame) && ignored_any(&frame), "{name} must decode");
        let iterations = 2_000;
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for _ in 0..41 {
            ours.push(time(iterations, || parse(&frame)));
            theirs.push(time(iterations, || ignored_any(&frame)));
        }
        ours.sort();
        theirs.sort();
        let rate = |d: Duration| f64::from(iterations) / d.as_secs_f64();
        let (ours, theirs) = (rate(ours[20]), rate(theirs[20]));
        println!(
            "| {name} | {} | {ours:.0} | {theirs:.0} | {:.2} |",
            frame.len(),
            ours / theirs
        );
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    criterion_benches(&mut c);
    c.final_summary();
    if std::env::args().any(|a| a == "--bench") {
        ratio_table();
    }
}
