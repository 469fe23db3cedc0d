//! Small helpers the carrier adapters share.

/// Parses an http(s) URL; anything else is `None`.
pub fn http_url(raw: &str) -> Option<reqwest::Url> {
    reqwest::Url::parse(raw.trim()).ok().filter(|url| matches!(url.scheme(), "http" | "https"))
}

/// An optional setting, empty counting as unset.
pub fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// An optional secret, empty counting as unset.
pub fn non_empty_secret(value: &Option<crate::config::Secret>) -> Option<&str> {
    value.as_ref().map(|s| s.expose().trim()).filter(|v| !v.is_empty())
}

/// Keeps carrier texts in error reasons short (200 characters).
pub fn short(text: &str) -> String {
    text.chars().take(200).collect()
}
