//! The test vectors of `docs/PROTOCOL.md`: sealed frames, byte for byte, for a fixed
//! secret, body, time and nonces. `examples/python/test_vectors.py` checks the same bytes
//! from the document alone, so the document and the code cannot drift apart.

use jobcast_protocol::envelope::{connection_password, seal_with_nonce, Opener, BROKER};
use jobcast_protocol::WorkerRequest;
use jobcast_protocol::*;

const SECRET: &str = "jobcast-test-vector-secret";
const TS: u64 = 1_800_000_000_000;

fn aead_nonce() -> [u8; 24] {
    std::array::from_fn(|i| i as u8)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn keys(name: &str) -> Option<&'static Secret> {
    static KEY: std::sync::OnceLock<Secret> = std::sync::OnceLock::new();
    (name == "w1" || name == BROKER).then(|| KEY.get_or_init(|| Secret::new(SECRET)))
}

/// Vector 1: worker w1 asks the broker for up to 2 runs.
fn request() -> Body {
    Body::Request {
        id: 7,
        request: WorkerRequest::Claim { max: 2, wait_ms: 0 }.into(),
    }
}

/// Vector 2: the broker's answer, no runs and none queued.
fn reply() -> Body {
    Body::Reply {
        id: 7,
        reply: Reply::Granted {
            runs: vec![],
            more_queued: false,
        },
    }
}

const REQUEST_FRAME: &str = "83a466726f6da27731a56e6f6e6365c418000102030405060708090a0b0c0d0e0f1011121314151617a67365616c6564c457a162b39e23ae4c009d27e33d358c50db29d38f0f0d30605994fb2454cc56fb843c0ff9ca13f7e32f2eb0c1c520b752aff9afcacf3c1c8d6aa2bb8bec05a255f37b84854f5d76b436320229877869f397b37fd27cd4fe47";
const REPLY_FRAME: &str = "83a466726f6da662726f6b6572a56e6f6e6365c418000102030405060708090a0b0c0d0e0f1011121314151617a67365616c6564c467dd7649a498ceb0288bb6649ace0fac87d5df837e7fc93480dbd1be010678cd1c8f64c9400abbcfbe1d2ef0840451fd63d08af53ce1cb13d1d22f825b35b1aaf4f762c34a2f4d78e683aa83a63559d5053bb53e9f26b02fc1c0add101b901bc0263bc8c44abad4c";
const MESSAGE_KEY_W1_TO_BROKER: &str =
    "3c914d774da6e11570b0d717cd7461f3b0731e77e7ff3a2b3859fb227a995bc8";
const CONNECTION_PASSWORD: &str =
    "f11f2e6873a9024f16b9b030ad5fc4a3f8a8180c43bccce9e8e4ed7e326e620b";

#[test]
fn the_derived_key_and_connection_password_match_the_document() {
    let secret = Secret::new(SECRET);
    assert_eq!(
        hex(&secret.message_key("w1", BROKER)),
        MESSAGE_KEY_W1_TO_BROKER
    );
    assert_eq!(connection_password(&secret), CONNECTION_PASSWORD);
}

#[test]
fn the_sealed_request_matches_the_document_byte_for_byte() {
    let secret = Secret::new(SECRET);
    let frame = seal_with_nonce("w1", BROKER, &secret, &request(), TS, 42, aead_nonce());
    assert_eq!(hex(&frame), REQUEST_FRAME);
    let opened = Opener::new(1 << 20, 30_000).open(&frame, TS, keys).unwrap();
    assert_eq!(opened.body, request());
    assert_eq!(opened.nonce, 42);
}

#[test]
fn the_sealed_reply_matches_the_document_byte_for_byte() {
    let secret = Secret::new(SECRET);
    let frame = seal_with_nonce(BROKER, "w1", &secret, &reply(), TS, 43, aead_nonce());
    assert_eq!(hex(&frame), REPLY_FRAME);
    let opened = Opener::new(64 << 20, 30_000)
        .receiving_as("w1")
        .open(&frame, TS, keys)
        .unwrap();
    assert_eq!(opened.body, reply());
}
