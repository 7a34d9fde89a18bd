//! The signed envelope around every request and reply.
//!
//! ```text
//! Frame   = { from: str, payload: bin, mac: bin }
//! Payload = { v: u16, from: str, ts: u64, nonce: u64, body: Body }
//! mac     = HMAC-SHA256(secret of `from`, payload bytes)
//! ```
//!
//! The MAC covers the exact payload bytes, so no canonical encoding is needed. The outer
//! `from` only selects the key and must equal the signed inner one.

use crate::message::Body;
use crate::replay::ReplayGuard;
use crate::PROTOCOL_VERSION;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::fmt;
use thiserror::Error;

type HmacSha256 = Hmac<Sha256>;

/// A shared secret. Its `Debug` never shows the bytes, so it cannot leak into logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into())
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Serialize, Deserialize)]
struct Frame<'a> {
    from: &'a str,
    #[serde(with = "serde_bytes")]
    payload: &'a [u8],
    #[serde(with = "serde_bytes")]
    mac: &'a [u8],
}

#[derive(Serialize)]
struct PayloadOut<'a> {
    v: u16,
    from: &'a str,
    ts: u64,
    nonce: u64,
    body: &'a Body,
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

/// Signs `body` as `from`. `nonce` must be unique per sender (use [`random_nonce`]).
pub fn seal(from: &str, secret: &Secret, body: &Body, now_ms: u64, nonce: u64) -> Vec<u8> {
    let payload = rmp_serde::to_vec_named(&PayloadOut {
        v: PROTOCOL_VERSION,
        from,
        ts: now_ms,
        nonce,
        body,
    })
    .unwrap_or_default();
    let mut mac = secret.mac();
    mac.update(&payload);
    let tag = mac.finalize().into_bytes();
    rmp_serde::to_vec_named(&Frame {
        from,
        payload: &payload,
        mac: &tag,
    })
    .unwrap_or_default()
}

/// What a peer's connection password is derived from; a separate label keeps it from
/// ever equalling a message MAC.
const CONNECTION_PASSWORD_LABEL: &[u8] = b"jobcast connection password v1";

/// The ZMTP PLAIN password a peer connects with: HMAC-SHA256(secret, label), in lower-case
/// hex. It opens a connection and nothing else: every message is still authenticated on
/// its own, so a password seen on the wire lets an observer connect but not speak.
pub fn connection_password(secret: &Secret) -> String {
    let mut mac = secret.mac();
    mac.update(CONNECTION_PASSWORD_LABEL);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `password` is `secret`'s connection password, compared in constant time.
pub fn check_connection_password(secret: &Secret, password: &[u8]) -> bool {
    if password.len() != 64 {
        return false;
    }
    let mut tag = [0u8; 32];
    for (i, pair) in password.chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        match (digit(pair[0]), digit(pair[1])) {
            (Some(hi), Some(lo)) => tag[i] = (hi * 16 + lo) as u8,
            _ => return false,
        }
    }
    let mut mac = secret.mac();
    mac.update(CONNECTION_PASSWORD_LABEL);
    mac.verify_slice(&tag).is_ok()
}

/// A random nonce from the operating system.
pub fn random_nonce() -> u64 {
    let mut bytes = [0u8; 8];
    // getrandom only fails on platforms without an entropy source; fall back to the
    // address of a stack value mixed with the time rather than panicking.
    if getrandom::fill(&mut bytes).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        return t ^ (&bytes as *const _ as u64);
    }
    u64::from_le_bytes(bytes)
}

/// Signs bodies for one sender.
#[derive(Debug, Clone)]
pub struct Sealer {
    pub from: String,
    pub secret: Secret,
}

impl Sealer {
    pub fn new(from: impl Into<String>, secret: Secret) -> Self {
        Sealer {
            from: from.into(),
            secret,
        }
    }

    pub fn seal(&self, body: &Body, now_ms: u64) -> Vec<u8> {
        seal(&self.from, &self.secret, body, now_ms, random_nonce())
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
    #[error("bad MAC from {0:?}")]
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
}

impl Rejection {
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
        }
    }
}

/// Checks frames: size, decoding, MAC, version, clock skew, start time, replay — in that
/// order.
#[derive(Debug)]
pub struct Opener {
    max_frame_bytes: usize,
    max_skew_ms: u64,
    not_before_ms: u64,
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
            max_frame_bytes,
            max_skew_ms,
            not_before_ms: 0,
            replay: ReplayGuard::new(max_skew_ms),
        }
    }

    /// Refuses frames sealed before `started_ms`. The replay guard's memory starts empty
    /// with the process, so without this a frame captured before a restart would be
    /// accepted again after it, within the skew window.
    pub fn not_before(mut self, started_ms: u64) -> Self {
        self.not_before_ms = started_ms;
        self
    }

    pub fn open<'k>(
        &mut self,
        bytes: &[u8],
        now_ms: u64,
        key_for: impl Fn(&str) -> Option<&'k Secret>,
    ) -> Result<Opened, Rejection> {
        if bytes.len() > self.max_frame_bytes {
            return Err(Rejection::Oversized {
                len: bytes.len(),
                max: self.max_frame_bytes,
            });
        }
        let frame: Frame = rmp_serde::from_slice(bytes)
            .map_err(|e| Rejection::Undecodable(format!("envelope: {e}")))?;
        let secret =
            key_for(frame.from).ok_or_else(|| Rejection::UnknownSender(shorten(frame.from)))?;
        let mut mac = secret.mac();
        mac.update(frame.payload);
        // verify_slice compares in constant time.
        mac.verify_slice(frame.mac)
            .map_err(|_| Rejection::BadMac(shorten(frame.from)))?;

        let header: PayloadHeader = rmp_serde::from_slice(frame.payload)
            .map_err(|e| Rejection::Undecodable(format!("payload header: {e}")))?;
        if header.v != PROTOCOL_VERSION {
            return Err(Rejection::UnsupportedVersion {
                from: shorten(frame.from),
                version: header.v,
            });
        }
        let payload: PayloadIn = rmp_serde::from_slice(frame.payload)
            .map_err(|e| Rejection::Undecodable(format!("payload: {e}")))?;
        if payload.from != frame.from {
            return Err(Rejection::Undecodable(
                "signed sender differs from the envelope's".to_string(),
            ));
        }
        let skew_ms = payload.ts.abs_diff(now_ms);
        if skew_ms > self.max_skew_ms {
            return Err(Rejection::ClockSkew {
                from: payload.from,
                skew_ms,
            });
        }
        if payload.ts < self.not_before_ms {
            return Err(Rejection::BeforeStart {
                from: payload.from,
                early_ms: self.not_before_ms - payload.ts,
            });
        }
        if !self
            .replay
            .check_and_record(&payload.from, payload.ts, payload.nonce, now_ms)
        {
            return Err(Rejection::Replay(payload.from));
        }
        Ok(Opened {
            from: payload.from,
            ts_ms: payload.ts,
            nonce: payload.nonce,
            body: payload.body,
        })
    }
}

/// The sender name of a frame, before any check, or `None` if it is not a frame. Used to
/// answer a version mismatch to the right peer.
pub fn peek_sender(bytes: &[u8]) -> Option<String> {
    rmp_serde::from_slice::<Frame>(bytes)
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
