//! SMS texts rendered from named, per-locale templates.
//!
//! A template may use `{code}` (required), `{ttl_minutes}` and `{app}`.
//! Templates are checked when they are loaded, so rendering cannot fail.

use crate::domain::Code;
use std::collections::BTreeMap;
use time::Duration;

/// Why a template was refused at load time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The text does not contain `{code}`.
    #[error("template {0}/{1} must contain {{code}}")]
    MissingCode(String, String),
    /// The text uses a placeholder other than `{code}`, `{ttl_minutes}`, `{app}`, or an unclosed `{`.
    #[error(
        "template {0}/{1} has an unknown or unclosed placeholder {2:?} (allowed: {{code}}, {{ttl_minutes}}, {{app}})"
    )]
    BadPlaceholder(String, String, String),
}

const PLACEHOLDERS: [&str; 3] = ["code", "ttl_minutes", "app"];

/// The set of templates: name → locale → text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Templates {
    by_name: BTreeMap<String, BTreeMap<String, String>>,
}

impl Templates {
    /// The template used when a request names none.
    pub const DEFAULT_NAME: &'static str = "login";
    /// The locale used when a request names none.
    pub const DEFAULT_LOCALE: &'static str = "en";
    /// The built-in `login`/`en` text.
    pub const DEFAULT_TEXT: &'static str =
        "{app}: your verification code is {code}. It expires in {ttl_minutes} min. Never share it.";

    /// Builds the set from configuration, adding the built-in `login`/`en`
    /// text unless the configuration overrides it.
    pub fn new(configured: BTreeMap<String, BTreeMap<String, String>>) -> Result<Self, TemplateError> {
        let mut by_name = configured;
        by_name
            .entry(Self::DEFAULT_NAME.to_owned())
            .or_default()
            .entry(Self::DEFAULT_LOCALE.to_owned())
            .or_insert_with(|| Self::DEFAULT_TEXT.to_owned());
        for (name, locales) in &by_name {
            for (locale, text) in locales {
                check(name, locale, text)?;
            }
        }
        Ok(Self { by_name })
    }

    /// Whether `name`/`locale` exists.
    pub fn contains(&self, name: &str, locale: &str) -> bool {
        self.text(name, locale).is_some()
    }

    fn text(&self, name: &str, locale: &str) -> Option<&str> {
        self.by_name.get(name)?.get(locale).map(String::as_str)
    }

    /// Renders `name`/`locale`; `None` if it does not exist.
    pub fn render(&self, name: &str, locale: &str, code: &Code, ttl: Duration, app: &str) -> Option<String> {
        let text = self.text(name, locale)?;
        // Round up: a 90-second code "expires in 2 min", never "in 1 min".
        let minutes = ttl.whole_seconds().saturating_add(59) / 60;
        let mut out = String::with_capacity(text.len() + 16);
        let mut rest = text;
        while let Some(start) = rest.find('{') {
            out.push_str(&rest[..start]);
            let end = start + rest[start..].find('}').expect("checked at load");
            match &rest[start + 1..end] {
                "code" => out.push_str(code.expose()),
                "ttl_minutes" => out.push_str(&minutes.to_string()),
                _ => out.push_str(app),
            }
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        Some(out)
    }
}

impl Default for Templates {
    fn default() -> Self {
        Self::new(BTreeMap::new()).expect("the built-in template is valid")
    }
}

fn check(name: &str, locale: &str, text: &str) -> Result<(), TemplateError> {
    let bad = |p: &str| TemplateError::BadPlaceholder(name.to_owned(), locale.to_owned(), p.to_owned());
    let mut has_code = false;
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            return Err(bad(&rest[start..]));
        };
        let placeholder = &rest[start + 1..start + len];
        if !PLACEHOLDERS.contains(&placeholder) {
            return Err(bad(placeholder));
        }
        has_code |= placeholder == "code";
        rest = &rest[start + len + 1..];
    }
    if !has_code {
        return Err(TemplateError::MissingCode(name.to_owned(), locale.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str, locale: &str, text: &str) -> Result<Templates, TemplateError> {
        let mut m = BTreeMap::new();
        m.entry(name.to_owned()).or_insert_with(BTreeMap::new).insert(locale.to_owned(), text.to_owned());
        Templates::new(m)
    }

    #[test]
    fn renders_every_placeholder() {
        let t = set("reset", "de", "{app} Code {code}, gültig {ttl_minutes} Min. ({code})").unwrap();
        let code = Code::parse("042917").unwrap();
        let text = t.render("reset", "de", &code, Duration::seconds(90), "Shop").unwrap();
        assert_eq!(text, "Shop Code 042917, gültig 2 Min. (042917)");
    }

    #[test]
    fn default_template_is_always_there() {
        let t = Templates::default();
        let text = t.render("login", "en", &Code::parse("1234").unwrap(), Duration::minutes(5), "Acme").unwrap();
        assert_eq!(text, "Acme: your verification code is 1234. It expires in 5 min. Never share it.");
        assert!(t.render("login", "fr", &Code::parse("1234").unwrap(), Duration::minutes(5), "Acme").is_none());
    }

    #[test]
    fn bad_templates_are_refused_at_load() {
        assert!(matches!(set("a", "en", "no code here"), Err(TemplateError::MissingCode(..))));
        assert!(matches!(set("a", "en", "{code} {name}"), Err(TemplateError::BadPlaceholder(..))));
        assert!(matches!(set("a", "en", "{code} {oops"), Err(TemplateError::BadPlaceholder(..))));
    }
}
