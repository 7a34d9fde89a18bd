//! Opening a frame: the checks, in order, and why a frame was refused.

use super::*;

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
    /// The reason of a frame sealed before the broker began acting: refused unread, so
    /// sealing it again and sending it again is safe whatever it asks.
    pub const BEFORE_START: &'static str = "before_start";

    /// Every reason [`Self::reason`] gives, for counters that start at zero.
    pub const REASONS: [&'static str; 9] = [
        "oversized",
        "undecodable",
        "unknown_sender",
        "bad_mac",
        "unsupported_version",
        "clock_skew",
        "replay",
        Self::BEFORE_START,
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
            Rejection::BeforeStart { .. } => Self::BEFORE_START,
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
