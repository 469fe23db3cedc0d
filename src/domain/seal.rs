//! Seals on internal messages: an HMAC-SHA-256 over a message's routing key,
//! owner (the application of a scoped API key, if any) and body, under a key
//! every process of a deployment shares.
//!
//! RabbitMQ permissions are the fence between producers and the service's
//! internal hops; the seal is what still holds where an operator runs every
//! process and every producer as one RabbitMQ user. A message without a valid
//! seal on an internal queue (a hand-made delivery, a forged receipt) is
//! refused. This module owns the seal's format and its check; it knows
//! nothing of AMQP headers or queues.

use crate::domain::digest::{KeyTooShort, MIN_KEY_BYTES};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

/// One sealing key, with a short public id (sent with each seal, so a
/// process can say which key a message was sealed under).
#[derive(Clone)]
pub struct SealKey {
    id: String,
    key: Vec<u8>,
}

impl SealKey {
    /// Wraps raw key bytes; at least 32 of them.
    pub fn new(key: Vec<u8>) -> Result<Self, KeyTooShort> {
        if key.len() < MIN_KEY_BYTES {
            return Err(KeyTooShort(key.len()));
        }
        let fingerprint = Sha256::new().chain_update(b"otp-pipeline seal key id\0").chain_update(&key).finalize();
        Ok(Self { id: hex::encode(&fingerprint[..4]), key })
    }

    /// The key's public id (8 hex digits of a fingerprint).
    pub fn id(&self) -> &str {
        &self.id
    }

    fn mac(&self, routing_key: &str, owner: Option<&str>, body: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any size");
        // Domain tag and length prefixes: a body sealed for one routing key
        // (a delivery) is not valid under another (a receipt), nor with
        // another owner.
        mac.update(b"otp-pipeline/internal/v1");
        for field in [routing_key, owner.unwrap_or("")] {
            mac.update(&(field.len() as u32).to_be_bytes());
            mac.update(field.as_bytes());
        }
        mac.update(body);
        mac
    }
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealKey {{ id: {}, key: <redacted> }}", self.id)
    }
}

/// Why a seal was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The message carries no seal: not published by this service.
    #[error("no seal: internal messages are published by the service only")]
    Missing,
    /// The seal is not `<key id>.<64 hex digits>`.
    #[error("malformed seal")]
    Malformed,
    /// Sealed under a key this process does not hold.
    #[error(
        "sealed under key {0}, which this process does not hold (broker.internal_key must be the same in every process)"
    )]
    UnknownKey(String),
    /// The seal does not match the routing key and body.
    #[error("the seal does not match the message")]
    Mismatch,
}

/// The key that seals new messages and retired keys whose seals are still
/// accepted (rotation without a stop: add the new key as a retired one
/// everywhere, then make it current everywhere, then drop the old one).
#[derive(Debug, Clone)]
pub struct SealRing {
    current: SealKey,
    previous: Vec<SealKey>,
}

impl SealRing {
    /// A ring with `current` and any number of retired keys.
    pub fn new(current: SealKey, previous: Vec<SealKey>) -> Self {
        Self { current, previous }
    }

    /// The current key's id.
    pub fn id(&self) -> &str {
        self.current.id()
    }

    /// The seal of `body` published with `routing_key` (and, for a request
    /// made with a scoped API key, its `owner`): `<key id>.<hex HMAC>`.
    pub fn seal(&self, routing_key: &str, owner: Option<&str>, body: &[u8]) -> String {
        let tag = self.current.mac(routing_key, owner, body).finalize().into_bytes();
        format!("{}.{}", self.current.id, hex::encode(tag))
    }

    /// Checks `seal` (the header's value, if any) against the message, in
    /// constant time.
    pub fn open(
        &self,
        routing_key: &str,
        owner: Option<&str>,
        body: &[u8],
        seal: Option<&str>,
    ) -> Result<(), SealError> {
        let seal = seal.ok_or(SealError::Missing)?;
        let (id, tag) = seal.split_once('.').ok_or(SealError::Malformed)?;
        let tag = hex::decode(tag).map_err(|_| SealError::Malformed)?;
        if tag.len() != 32 || id.len() != 8 {
            return Err(SealError::Malformed);
        }
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == id)
            .ok_or_else(|| SealError::UnknownKey(id.to_owned()))?;
        key.mac(routing_key, owner, body).verify_slice(&tag).map_err(|_| SealError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(byte: u8) -> SealRing {
        SealRing::new(SealKey::new(vec![byte; 32]).unwrap(), vec![])
    }

    #[test]
    fn a_sealed_message_opens_and_nothing_else_does() {
        let ring = ring(1);
        let body = b"{\"to\":1}";
        let seal = ring.seal("delivery", None, body);
        assert_eq!(ring.open("delivery", None, body, Some(&seal)), Ok(()));
        assert_eq!(ring.open("delivery", None, b"{\"to\":2}", Some(&seal)), Err(SealError::Mismatch));
        assert_eq!(ring.open("receipt", None, body, Some(&seal)), Err(SealError::Mismatch));
        assert_eq!(ring.open("delivery", Some("billing"), body, Some(&seal)), Err(SealError::Mismatch));
        assert_eq!(ring.open("delivery", None, body, None), Err(SealError::Missing));
        let owned = ring.seal("request", Some("billing"), body);
        assert_eq!(ring.open("request", Some("billing"), body, Some(&owned)), Ok(()));
        assert_eq!(ring.open("request", Some("shop"), body, Some(&owned)), Err(SealError::Mismatch));
        for bad in ["", "nodot", "abcd.00", &format!("{}.{}", ring.id(), "zz".repeat(32))] {
            assert_eq!(ring.open("delivery", None, b"x", Some(bad)), Err(SealError::Malformed), "{bad}");
        }
    }

    #[test]
    fn another_deployments_key_is_named_not_trusted() {
        let theirs = ring(2).seal("delivery", None, b"x");
        let id = theirs.split('.').next().unwrap().to_owned();
        assert_eq!(ring(1).open("delivery", None, b"x", Some(&theirs)), Err(SealError::UnknownKey(id)));
    }

    #[test]
    fn retired_keys_still_open_during_a_rotation() {
        let old = SealKey::new(vec![1; 32]).unwrap();
        let new = SealKey::new(vec![3; 32]).unwrap();
        let sealed_before = ring(1).seal("delivery", None, b"x");
        let rotated = SealRing::new(new, vec![old]);
        assert_eq!(rotated.open("delivery", None, b"x", Some(&sealed_before)), Ok(()));
        assert!(SealKey::new(vec![0; 31]).is_err());
    }
}
