//! The development carrier: prints each SMS to standard output.

use crate::broker::BoxFuture;
use crate::carriers::{Accepted, Carrier, CarrierError, CarrierKind, Sms};
use std::io::Write;

/// Prints SMS to stdout (not to the log). For development only: the code is
/// shown in clear, which is the point.
#[derive(Debug, Default, Clone, Copy)]
pub struct Console;

impl Carrier for Console {
    fn kind(&self) -> CarrierKind {
        CarrierKind::Console
    }

    fn send<'a>(&'a self, sms: &'a Sms) -> BoxFuture<'a, Result<Accepted, CarrierError>> {
        Box::pin(async move {
            let line = format!(
                "📱 SMS to {} (request {}): {}\n",
                crate::domain::phone::mask(&sms.to),
                sms.request_id,
                sms.text
            );
            let mut out = std::io::stdout().lock();
            out.write_all(line.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|e| CarrierError::Retryable { reason: format!("stdout: {e}"), retry_after: None })?;
            Ok(Accepted { carrier_message_id: Some(format!("console-{}", sms.delivery_id)) })
        })
    }
}
