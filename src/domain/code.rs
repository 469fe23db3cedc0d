//! One-time codes: drawn from a CSPRNG, uniformly, without modulo bias.

use rand::distr::{Distribution, Uniform};
use rand::{CryptoRng, Rng};
use std::fmt;

/// Shortest code the contract allows.
pub const MIN_CODE_LENGTH: u8 = 4;
/// Longest code the contract allows.
pub const MAX_CODE_LENGTH: u8 = 10;

/// A code length within the contract's range (4–10 digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct CodeLength(u8);

impl CodeLength {
    /// Returns `None` outside 4–10.
    pub fn new(digits: u8) -> Option<Self> {
        (MIN_CODE_LENGTH..=MAX_CODE_LENGTH).contains(&digits).then_some(Self(digits))
    }

    /// The number of digits.
    pub fn get(self) -> u8 {
        self.0
    }
}

impl Default for CodeLength {
    fn default() -> Self {
        Self(6)
    }
}

impl TryFrom<u8> for CodeLength {
    type Error = String;
    fn try_from(value: u8) -> Result<Self, Self::Error> {
        Self::new(value).ok_or_else(|| format!("code_length must be {MIN_CODE_LENGTH}-{MAX_CODE_LENGTH}, got {value}"))
    }
}

impl From<CodeLength> for u8 {
    fn from(value: CodeLength) -> Self {
        value.0
    }
}

/// A plaintext one-time code. Its `Debug` and `Display` never show the digits;
/// only [`Code::expose`] does, for the SMS text and the digest.
#[derive(Clone, PartialEq, Eq)]
pub struct Code(String);

impl Code {
    /// Draws a code of `length` decimal digits from `rng`.
    ///
    /// The whole code is one integer sampled from `0..10^length` with
    /// [`Uniform`], which uses widening multiplication with a rejection zone
    /// (Lemire's method), so every code is equally likely: no modulo bias.
    /// Pass a cryptographically secure generator (the type bound requires one).
    pub fn generate<R: Rng + CryptoRng + ?Sized>(length: CodeLength, rng: &mut R) -> Self {
        let upper = 10u64.pow(u32::from(length.get()));
        let uniform = Uniform::new(0, upper).expect("10^length is a non-empty range");
        let value = uniform.sample(rng);
        Self(format!("{value:0width$}", width = usize::from(length.get())))
    }

    /// Accepts what a user typed: 4–10 ASCII digits (surrounding spaces trimmed).
    pub fn parse(input: &str) -> Option<Self> {
        let trimmed = input.trim();
        let len = trimmed.len();
        let ok = (usize::from(MIN_CODE_LENGTH)..=usize::from(MAX_CODE_LENGTH)).contains(&len)
            && trimmed.bytes().all(|b| b.is_ascii_digit());
        ok.then(|| Self(trimmed.to_owned()))
    }

    /// The digits. Call only to render the SMS or compute a digest.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Code(<redacted>)")
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn lengths_outside_the_contract_are_refused() {
        assert!(CodeLength::new(3).is_none());
        assert!(CodeLength::new(11).is_none());
        assert_eq!(CodeLength::new(4).unwrap().get(), 4);
        assert_eq!(CodeLength::new(10).unwrap().get(), 10);
    }

    #[test]
    fn codes_have_the_requested_length_and_only_digits() {
        let mut rng = rand::rng();
        for len in MIN_CODE_LENGTH..=MAX_CODE_LENGTH {
            for _ in 0..200 {
                let code = Code::generate(CodeLength::new(len).unwrap(), &mut rng);
                assert_eq!(code.expose().len(), usize::from(len));
                assert!(code.expose().bytes().all(|b| b.is_ascii_digit()));
            }
        }
    }

    #[test]
    fn leading_zeros_are_kept() {
        // With a fixed seed, find a code that starts with zero: padding must keep it.
        let mut rng = StdRng::seed_from_u64(7);
        let len = CodeLength::new(4).unwrap();
        let found = (0..10_000)
            .map(|_| Code::generate(len, &mut rng))
            .any(|c| c.expose().starts_with('0') && c.expose().len() == 4);
        assert!(found);
    }

    #[test]
    fn digits_are_uniform_at_every_position() {
        // 60,000 six-digit codes: every digit at every position should appear
        // about 6,000 times. A chi-square over 10 cells (9 degrees of freedom)
        // stays under 27.88 (p = 0.001) unless the generator is biased.
        let mut rng = StdRng::seed_from_u64(42);
        let n = 60_000;
        let mut counts = [[0u32; 10]; 6];
        for _ in 0..n {
            let code = Code::generate(CodeLength::default(), &mut rng);
            for (pos, b) in code.expose().bytes().enumerate() {
                counts[pos][usize::from(b - b'0')] += 1;
            }
        }
        let expected = f64::from(n) / 10.0;
        for (pos, row) in counts.iter().enumerate() {
            let chi2: f64 = row.iter().map(|&c| (f64::from(c) - expected).powi(2) / expected).sum();
            assert!(chi2 < 27.88, "position {pos}: chi2 {chi2:.2}, counts {row:?}");
        }
    }

    #[test]
    fn whole_codes_do_not_cluster() {
        // 4-digit codes: 20,000 draws over 10,000 values; no value may be far
        // more frequent than the rest (a biased reducer would favour low values).
        let mut rng = StdRng::seed_from_u64(1);
        let mut low = 0u32;
        for _ in 0..20_000 {
            let v: u32 = Code::generate(CodeLength::new(4).unwrap(), &mut rng).expose().parse().unwrap();
            if v < 5_000 {
                low += 1;
            }
        }
        // Binomial(20000, 0.5): sd ≈ 70.7; 5 sd ≈ 354.
        assert!((9_646..=10_354).contains(&low), "low half drawn {low} times");
    }

    #[test]
    fn parse_accepts_digits_only() {
        assert_eq!(Code::parse(" 123456 ").unwrap().expose(), "123456");
        assert!(Code::parse("12a456").is_none());
        assert!(Code::parse("123").is_none());
        assert!(Code::parse("12345678901").is_none());
        assert!(Code::parse("１２３４５６").is_none());
    }

    #[test]
    fn debug_and_display_hide_the_digits() {
        let code = Code::parse("987654").unwrap();
        assert!(!format!("{code:?}{code}").contains("987654"));
    }
}
