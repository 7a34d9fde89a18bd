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

/// Why a frame was refused. `reason()` is the counter name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Rejection {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    Oversized { len: usize, max: usize },
    #[error("undecodable frame: {0}")]
    Undecodable(String),
    #[error("unknown sender {0:?}")]
    UnknownSender(String),
    #[error("frame from {0:?} does not open with its key (wrong secret, or tampered)")]
    BadMac(String),
    #[error("{from:?} speaks protocol version {version}, this side speaks {PROTOCOL_VERSION}")]
    UnsupportedVersion { from: String, version: u16 },
    #[error("timestamp from {from:?} is {skew_ms} ms away from this clock")]
    ClockSkew { from: String, skew_ms: u64 },
    #[error("replayed nonce from {0:?}")]
    Replay(String),
    #[error(
        "frame from {from:?} was sealed {early_ms} ms before this side started; send it again"
    )]
    BeforeStart { from: String, early_ms: u64 },
    /// A frame that opened, from a known sender, whose request this side does not know (a
    /// peer of a newer version): answered `bad_request` under request `id`.
    #[error("request {id} from {from:?} is not one this side knows: {detail}")]
    UnknownRequest {
        from: String,
        id: u64,
        detail: String,
    },
}

impl Rejection {
    /// Every reason [`Self::reason`] gives, for counters that start at zero.
    pub const REASONS: [&'static str; 9] = [
        "oversized",
        "undecodable",
        "unknown_sender",
        "bad_mac",
        "unsupported_version",
        "clock_skew",
        "replay",
        "before_start",
        "unknown_request",
    ];

    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Oversized { .. } => "oversized",
            Rejection::Undecodable(_) => "undecodable",
            Rejection::UnknownSender(_) => "unknown_sender",
            Rejection::BadMac(_) => "bad_mac",
            Rejection::UnsupportedVersion { .. } => "unsupported_version",
            Rejection::ClockSkew { .. } => "clock_skew",
            Rejection::Replay(_) => "replay",
            Rejection::BeforeStart { .. } => "before_start",
            Rejection::UnknownRequest { .. } => "unknown_request",
        }
    }
}

/// Checks frames: size, decoding, decryption, version, clock skew, start time, replay —
/// in that order.
#[derive(Debug)]
pub struct Opener {
    /// Who this side is: frames are opened with the key for (sender → this).
    me: String,
    max_frame_bytes: usize,
    max_skew_ms: u64,
    not_before_ms: u64,
    /// Per sender, the first timestamp this side may accept: past every frame of that
    /// sender an earlier process accepted (see [`Opener::sender_floors`]).
    sender_floors: std::collections::HashMap<String, u64>,
    replay: ReplayGuard,
}

/// Sender names longer than this are cut in errors (they come from the network).
const MAX_NAME_IN_ERRORS: usize = 64;

fn shorten(name: &str) -> String {
    name.chars().take(MAX_NAME_IN_ERRORS).collect()
}

impl Opener {
    pub fn new(max_frame_bytes: usize, max_skew_ms: u64) -> Self {
        Opener {
            me: BROKER.to_string(),
            max_frame_bytes,
            max_skew_ms,
            not_before_ms: 0,
            sender_floors: Default::default(),
            replay: ReplayGuard::new(max_skew_ms),
        }
    }

    /// Opens frames sealed to `name` (the broker is the default receiver).
    pub fn receiving_as(mut self, name: impl Into<String>) -> Self {
        self.me = name.into();
        self
    }

    /// Refuses frames sealed before `started_ms`. The replay guard's memory starts empty
    /// with the process, so without this a frame captured before a restart would be
    /// accepted again after it, within the skew window.
    pub fn not_before(mut self, started_ms: u64) -> Self {
        self.not_before_ms = started_ms;
        self
    }

    /// Refuses, per sender, frames sealed before that sender's floor. The start time alone
    /// does not cover a frame sealed *ahead* of this side's clock (inside the skew window)
    /// and accepted before a restart: its timestamp is still after the new start. The
    /// receiver keeps, durably, a floor past each such frame ([`floor_after`]) and hands
    /// the floors it kept to the next process.
    pub fn sender_floors(mut self, floors: impl IntoIterator<Item = (String, u64)>) -> Self {
        self.sender_floors = floors.into_iter().collect();
        self
    }

    /// The receiver's wall clock stepped by `step_ms` (negative: back), and so, on a host
    /// kept in step by NTP, did its peers': the start time and the senders' floors move
    /// with it, or every peer would be refused as "before start" for the length of a step
    /// back. (What this gives up: a frame sealed about `-step_ms` before the step, which
    /// the replay memory has forgotten, could be taken again within the skew window right
    /// after it.)
    pub fn clock_stepped(&mut self, step_ms: i64) {
        let shift = |t: u64| t.saturating_add_signed(step_ms);
        self.not_before_ms = shift(self.not_before_ms);
        for floor in self.sender_floors.values_mut() {
            *floor = shift(*floor);
        }
        self.replay.clock_stepped(step_ms);
    }

    fn not_before_for(&self, sender: &str) -> u64 {
        self.sender_floors
            .get(sender)
            .map_or(self.not_before_ms, |floor| (*floor).max(self.not_before_ms))
    }

    pub fn open<'k>(
        &mut self,
        bytes: &[u8],
        now_ms: u64,
        key_for: impl Fn(&str) -> Option<&'k Secret>,
    ) -> Result<Opened, Rejection> {
        self.open_with_either(bytes, now_ms, |name| (key_for(name), None))
            .map(|(opened, _)| opened)
    }

    /// Like [`Opener::open`], for a sender that may hold either of two secrets (a key
    /// being rotated: the new one and the one it replaces). Also says whether the second
    /// opened the frame, so that the answer is sealed with the secret the peer holds.
    pub fn open_with_either<'k>(
        &mut self,
        bytes: &[u8],
        now_ms: u64,
        keys_for: impl Fn(&str) -> (Option<&'k Secret>, Option<&'k Secret>),
    ) -> Result<(Opened, bool), Rejection> {
        if bytes.len() > self.max_frame_bytes {
            return Err(Rejection::Oversized {
                len: bytes.len(),
                max: self.max_frame_bytes,
            });
        }
        let frame: FrameIn = rmp_serde::from_slice(bytes)
            .map_err(|e| Rejection::Undecodable(format!("envelope: {e}")))?;
        let (nonce, sealed) = match (frame.nonce, frame.sealed) {
            (Some(nonce), Some(sealed)) if nonce.len() == AEAD_NONCE_LEN => (nonce, sealed),
            (Some(_), Some(_)) => {
                return Err(Rejection::Undecodable(format!(
                    "the nonce must be {AEAD_NONCE_LEN} bytes"
                )))
            }
            // Version 1 signed a clear payload; say so rather than "garbage".
            _ if frame.payload.is_some() && frame.mac.is_some() => {
                return Err(Rejection::UnsupportedVersion {
                    from: shorten(frame.from),
                    version: 1,
                })
            }
            _ => return Err(Rejection::Undecodable("no sealed payload".into())),
        };
        let (first, second) = keys_for(frame.from);
        if first.is_none() && second.is_none() {
            return Err(Rejection::UnknownSender(shorten(frame.from)));
        }
        let mut aead_nonce = [0u8; AEAD_NONCE_LEN];
        aead_nonce.copy_from_slice(nonce);
        let open_with = |secret: &Secret| {
            let key = secret.message_key(frame.from, &self.me);
            aead::open(&key, &aead_nonce, AAD, sealed)
        };
        let (payload, by_second) = match first.and_then(open_with) {
            Some(payload) => (payload, false),
            None => (
                second
                    .and_then(open_with)
                    .ok_or_else(|| Rejection::BadMac(shorten(frame.from)))?,
                true,
            ),
        };

        let header: PayloadHeader = rmp_serde::from_slice(&payload)
            .map_err(|e| Rejection::Undecodable(format!("payload header: {e}")))?;
        if header.v != PROTOCOL_VERSION {
            return Err(Rejection::UnsupportedVersion {
                from: shorten(frame.from),
                version: header.v,
            });
        }
        let payload: PayloadIn = match rmp_serde::from_slice(&payload) {
            Ok(payload) => payload,
            Err(e) => {
                // Readable as far as a request's id: a peer asks for what this side does
                // not know. It is answered (after the same checks), not dropped.
                let unknown: PayloadOfUnknownRequest = rmp_serde::from_slice(&payload)
                    .map_err(|_| Rejection::Undecodable(format!("payload: {e}")))?;
                self.check_sender_time_and_nonce(
                    frame.from,
                    &unknown.from,
                    unknown.ts,
                    unknown.nonce,
                    now_ms,
                )?;
                let BodyOfUnknownRequest::Request { id, .. } = unknown.body;
                return Err(Rejection::UnknownRequest {
                    from: unknown.from,
                    id,
                    detail: e.to_string(),
                });
            }
        };
        self.check_sender_time_and_nonce(
            frame.from,
            &payload.from,
            payload.ts,
            payload.nonce,
            now_ms,
        )?;
        Ok((
            Opened {
                from: payload.from,
                ts_ms: payload.ts,
                nonce: payload.nonce,
                body: payload.body,
            },
            by_second,
        ))
    }

    /// What every opened frame passes after its seal: the signed sender is the envelope's,
    /// its clock is near this one, it was sealed after this side started, and its nonce
    /// is new (recorded).
    fn check_sender_time_and_nonce(
        &mut self,
        envelope_from: &str,
        from: &str,
        ts: u64,
        nonce: u64,
        now_ms: u64,
    ) -> Result<(), Rejection> {
        if from != envelope_from {
            return Err(Rejection::Undecodable(
                "signed sender differs from the envelope's".to_string(),
            ));
        }
        let skew_ms = ts.abs_diff(now_ms);
        if skew_ms > self.max_skew_ms {
            return Err(Rejection::ClockSkew {
                from: from.to_string(),
                skew_ms,
            });
        }
        let not_before_ms = self.not_before_for(from);
        if ts < not_before_ms {
            return Err(Rejection::BeforeStart {
                from: from.to_string(),
                early_ms: not_before_ms - ts,
            });
        }
        if !self.replay.check_and_record(from, ts, nonce, now_ms) {
            return Err(Rejection::Replay(from.to_string()));
        }
        Ok(())
    }
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

/// The broker's answer to a frame it refused before it could trust it. Unsigned, and
/// carrying only the reason, so that a peer with a wrong key or clock learns why instead
/// of timing out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub refused: String,
    pub detail: String,
}

impl Refusal {
    pub fn for_rejection(rejection: &Rejection) -> Option<Refusal> {
        // Garbage, oversized frames and replays get no answer: answering them would
        // only help a flood.
        match rejection {
            Rejection::UnknownSender(_)
            | Rejection::BadMac(_)
            | Rejection::UnsupportedVersion { .. }
            | Rejection::ClockSkew { .. }
            | Rejection::BeforeStart { .. } => Some(Refusal {
                refused: rejection.reason().to_string(),
                detail: rejection.to_string(),
            }),
            _ => None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Refusal> {
        rmp_serde::from_slice(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a peer of a newer version might send: a request this side has no variant for.
    #[derive(Serialize)]
    #[serde(rename_all = "snake_case")]
    enum NewerBody {
        Request { id: u64, request: NewerRequest },
    }

    #[derive(Serialize)]
    #[serde(rename_all = "snake_case")]
    enum NewerRequest {
        Teleport { to: String },
    }

    fn sealed_by_newer_peer(secret: &Secret, id: u64, now_ms: u64, nonce: u64) -> Vec<u8> {
        let body = NewerBody::Request {
            id,
            request: NewerRequest::Teleport { to: "mars".into() },
        };
        let (aead_nonce, _) = MessageNonces::next();
        seal_with_nonce("w1", BROKER, secret, &body, now_ms, nonce, aead_nonce)
    }

    #[test]
    fn an_unknown_request_in_a_frame_that_opens_is_named_with_its_id_and_checked_like_any() {
        let secret = Secret::new("a-secret-of-sixteen-bytes");
        let mut opener = Opener::new(1 << 20, 30_000);
        let now = 1_000_000;
        let frame = sealed_by_newer_peer(&secret, 42, now, 7);
        match opener.open(&frame, now, |_| Some(&secret)) {
            Err(Rejection::UnknownRequest { from, id, detail }) => {
                assert_eq!((from.as_str(), id), ("w1", 42));
                assert!(detail.contains("teleport"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        // The same frame again is a replay: the nonce was recorded.
        assert!(matches!(
            opener.open(&frame, now, |_| Some(&secret)),
            Err(Rejection::Replay(_))
        ));
        // Without the right key it is what any such frame is.
        let other = Secret::new("another-secret-of-16-bytes");
        let frame = sealed_by_newer_peer(&secret, 43, now, 8);
        assert!(matches!(
            opener.open(&frame, now, |_| Some(&other)),
            Err(Rejection::BadMac(_))
        ));
        // Far from this clock, it is refused for that first.
        let frame = sealed_by_newer_peer(&secret, 44, now - 60_000, 9);
        assert!(matches!(
            opener.open(&frame, now, |_| Some(&secret)),
            Err(Rejection::ClockSkew { .. })
        ));
    }
}
