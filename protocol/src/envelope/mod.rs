//! The sealed envelope around every request and reply (protocol version 2).
//!
//! ```text
//! Frame   = { from: str, nonce: bin(24), sealed: bin }
//! sealed  = XChaCha20-Poly1305(key(from → to), nonce, Payload bytes, aad = "jobcast/2")
//! Payload = { v: u16, from: str, ts: u64, nonce: u64, body: Body }
//! key(from → to) = HKDF-SHA256(salt = "jobcast/2", ikm = secret, info = from ‖ 0x00 ‖ to)
//! ```
//!
//! Every peer shares one secret with the broker; each direction gets its own key derived
//! from it, so a reply can never be passed off as a request. The 24-byte AEAD nonce is
//! unique per message without any state kept across restarts: 16 random bytes per process
//! and a message counter (see [`seal`]); XChaCha20's nonce is long enough for random
//! nonces too, which other implementations may use. The outer `from` only selects the
//! key and must equal the sealed inner one. `docs/PROTOCOL.md` has the whole construction
//! and test vectors.

mod open;
mod refusal;

pub use open::{Opener, Rejection};
pub use refusal::Refusal;

use crate::aead;
use crate::message::Body;
use crate::replay::ReplayGuard;
pub use crate::secret::{check_connection_password, connection_password, Secret};
use crate::PROTOCOL_VERSION;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The name the broker seals its replies with and that peers seal requests to.
pub const BROKER: &str = "broker";
/// Bytes of the AEAD nonce.
pub const AEAD_NONCE_LEN: usize = 24;
/// The AEAD's associated data: it names the protocol version, so a sealed payload of
/// one version is useless in another (the key derivation's salt does the same).
const AAD: &[u8] = b"jobcast/2";

#[derive(Serialize)]
struct FrameOut<'a> {
    from: &'a str,
    #[serde(with = "serde_bytes")]
    nonce: &'a [u8],
    #[serde(with = "serde_bytes")]
    sealed: &'a [u8],
}

/// A frame of this version (`nonce`, `sealed`) or of version 1 (`payload`, `mac`), which
/// is recognised only to be refused as such.
#[derive(Deserialize)]
struct FrameIn<'a> {
    from: &'a str,
    #[serde(default, with = "serde_bytes", borrow)]
    nonce: Option<&'a [u8]>,
    #[serde(default, with = "serde_bytes", borrow)]
    sealed: Option<&'a [u8]>,
    #[serde(default, with = "serde_bytes", borrow)]
    payload: Option<&'a [u8]>,
    #[serde(default, with = "serde_bytes", borrow)]
    mac: Option<&'a [u8]>,
}

#[derive(Serialize)]
struct PayloadOut<'a, B> {
    v: u16,
    from: &'a str,
    ts: u64,
    nonce: u64,
    body: &'a B,
}

/// The header alone, decoded before the body so that a newer peer's unknown message
/// types are reported as a version mismatch rather than as garbage.
#[derive(Deserialize)]
struct PayloadHeader {
    v: u16,
}

#[derive(Deserialize)]
struct PayloadIn {
    from: String,
    ts: u64,
    nonce: u64,
    body: Body,
}

/// A payload whose request this side cannot read (a newer peer's), read as far as its id.
#[derive(Deserialize)]
struct PayloadOfUnknownRequest {
    from: String,
    ts: u64,
    nonce: u64,
    body: BodyOfUnknownRequest,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum BodyOfUnknownRequest {
    Request {
        id: u64,
        #[allow(dead_code)]
        request: serde::de::IgnoredAny,
    },
}

/// Seals `body` from `from` to `to` with fresh nonces.
pub fn seal(from: &str, to: &str, secret: &Secret, body: &Body, now_ms: u64) -> Vec<u8> {
    let (aead_nonce, nonce) = MessageNonces::next();
    seal_with_nonce(from, to, secret, body, now_ms, nonce, aead_nonce)
}

/// [`seal`] for any body that serializes as a [`Body`] does: a peer's own message types,
/// or one this version does not know (to test how it is answered).
pub fn seal_any<B: Serialize>(
    from: &str,
    to: &str,
    secret: &Secret,
    body: &B,
    now_ms: u64,
) -> Vec<u8> {
    let (aead_nonce, nonce) = MessageNonces::next();
    seal_with_nonce(from, to, secret, body, now_ms, nonce, aead_nonce)
}

/// [`seal`] with a chosen replay nonce (tests that replay or reuse one).
pub fn seal_with_replay_nonce(
    from: &str,
    to: &str,
    secret: &Secret,
    body: &Body,
    now_ms: u64,
    nonce: u64,
) -> Vec<u8> {
    let (aead_nonce, _) = MessageNonces::next();
    seal_with_nonce(from, to, secret, body, now_ms, nonce, aead_nonce)
}

/// Nonces for sealing without a system call per message: 16 random bytes drawn once per
/// process, then a counter. The AEAD nonce is the prefix followed by the counter, unique
/// within the process by the counter and across processes by the prefix (two processes
/// share one with probability 2^-128). The replay nonce is the prefix's first 8 bytes
/// plus the counter: unique within the process, and as unlikely to meet another
/// process's inside the skew window as two random numbers.
struct MessageNonces {
    prefix: [u8; 16],
    counter: std::sync::atomic::AtomicU64,
}

impl MessageNonces {
    fn next() -> ([u8; AEAD_NONCE_LEN], u64) {
        static SOURCE: std::sync::OnceLock<MessageNonces> = std::sync::OnceLock::new();
        let source = SOURCE.get_or_init(|| {
            let mut prefix = [0u8; 16];
            fill_random(&mut prefix);
            MessageNonces {
                prefix,
                counter: std::sync::atomic::AtomicU64::new(0),
            }
        });
        let n = source
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut aead = [0u8; AEAD_NONCE_LEN];
        aead[..16].copy_from_slice(&source.prefix);
        aead[16..].copy_from_slice(&n.to_le_bytes());
        let mut base = [0u8; 8];
        base.copy_from_slice(&source.prefix[..8]);
        (aead, u64::from_le_bytes(base).wrapping_add(n))
    }
}

/// [`seal`] with both nonces given: for test vectors only. Never reuse a nonce.
pub fn seal_with_nonce<B: Serialize>(
    from: &str,
    to: &str,
    secret: &Secret,
    body: &B,
    now_ms: u64,
    nonce: u64,
    aead_nonce: [u8; AEAD_NONCE_LEN],
) -> Vec<u8> {
    let payload = rmp_serde::to_vec_named(&PayloadOut {
        v: PROTOCOL_VERSION,
        from,
        ts: now_ms,
        nonce,
        body,
    })
    .unwrap_or_default();
    let sealed = aead::seal(&secret.message_key(from, to), &aead_nonce, AAD, &payload);
    rmp_serde::to_vec_named(&FrameOut {
        from,
        nonce: &aead_nonce,
        sealed: &sealed,
    })
    .unwrap_or_default()
}

/// Fills `bytes` from the operating system's random source.
fn fill_random(bytes: &mut [u8]) {
    // getrandom only fails on platforms without an entropy source; fall back to the time
    // mixed with an address rather than panicking (such a platform is not supported).
    if getrandom::fill(bytes).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mixed = (t ^ (bytes.as_ptr() as u128)).to_le_bytes();
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = mixed[i % mixed.len()];
        }
    }
}

/// A random nonce from the operating system.
pub fn random_nonce() -> u64 {
    let mut bytes = [0u8; 8];
    fill_random(&mut bytes);
    u64::from_le_bytes(bytes)
}

/// Seals bodies from one sender to one receiver.
#[derive(Debug, Clone)]
pub struct Sealer {
    pub from: String,
    pub to: String,
    pub secret: Secret,
}

impl Sealer {
    pub fn new(from: impl Into<String>, to: impl Into<String>, secret: Secret) -> Self {
        Sealer {
            from: from.into(),
            to: to.into(),
            secret,
        }
    }

    pub fn seal(&self, body: &Body, now_ms: u64) -> Vec<u8> {
        seal(&self.from, &self.to, &self.secret, body, now_ms)
    }
}

/// An authenticated, fresh, first-seen message.
#[derive(Debug, Clone, PartialEq)]
pub struct Opened {
    pub from: String,
    pub ts_ms: u64,
    pub nonce: u64,
    pub body: Body,
}

/// The floor to keep for a sender after accepting its frame sealed at `ts_ms`, when the
/// receiver's clock read `now_ms`: `None` when the frame was not sealed ahead of the clock
/// (a restart's own start time already refuses it), else the next whole second after its
/// timestamp. Rounding up means a sender whose clock runs a little ahead raises its floor
/// (a store write) about once a second, not with every frame.
pub fn floor_after(ts_ms: u64, now_ms: u64) -> Option<u64> {
    (ts_ms > now_ms).then(|| (ts_ms / 1_000 + 1) * 1_000)
}

/// The sender name of a frame, before any check, or `None` if it is not a frame. Used to
/// answer a version mismatch to the right peer.
pub fn peek_sender(bytes: &[u8]) -> Option<String> {
    rmp_serde::from_slice::<FrameIn>(bytes)
        .ok()
        .map(|f| f.from.to_string())
}
