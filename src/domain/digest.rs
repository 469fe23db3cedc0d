//! Keyed digests of codes: HMAC-SHA-256 under a server secret.
//!
//! A copied database holds only these digests. Without the key, even the
//! million possible 6-digit codes cannot be tried against them offline.

use crate::domain::{Code, CodeLength, Phone};
use hmac::{Hmac, Mac};
use rand::SeedableRng;
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

    /// The code of a request, derived from its random `seed` under this key:
    /// HMAC-SHA-256 seeds a ChaCha20 stream that draws the digits without
    /// modulo bias. The store keeps the seed (useless without the key), so a
    /// request re-issued after a crash gets the same code, never a second one.
    pub fn derive_code(&self, seed: &CodeSeed, length: CodeLength) -> Code {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any size");
        mac.update(b"otp-pipeline/code-seed/v1");
        mac.update(&seed.0);
        let stream: [u8; 32] = mac.finalize().into_bytes().into();
        Code::generate(length, &mut rand_chacha::ChaCha20Rng::from_seed(stream))
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

/// 32 random bytes from which, with the key, a request's code is derived
/// ([`DigestKey::derive_code`]); stored as 64 hex characters.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct CodeSeed(#[serde(with = "hex::serde")] [u8; 32]);

impl CodeSeed {
    /// A fresh seed from a cryptographically secure generator.
    pub fn random<R: rand::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }
}

impl fmt::Debug for CodeSeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CodeSeed(<redacted>)")
    }
}

/// An HMAC-SHA-256 digest of a code; stored as 64 hex characters.
/// [`CodeDigest::ZERO`] matches no code (the dummy of a timing-safe miss).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct CodeDigest(#[serde(with = "hex::serde")] [u8; 32]);

impl CodeDigest {
    /// All zeros: no code's HMAC.
    pub const ZERO: Self = Self([0; 32]);
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
    fn a_seed_gives_the_same_code_under_one_key_and_unrelated_codes_otherwise() {
        let mut rng = rand::rng();
        let length = CodeLength::new(6).unwrap();
        let seed = CodeSeed::random(&mut rng);
        let code = key(1).derive_code(&seed, length);
        assert_eq!(code.expose(), key(1).derive_code(&seed, length).expose(), "deterministic");
        assert_eq!(code.expose().len(), 6);
        // Another key or another seed: another code (a collision is 1 in 10^10 for 10 digits).
        let ten = CodeLength::new(10).unwrap();
        assert_ne!(key(1).derive_code(&seed, ten).expose(), key(2).derive_code(&seed, ten).expose());
        let other = CodeSeed::random(&mut rng);
        assert_ne!(key(1).derive_code(&seed, ten).expose(), key(1).derive_code(&other, ten).expose());
        // The seed round-trips through its stored form (64 hex digits) and never prints.
        let stored = serde_json::to_string(&seed).unwrap();
        assert_eq!(stored.len(), 66);
        assert_eq!(serde_json::from_str::<CodeSeed>(&stored).unwrap(), seed);
        assert_eq!(format!("{seed:?}"), "CodeSeed(<redacted>)");
    }

    #[test]
    fn derived_codes_are_uniform_over_their_digits() {
        // 20,000 one-digit-position samples: each leading digit near 10 %.
        let length = CodeLength::new(4).unwrap();
        let mut counts = [0u32; 10];
        let mut rng = rand::rng();
        for _ in 0..20_000 {
            let code = key(3).derive_code(&CodeSeed::random(&mut rng), length);
            counts[usize::from(code.expose().as_bytes()[0] - b'0')] += 1;
        }
        for (digit, n) in counts.iter().enumerate() {
            assert!((1_700..=2_300).contains(n), "digit {digit}: {n} of 20000");
        }
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
        assert_ne!(serde_json::to_value(key(1).digest(&phone(), "r1", &code)).unwrap(), hex::encode(plain));
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
        let s = serde_json::to_string(&d).unwrap();
        assert_eq!(s.len(), 66, "64 hex digits, quoted");
        assert_eq!(serde_json::from_str::<CodeDigest>(&s).unwrap(), d);
        assert!(format!("{:?}", key(1)).contains("redacted"));
        assert_eq!(key(1).id().len(), 8);
        assert_ne!(key(1).id(), key(2).id());
    }
}
