//! Keyed digests of codes: HMAC-SHA-256 under a server secret.
//!
//! A copied database holds only these digests. Without the key, even the
//! million possible 6-digit codes cannot be tried against them offline.

use crate::domain::{Code, Phone};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

/// Shortest server secret accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 32;

/// The server secret that keys code digests, with a short public id
/// (stored beside each digest so keys can be rotated later).
#[derive(Clone)]
pub struct DigestKey {
    id: String,
    key: Vec<u8>,
}

/// Why a key was refused.
#[derive(Debug, thiserror::Error)]
#[error("the HMAC key must be at least {MIN_KEY_BYTES} bytes, got {0}")]
pub struct KeyTooShort(pub usize);

impl DigestKey {
    /// Wraps raw key bytes; at least 32 of them.
    pub fn new(key: Vec<u8>) -> Result<Self, KeyTooShort> {
        if key.len() < MIN_KEY_BYTES {
            return Err(KeyTooShort(key.len()));
        }
        let fingerprint = Sha256::new().chain_update(b"otp-pipeline key id\0").chain_update(&key).finalize();
        let id = hex::encode(&fingerprint[..4]);
        Ok(Self { id, key })
    }

    /// A public, stable id for this key (8 hex digits of a fingerprint).
    pub fn id(&self) -> &str {
        &self.id
    }

    fn mac(&self, phone: &Phone, request_id: &str, code: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any size");
        // Length-prefixed fields with a domain tag: no two inputs collide.
        mac.update(b"otp-pipeline/code/v1");
        for field in [phone.e164(), request_id, code] {
            mac.update(&(field.len() as u32).to_be_bytes());
            mac.update(field.as_bytes());
        }
        mac
    }

    /// The digest stored for `code`, bound to the phone and the request.
    pub fn digest(&self, phone: &Phone, request_id: &str, code: &Code) -> CodeDigest {
        CodeDigest(self.mac(phone, request_id, code.expose()).finalize().into_bytes().into())
    }

    /// Whether `code` matches `expected`, compared in constant time.
    pub fn matches(&self, phone: &Phone, request_id: &str, code: &Code, expected: &CodeDigest) -> bool {
        self.mac(phone, request_id, code.expose()).verify_slice(&expected.0).is_ok()
    }
}

impl fmt::Debug for DigestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DigestKey {{ id: {}, key: <redacted> }}", self.id)
    }
}

/// The current key (makes every new digest) and earlier keys, which keep
/// verifying the codes issued under them until those expire: keys rotate
/// without invalidating live codes.
#[derive(Debug, Clone)]
pub struct KeyRing {
    current: DigestKey,
    previous: Vec<DigestKey>,
}

impl KeyRing {
    /// A ring with `current` and any number of retired keys.
    pub fn new(current: DigestKey, previous: Vec<DigestKey>) -> Self {
        Self { current, previous }
    }

    /// The key for new codes.
    pub fn current(&self) -> &DigestKey {
        &self.current
    }

    /// The key with this id, current or retired.
    pub fn get(&self, id: &str) -> Option<&DigestKey> {
        std::iter::once(&self.current).chain(&self.previous).find(|k| k.id() == id)
    }
}

/// An HMAC-SHA-256 digest of a code; stored as 64 hex characters.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct CodeDigest([u8; 32]);

impl From<CodeDigest> for String {
    fn from(d: CodeDigest) -> Self {
        hex::encode(d.0)
    }
}

impl TryFrom<String> for CodeDigest {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(&s, &mut out).map_err(|e| format!("bad digest: {e}"))?;
        Ok(Self(out))
    }
}

impl fmt::Debug for CodeDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CodeDigest({}…)", hex::encode(&self.0[..4]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> DigestKey {
        DigestKey::new(vec![byte; 32]).unwrap()
    }

    fn phone() -> Phone {
        Phone::parse("+14155550123").unwrap()
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(DigestKey::new(vec![0; 31]).is_err());
    }

    #[test]
    fn the_right_code_matches_and_others_do_not() {
        let k = key(1);
        let code = Code::parse("123456").unwrap();
        let d = k.digest(&phone(), "r1", &code);
        assert!(k.matches(&phone(), "r1", &code, &d));
        assert!(!k.matches(&phone(), "r1", &Code::parse("123457").unwrap(), &d));
        assert!(!k.matches(&phone(), "r2", &code, &d), "bound to the request");
        let other = Phone::parse("+447911123456").unwrap();
        assert!(!k.matches(&other, "r1", &code, &d), "bound to the phone");
        assert!(!key(2).matches(&phone(), "r1", &code, &d), "bound to the key");
    }

    #[test]
    fn digest_is_keyed_not_a_plain_hash() {
        let code = Code::parse("123456").unwrap();
        let plain: [u8; 32] = Sha256::digest(b"123456").into();
        assert_ne!(String::from(key(1).digest(&phone(), "r1", &code)), hex::encode(plain));
        assert_ne!(key(1).digest(&phone(), "r1", &code), key(2).digest(&phone(), "r1", &code));
    }

    #[test]
    fn a_ring_finds_current_and_retired_keys_by_id() {
        let ring = KeyRing::new(key(2), vec![key(1)]);
        assert_eq!(ring.current().id(), key(2).id());
        assert_eq!(ring.get(key(1).id()).unwrap().id(), key(1).id());
        assert!(ring.get(key(3).id()).is_none());
    }

    #[test]
    fn digest_round_trips_through_hex_and_hides_in_debug() {
        let d = key(1).digest(&phone(), "r1", &Code::parse("123456").unwrap());
        let s = String::from(d.clone());
        assert_eq!(s.len(), 64);
        assert_eq!(CodeDigest::try_from(s).unwrap(), d);
        assert!(format!("{:?}", key(1)).contains("redacted"));
        assert_eq!(key(1).id().len(), 8);
        assert_ne!(key(1).id(), key(2).id());
    }
}
