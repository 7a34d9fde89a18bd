//! A peer's shared secret, and what is derived from it: a message key per direction
//! (HKDF-SHA256) and the connection password (HMAC-SHA256). `docs/PROTOCOL.md` gives the
//! derivations and test vectors.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use std::sync::{Arc, Mutex};

type HmacSha256 = Hmac<Sha256>;

/// The HKDF salt: it names the protocol version, so a key of one version is useless in
/// another.
const KDF_SALT: &[u8] = b"jobcast/2";

/// A 256-bit message key for one direction.
type MessageKey = [u8; 32];

/// A shared secret. Its `Debug` never shows the bytes, so it cannot leak into logs.
#[derive(Clone)]
pub struct Secret {
    bytes: Arc<[u8]>,
    /// Derived message keys by (from, to), so that sealing costs no key derivation. A
    /// secret belongs to one peer, so this holds its two directions.
    keys: Arc<Mutex<Vec<(String, String, MessageKey)>>>,
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for Secret {}

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret {
            bytes: bytes.into().into(),
            keys: Arc::default(),
        }
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        <HmacSha256 as Mac>::new_from_slice(&self.bytes).expect("HMAC takes keys of any length")
    }

    /// The key for messages from `from` to `to`.
    pub fn message_key(&self, from: &str, to: &str) -> MessageKey {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, key)) = keys.iter().find(|(f, t, _)| f == from && t == to) {
            return *key;
        }
        let mut info = Vec::with_capacity(from.len() + 1 + to.len());
        info.extend_from_slice(from.as_bytes());
        info.push(0);
        info.extend_from_slice(to.as_bytes());
        let mut key = [0u8; 32];
        hkdf::Hkdf::<Sha256>::new(Some(KDF_SALT), &self.bytes)
            .expand(&info, &mut key)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        // Only names whose secret this is get here, so the memo stays tiny; still, never
        // let it grow without bound.
        if keys.len() >= 16 {
            keys.clear();
        }
        keys.push((from.to_string(), to.to_string(), key));
        key
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
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
