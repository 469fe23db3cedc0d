//! Vonage.

use crate::broker::BoxFuture;
use crate::carriers::{Accepted, Carrier, CarrierConfigError, CarrierError, Sms};
use crate::config::VonageConfig;

/// Sends through Vonage.
pub struct Vonage {
    _config: VonageConfig,
}

impl Vonage {
    /// Checks the configuration and builds the client.
    pub fn new(config: &VonageConfig) -> Result<Self, CarrierConfigError> {
        Ok(Self { _config: config.clone() })
    }
}

impl Carrier for Vonage {
    fn name(&self) -> &'static str {
        "vonage"
    }

    fn send<'a>(&'a self, _sms: &'a Sms) -> BoxFuture<'a, Result<Accepted, CarrierError>> {
        todo!("helper fills in")
    }
}
