//! Phone numbers: E.164 validation and the masked form used in logs and events.

use std::fmt;

/// Why a phone number was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    /// Not of the form `+` followed by 8–15 digits.
    #[error("phone must be in E.164 form: '+' then 8 to 15 digits, no spaces")]
    NotE164,
    /// Well-formed, but not a number any numbering plan assigns.
    #[error("phone is not a valid number for its country calling code")]
    Invalid,
}

/// A validated phone number in E.164 form (`+14155550123`).
///
/// `Debug` and `Display` print the masked form; [`Phone::e164`] is the only
/// way to the full number (for carriers and storage keys).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Phone {
    e164: String,
    country_code: u16,
}

impl Phone {
    /// Parses a number that must already be E.164 (the contract's form).
    ///
    /// Validity is checked against libphonenumber's metadata (the
    /// `phonenumber` crate), so `+1 000…` or too-short numbers are refused.
    pub fn parse(input: &str) -> Result<Self, PhoneError> {
        let digits = input.strip_prefix('+').ok_or(PhoneError::NotE164)?;
        if !(8..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PhoneError::NotE164);
        }
        let parsed = phonenumber::parse(None, input).map_err(|_| PhoneError::Invalid)?;
        if !parsed.is_valid() {
            return Err(PhoneError::Invalid);
        }
        let e164 = parsed.format().mode(phonenumber::Mode::E164).to_string();
        // libphonenumber forgives a national trunk prefix ("+49 030…" → "+4930…");
        // E.164 does not, and a number must have one spelling to be one key.
        if e164 != input {
            return Err(PhoneError::NotE164);
        }
        Ok(Self { e164, country_code: parsed.code().value() })
    }

    /// The full number, `+` and digits. Never log it: use `Display` instead.
    pub fn e164(&self) -> &str {
        &self.e164
    }

    /// The country calling code (`1`, `44`, `91`…).
    pub fn country_code(&self) -> u16 {
        self.country_code
    }

    /// The masked form for logs and events: `+1415*****23`.
    pub fn masked(&self) -> String {
        mask(&self.e164)
    }
}

/// Masks an E.164 string: keeps `+`, the first four and the last two digits.
///
/// Works on any string so that even an unvalidated number can be logged safely.
pub fn mask(number: &str) -> String {
    let digits: Vec<char> = number.chars().filter(char::is_ascii_digit).collect();
    if digits.len() < 8 {
        return "+*******".to_owned();
    }
    let keep_tail = digits.len() - 2;
    let mut out = String::with_capacity(digits.len() + 1);
    out.push('+');
    for (i, d) in digits.iter().enumerate() {
        out.push(if i < 4 || i >= keep_tail { *d } else { '*' });
    }
    out
}

/// Masks every run of seven or more digits in free text (error messages that
/// may quote a number back), so such text can be logged and returned.
pub fn redact_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 7 {
            out.push_str(&"*".repeat(run.len()));
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_digit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// Shows a text with every run of 7 or more digits starred, as
/// [`redact_numbers`] does, for logging identifiers that senders choose (a
/// phone number put in a `request_id`). Writes the text as is, without
/// allocating, when it has no such run.
pub struct Redacted<'a>(pub &'a str);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut run = 0;
        let long_run = self.0.bytes().any(|b| {
            run = if b.is_ascii_digit() { run + 1 } else { 0 };
            run >= 7
        });
        if long_run { f.write_str(&redact_numbers(self.0)) } else { f.write_str(self.0) }
    }
}

impl fmt::Display for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Debug for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Phone({})", self.masked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_logged_with_long_digit_runs_starred() {
        assert_eq!(Redacted("login-+14155550123-1").to_string(), "login-+***********-1");
        assert_eq!(Redacted("order-42-login-123456").to_string(), "order-42-login-123456", "short runs stay");
    }

    #[test]
    fn accepts_valid_e164_numbers() {
        for n in ["+14155550123", "+447911123456", "+919876543210", "+4915123456789"] {
            let p = Phone::parse(n).unwrap_or_else(|e| panic!("{n}: {e}"));
            assert_eq!(p.e164(), n);
        }
        assert_eq!(Phone::parse("+919876543210").unwrap().country_code(), 91);
    }

    #[test]
    fn refuses_malformed_numbers() {
        for n in
            ["", "14155550123", "+1 415 555 0123", "+1415555", "+1234567890123456", "+1415abc0123", "++14155550123"]
        {
            assert_eq!(Phone::parse(n), Err(PhoneError::NotE164), "{n}");
        }
    }

    #[test]
    fn refuses_a_trunk_prefix_after_the_country_code() {
        // Found by tests/fuzz.rs: libphonenumber would normalize it to +4930000.
        assert_eq!(Phone::parse("+49030000"), Err(PhoneError::NotE164));
        assert_eq!(Phone::parse("+4930123456").map(|p| p.e164().to_owned()), Ok("+4930123456".to_owned()));
    }

    #[test]
    fn refuses_unassigned_numbers() {
        assert_eq!(Phone::parse("+10005550123"), Err(PhoneError::Invalid));
        assert_eq!(Phone::parse("+99912345678"), Err(PhoneError::Invalid));
    }

    #[test]
    fn masks_the_middle_digits() {
        let p = Phone::parse("+14155550123").unwrap();
        assert_eq!(p.masked(), "+1415*****23");
        assert_eq!(format!("{p}"), "+1415*****23");
        assert!(!format!("{p:?}").contains("5550123"));
        assert_eq!(mask("+44"), "+*******");
    }

    #[test]
    fn redacts_long_digit_runs_only() {
        assert_eq!(
            redact_numbers("integer `14155550123`, line 1 column 42"),
            "integer `***********`, line 1 column 42"
        );
    }
}
