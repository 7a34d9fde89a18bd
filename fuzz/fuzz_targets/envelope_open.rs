//! Any bytes from the network, opened as the broker opens a request frame, and as a
//! client opens a reply, and read as a PUB event: never a panic, never an unbounded
//! allocation.
#![no_main]

use jobcast_protocol::envelope::{peek_sender, Opener, Refusal};
use jobcast_protocol::message::decode_event;
use jobcast_protocol::Secret;
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_800_000_000_000;

fn key(name: &str) -> Option<&'static Secret> {
    static KEY: std::sync::OnceLock<Secret> = std::sync::OnceLock::new();
    matches!(name, "w1" | "admin" | "broker").then(|| KEY.get_or_init(|| Secret::new("fuzz-secret")))
}

fuzz_target!(|bytes: &[u8]| {
    let _ = Opener::new(1 << 20, 30_000).open(bytes, NOW, key);
    let _ = Opener::new(64 << 20, 30_000)
        .receiving_as("w1")
        .open(bytes, NOW, key);
    let _ = decode_event(bytes);
    let _ = peek_sender(bytes);
    let _ = Refusal::decode(bytes);
});
