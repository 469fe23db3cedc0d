//! Twilio Programmable Messaging.

use crate::broker::BoxFuture;
use crate::carriers::{Accepted, Carrier, CarrierConfigError, CarrierError, Sms};
use crate::config::TwilioConfig;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// `X-Twilio-Signature` of a callback: Base64(HMAC-SHA1(auth token, URL
/// followed by every POST parameter's name and value, sorted by name)).
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()).expect("HMAC takes keys of any size");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Sends through Twilio's Messages resource.
pub struct Twilio {
    _config: TwilioConfig,
}

impl Twilio {
    /// Checks the configuration and builds the client.
    pub fn new(config: &TwilioConfig) -> Result<Self, CarrierConfigError> {
        Ok(Self { _config: config.clone() })
    }
}

impl Carrier for Twilio {
    fn name(&self) -> &'static str {
        "twilio"
    }

    fn send<'a>(&'a self, _sms: &'a Sms) -> BoxFuture<'a, Result<Accepted, CarrierError>> {
        todo!("helper fills in")
    }
}
