//! Signed cluster messages, when `CLUSTER_SECRET` is set.
//!
//! Anyone who can publish on Redis could otherwise speak for a node: a forged `leaving` heartbeat hides a live
//! node's sockets while answers still say complete. With a secret, every message (request, response,
//! heartbeat) travels in an [`Envelope`]: the message as it was encoded, the time it was sealed, and an
//! HMAC-SHA256 over the channel it is published on, that time and the message. A node drops (and counts) what
//! is unsigned, badly signed, or sealed more than [`MAX_SKEW`] away from its own clock, so a captured message
//! cannot be replayed for ever nor on another channel. Within that window, a request is accepted once (its id is
//! remembered for as long as its seal is fresh, see [`Once`]: an admin `_disconnect` replayed does nothing), and
//! a heartbeat is refused when older than the last one accepted from its node (see [`Freshness`]). Without a
//! secret, messages are the bare JSON, as before.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::Sha256;
use uuid::Uuid;

use super::protocol::MAX_MESSAGE_BYTES;
use crate::config::Config;

/// How far a message's seal time may be from our clock, either way: transit takes milliseconds, so this is
/// mostly for clocks that disagree. Nodes need clocks within this of each other (NTP).
pub const MAX_SKEW: Duration = Duration::from_secs(60);

/// Most signed requests remembered at once (some 30 MB at most). A request is remembered about a minute (until
/// its seal is older than [`MAX_SKEW`]), so this is over 8,000 requests a second on the request channel; beyond,
/// requests are refused (the askers' answers are partial) rather than possibly accepted twice.
pub const MAX_REMEMBERED: usize = 1 << 19;

/// A signed message on the wire: `{"ts":1712345678901,"sig":"<64 hex digits>","msg":{...}}`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope<'a> {
    /// When it was sealed, in milliseconds since the Unix epoch.
    pub ts: u64,
    /// HMAC-SHA256 of the channel, `ts` and `msg`, in lowercase hex.
    pub sig: String,
    /// The message exactly as encoded by [`super::protocol::encode`]: signed byte for byte.
    #[serde(borrow)]
    pub msg: &'a RawValue,
}

/// Why a message was refused before being decoded.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("message of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("unsigned cluster message (CLUSTER_SECRET is set here)")]
    Unsigned,
    #[error("bad signature (another CLUSTER_SECRET, or a forgery)")]
    BadSignature,
    #[error("sealed {0} ms away from our clock (a replay, or clocks that disagree)")]
    Expired(i128),
    #[error("heartbeat older than the last one from its node (a replay)")]
    Replayed,
    #[error("request already accepted once (a replay)")]
    RequestReplayed,
    #[error("over {MAX_REMEMBERED} signed requests within the replay window: refused")]
    TooManyRequests,
}

impl SealError {
    /// A label for logs (each kind is logged at most once a minute).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TooLarge(_) => "too_large",
            Self::Unsigned => "unsigned",
            Self::BadSignature => "bad_signature",
            Self::Expired(_) => "expired",
            Self::Replayed => "replayed",
            Self::RequestReplayed => "replayed_request",
            Self::TooManyRequests => "too_many_requests",
        }
    }
}

/// Seals and opens cluster messages: with a secret, in signed envelopes; without, as they are.
#[derive(Clone, Default)]
pub struct Seal {
    key: Option<Arc<Hmac<Sha256>>>,
}

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seal")
            .field("signed", &self.key.is_some())
            .finish()
    }
}

/// A message let through by [`Seal::open`].
#[derive(Debug, PartialEq, Eq)]
pub struct Opened<'a> {
    /// The message, to decode.
    pub msg: &'a [u8],
    /// When it was sealed (milliseconds since the epoch); `None` without a secret.
    pub ts: Option<u64>,
}

impl Seal {
    /// Messages are signed with `secret` (which must not be empty), or left bare with `None`.
    pub fn new(secret: Option<&[u8]>) -> Self {
        Self {
            key: secret.map(|s| {
                Arc::new(Hmac::<Sha256>::new_from_slice(s).expect("HMAC takes keys of any length"))
            }),
        }
    }

    /// Signed with `CLUSTER_SECRET` when it is set; the error (a secret too short) never quotes it.
    pub fn from_config(config: &Config) -> Result<Self, String> {
        Ok(Self::new(config.cluster_secret()?))
    }

    pub fn is_signed(&self) -> bool {
        self.key.is_some()
    }

    /// What to publish on `channel` for `msg` (an encoded protocol message), now.
    pub fn seal(&self, channel: &str, msg: Vec<u8>) -> Vec<u8> {
        self.seal_at(channel, msg, now_ms())
    }

    /// The message inside `bytes` received on `channel`, if it may be trusted now.
    pub fn open<'a>(&self, channel: &str, bytes: &'a [u8]) -> Result<Opened<'a>, SealError> {
        self.open_at(channel, bytes, now_ms())
    }

    pub fn seal_at(&self, channel: &str, msg: Vec<u8>, ts: u64) -> Vec<u8> {
        let Some(key) = &self.key else { return msg };
        let msg = String::from_utf8(msg).expect("protocol messages are JSON");
        let msg = RawValue::from_string(msg).expect("protocol messages are JSON");
        let sig = hex(&mac(key, channel, ts, msg.get().as_bytes())
            .finalize()
            .into_bytes());
        serde_json::to_vec(&Envelope { ts, sig, msg: &msg }).expect("an envelope serialises")
    }

    pub fn open_at<'a>(
        &self,
        channel: &str,
        bytes: &'a [u8],
        now: u64,
    ) -> Result<Opened<'a>, SealError> {
        let Some(key) = &self.key else {
            return Ok(Opened {
                msg: bytes,
                ts: None,
            });
        };
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(SealError::TooLarge(bytes.len()));
        }
        let envelope: Envelope = serde_json::from_slice(bytes).map_err(|_| SealError::Unsigned)?;
        let msg = envelope.msg.get().as_bytes();
        let sig = unhex(&envelope.sig).ok_or(SealError::BadSignature)?;
        // `verify_slice` compares in constant time.
        mac(key, channel, envelope.ts, msg)
            .verify_slice(&sig)
            .map_err(|_| SealError::BadSignature)?;
        let skew = i128::from(now) - i128::from(envelope.ts);
        if skew.unsigned_abs() > MAX_SKEW.as_millis() {
            return Err(SealError::Expired(skew));
        }
        Ok(Opened {
            msg,
            ts: Some(envelope.ts),
        })
    }
}

/// The MAC of one message: the channel (length first, so no two inputs run together), the time, the bytes.
fn mac(key: &Hmac<Sha256>, channel: &str, ts: u64, msg: &[u8]) -> Hmac<Sha256> {
    let mut mac = key.clone();
    mac.update(&(channel.len() as u64).to_be_bytes());
    mac.update(channel.as_bytes());
    mac.update(&ts.to_be_bytes());
    mac.update(msg);
    mac
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lowercase hex (what [`hex`] writes) to bytes; `None` for anything else, so an envelope has one valid form.
fn unhex(s: &str) -> Option<Vec<u8>> {
    let digit = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if !s.len().is_multiple_of(2) || !s.bytes().all(digit) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Heartbeats must not go back in time: one older than the last accepted from its node is a replay (e.g. a
/// captured `leaving` replayed after the node came back). Only signed heartbeats carry a time.
#[derive(Debug, Default)]
pub struct Freshness(Mutex<HashMap<String, u64>>);

impl Freshness {
    /// Whether a heartbeat of `node` sealed at `ts` is new enough; if so it becomes the last one.
    pub fn accept(&self, node: &str, ts: u64) -> bool {
        let mut last = self.0.lock().unwrap();
        match last.get_mut(node) {
            // Equal is fine: two heartbeats may be sealed in the same millisecond.
            Some(seen) if ts < *seen => false,
            Some(seen) => {
                *seen = ts;
                true
            }
            None => {
                last.insert(node.to_owned(), ts);
                true
            }
        }
    }
}

/// Signed requests already accepted: a request is accepted once. Each id is remembered until its seal is more
/// than [`MAX_SKEW`] old, after which [`Seal::open`] refuses the message anyway (at most `2 × MAX_SKEW` after it
/// arrived, for one sealed ahead of our clock).
#[derive(Debug, Default)]
pub struct Once(Mutex<Remembered>);

#[derive(Debug, Default)]
struct Remembered {
    ids: HashSet<Uuid>,
    /// `(forget at, id)` in the order they arrived: the oldest first, give or take the nodes' clock skew.
    order: VecDeque<(u64, Uuid)>,
}

impl Once {
    /// Whether request `id`, sealed at `ts`, arrives for the first time now; if so, it is remembered.
    pub fn first(&self, id: Uuid, ts: u64) -> Result<(), SealError> {
        self.first_at(id, ts, now_ms())
    }

    pub fn first_at(&self, id: Uuid, ts: u64, now: u64) -> Result<(), SealError> {
        let mut seen = self.0.lock().unwrap();
        while let Some(&(until, old)) = seen.order.front()
            && until < now
        {
            seen.order.pop_front();
            seen.ids.remove(&old);
        }
        if seen.ids.contains(&id) {
            return Err(SealError::RequestReplayed);
        }
        if seen.ids.len() >= MAX_REMEMBERED {
            return Err(SealError::TooManyRequests);
        }
        seen.ids.insert(id);
        let skew = u64::try_from(MAX_SKEW.as_millis()).unwrap_or(u64::MAX);
        seen.order.push_back((ts.saturating_add(skew), id));
        Ok(())
    }

    /// Requests remembered now.
    pub fn remembered(&self) -> usize {
        self.0.lock().unwrap().ids.len()
    }
}

/// Logs rejected messages at most once a minute per kind, with how many were not logged: a forger must not be
/// able to fill the logs.
#[derive(Debug, Default)]
pub struct RejectionLog(Mutex<HashMap<&'static str, (std::time::Instant, u64)>>);

/// How often each kind of rejection is logged.
const LOG_EVERY: Duration = Duration::from_secs(60);

impl RejectionLog {
    pub fn warn(&self, channel: &str, error: &SealError) {
        let now = std::time::Instant::now();
        let mut log = self.0.lock().unwrap();
        match log.get_mut(error.kind()) {
            Some((at, suppressed)) if now.duration_since(*at) < LOG_EVERY => *suppressed += 1,
            entry => {
                let suppressed = entry.map_or(0, |(_, n)| *n);
                tracing::warn!(
                    %channel, %error, not_logged_since_last = suppressed,
                    "cluster message refused (logged at most once a minute per kind)"
                );
                log.insert(error.kind(), (now, 0));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::protocol::{self, Heartbeat, Query, Request, VERSION};

    const SECRET: &[u8] = b"0123456789abcdef-cluster";
    const NOW: u64 = 1_712_345_678_901;

    fn heartbeat(leaving: bool) -> Vec<u8> {
        protocol::encode(&Heartbeat {
            v: VERSION,
            node: "b".into(),
            leaving,
        })
    }

    #[test]
    fn round_trip() {
        let seal = Seal::new(Some(SECRET));
        let req = Request::new("a", "/", Query::Rooms);
        let sealed = seal.seal_at("p:users#req", protocol::encode(&req), NOW);
        let opened = seal.open_at("p:users#req", &sealed, NOW + 5).unwrap();
        assert_eq!(opened.ts, Some(NOW));
        assert_eq!(protocol::decode_request(opened.msg).unwrap(), req);
        // The envelope is plain JSON with the message inside, unchanged.
        let envelope: Envelope = serde_json::from_slice(&sealed).unwrap();
        assert_eq!(envelope.ts, NOW);
        assert_eq!(envelope.sig.len(), 64);
        assert_eq!(envelope.msg.get().as_bytes(), protocol::encode(&req));
        let again = serde_json::to_vec(&envelope).unwrap();
        assert_eq!(again, sealed);
    }

    #[test]
    fn wire_format_is_stable() {
        let seal = Seal::new(Some(SECRET));
        let sealed = seal.seal_at("p:nodes", heartbeat(false), NOW);
        let text = String::from_utf8(sealed).unwrap();
        assert!(text.starts_with(r#"{"ts":1712345678901,"sig":""#), "{text}");
        assert!(text.ends_with(r#"","msg":{"v":2,"node":"b"}}"#), "{text}");
    }

    #[test]
    fn the_config_s_secret_signs() {
        use clap::Parser;
        let seal = |args: &[&str]| Seal::from_config(&Config::parse_from(args));
        assert!(!seal(&["x"]).unwrap().is_signed());
        assert!(
            seal(&["x", "--cluster-secret", "0123456789abcdef"])
                .unwrap()
                .is_signed()
        );
        assert_eq!(
            seal(&["x", "--cluster-secret", "short-secret"]).unwrap_err(),
            "CLUSTER_SECRET must be at least 16 bytes long"
        );
    }

    #[test]
    fn without_a_secret_messages_are_bare() {
        let seal = Seal::new(None);
        assert!(!seal.is_signed());
        assert_eq!(
            seal.seal_at("p:nodes", heartbeat(true), NOW),
            heartbeat(true)
        );
        let bytes = heartbeat(true);
        let opened = seal.open_at("p:nodes", &bytes, 0).unwrap();
        assert_eq!((opened.msg, opened.ts), (&bytes[..], None));
        // A node without the secret cannot read sealed messages as protocol messages.
        let sealed = Seal::new(Some(SECRET)).seal_at("p:nodes", heartbeat(false), NOW);
        assert!(
            protocol::decode_heartbeat(seal.open_at("p:nodes", &sealed, NOW).unwrap().msg).is_err()
        );
    }

    #[test]
    fn refuses_unsigned_and_forged_messages() {
        let seal = Seal::new(Some(SECRET));
        let open = |bytes: &[u8]| seal.open_at("p:nodes", bytes, NOW).map(|o| o.ts);
        assert_eq!(open(&heartbeat(true)), Err(SealError::Unsigned));
        for junk in [
            &b""[..],
            b"null",
            b"{}",
            b"garbage",
            br#"{"ts":1,"sig":"00","msg":}"#,
        ] {
            assert_eq!(open(junk), Err(SealError::Unsigned), "{junk:?}");
        }
        // Signed with another secret.
        let other = Seal::new(Some(b"another secret of 16+ bytes"));
        assert_eq!(
            open(&other.seal_at("p:nodes", heartbeat(true), NOW)),
            Err(SealError::BadSignature)
        );
        // A genuine envelope whose message, time or signature was changed.
        let genuine = seal.seal_at("p:nodes", heartbeat(false), NOW);
        assert_eq!(open(&genuine), Ok(Some(NOW)));
        let text = String::from_utf8(genuine.clone()).unwrap();
        let leaving = text.replace(r#""node":"b"}"#, r#""node":"b","leaving":true}"#);
        assert_eq!(open(leaving.as_bytes()), Err(SealError::BadSignature));
        let later = text.replace(&NOW.to_string(), &(NOW + 1).to_string());
        assert_eq!(open(later.as_bytes()), Err(SealError::BadSignature));
        let envelope: Envelope = serde_json::from_slice(&genuine).unwrap();
        for sig in [
            String::new(),
            "zz".repeat(32),
            envelope.sig[..62].to_owned(),
            "0".repeat(64),
        ] {
            let forged = text.replace(&envelope.sig, &sig);
            assert_eq!(
                open(forged.as_bytes()),
                Err(SealError::BadSignature),
                "{sig}"
            );
        }
        // Unknown fields are refused, not ignored.
        let extra = text.replacen('{', r#"{"x":1,"#, 1);
        assert_eq!(open(extra.as_bytes()), Err(SealError::Unsigned));
    }

    #[test]
    fn a_message_is_bound_to_its_channel() {
        let seal = Seal::new(Some(SECRET));
        let sealed = seal.seal_at("p:users#reply#a", heartbeat(false), NOW);
        assert!(seal.open_at("p:users#reply#a", &sealed, NOW).is_ok());
        assert_eq!(
            seal.open_at("p:users#reply#c", &sealed, NOW),
            Err(SealError::BadSignature)
        );
        assert_eq!(
            seal.open_at("p:nodes", &sealed, NOW),
            Err(SealError::BadSignature)
        );
    }

    #[test]
    fn old_and_future_messages_are_refused() {
        let seal = Seal::new(Some(SECRET));
        let sealed = seal.seal_at("p:nodes", heartbeat(true), NOW);
        let skew = MAX_SKEW.as_millis() as u64;
        assert!(seal.open_at("p:nodes", &sealed, NOW + skew).is_ok());
        assert!(seal.open_at("p:nodes", &sealed, NOW - skew).is_ok());
        assert_eq!(
            seal.open_at("p:nodes", &sealed, NOW + skew + 1),
            Err(SealError::Expired(i128::from(skew) + 1))
        );
        assert_eq!(
            seal.open_at("p:nodes", &sealed, NOW - skew - 1),
            Err(SealError::Expired(-i128::from(skew) - 1))
        );
        // Sealed now, opened now.
        assert!(
            seal.open("p:nodes", &seal.seal("p:nodes", heartbeat(false)))
                .is_ok()
        );
    }

    #[test]
    fn refuses_oversized_envelopes() {
        let seal = Seal::new(Some(SECRET));
        let big = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert_eq!(
            seal.open_at("p:nodes", &big, NOW),
            Err(SealError::TooLarge(MAX_MESSAGE_BYTES + 1))
        );
    }

    #[test]
    fn heartbeats_must_not_go_back_in_time() {
        let f = Freshness::default();
        assert!(f.accept("b", 100));
        assert!(f.accept("b", 100), "same millisecond");
        assert!(f.accept("b", 150));
        assert!(!f.accept("b", 149), "a replay of an older one");
        assert!(f.accept("c", 1), "per node");
    }

    #[test]
    fn a_request_is_accepted_once_while_its_seal_is_fresh() {
        let once = Once::default();
        let skew = MAX_SKEW.as_millis() as u64;
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(once.first_at(a, NOW, NOW), Ok(()));
        assert_eq!(
            once.first_at(a, NOW, NOW + 1),
            Err(SealError::RequestReplayed)
        );
        assert_eq!(once.first_at(b, NOW, NOW + 1), Ok(()), "another request");
        // Replayed as late as `open` lets it through: still refused.
        assert_eq!(
            once.first_at(a, NOW, NOW + skew),
            Err(SealError::RequestReplayed)
        );
        // Sealed ahead of our clock: remembered until its seal is MAX_SKEW old, twice MAX_SKEW after it came.
        let ahead = Uuid::new_v4();
        assert_eq!(once.first_at(ahead, NOW + skew, NOW), Ok(()));
        assert_eq!(once.remembered(), 3);
        assert_eq!(
            once.first_at(ahead, NOW + skew, NOW + 2 * skew),
            Err(SealError::RequestReplayed)
        );
        assert_eq!(
            once.remembered(),
            1,
            "a and b forgotten: `open` refuses them by now"
        );
        let later = NOW + 2 * skew + 1;
        assert_eq!(once.first_at(Uuid::new_v4(), later, later), Ok(()));
        assert_eq!(once.remembered(), 1, "ahead forgotten too");
    }

    #[test]
    fn remembers_at_most_max_remembered_requests() {
        let once = Once::default();
        for _ in 0..MAX_REMEMBERED {
            once.first_at(Uuid::new_v4(), NOW, NOW).unwrap();
        }
        assert_eq!(
            once.first_at(Uuid::new_v4(), NOW, NOW),
            Err(SealError::TooManyRequests)
        );
        let skew = MAX_SKEW.as_millis() as u64;
        assert_eq!(once.first_at(Uuid::new_v4(), NOW, NOW + skew + 1), Ok(()));
        assert_eq!(once.remembered(), 1);
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(hex(&[0, 1, 0xab, 0xff]), "0001abff");
        assert_eq!(unhex("0001abff").unwrap(), [0, 1, 0xab, 0xff]);
        for bad in ["0", "zz", "0g", "é0", "+f", "0001ABFF"] {
            assert!(unhex(bad).is_none(), "{bad}");
        }
    }
}
