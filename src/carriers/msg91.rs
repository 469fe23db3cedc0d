//! Msg91.

use crate::broker::BoxFuture;
use crate::carriers::{Accepted, Carrier, CarrierConfigError, CarrierError, Sms};
use crate::config::Msg91Config;

/// Sends through Msg91.
pub struct Msg91 {
    _config: Msg91Config,
}

impl Msg91 {
    /// Checks the configuration and builds the client.
    pub fn new(config: &Msg91Config) -> Result<Self, CarrierConfigError> {
        Ok(Self { _config: config.clone() })
    }
}

impl Carrier for Msg91 {
    fn name(&self) -> &'static str {
        "msg91"
    }

    fn send<'a>(&'a self, _sms: &'a Sms) -> BoxFuture<'a, Result<Accepted, CarrierError>> {
        todo!("helper fills in")
    }
}
