//! Retention and operators' reads: the sweeper (expired codes announced,
//! old records removed), request status, quarantines and their lifting.

use super::{Generator, GeneratorError};
use crate::domain::limits::Quarantine;
use crate::domain::{Event, EventKind};
use crate::store::{RequestRecord, SweepReport};

impl Generator {
    /// Runs the store's sweeper once and announces codes that expired unused.
    pub async fn sweep(&self, retention: time::Duration) -> Result<SweepReport, GeneratorError> {
        let now = self.clock.now();
        let report = self.track(self.writer.sweep(now, retention).await)?;
        for (request_id, phone) in &report.expired {
            let mut event = Event::new(EventKind::Expired, Some(request_id.clone()), phone, now);
            event.error = Some("not verified in time".into());
            if let Err(e) = self.outbox.announce(event).await {
                tracing::warn!(error = %e, "could not publish event.expired");
            }
        }
        if report != SweepReport::default() {
            tracing::info!(
                expired = report.expired.len(),
                requests = report.requests,
                limits = report.limits,
                "sweeper removed stale records"
            );
        }
        Ok(report)
    }

    /// The status record of a request.
    pub fn request(&self, request_id: &str) -> Result<Option<RequestRecord>, GeneratorError> {
        Ok(self.track(self.store.request(request_id))?)
    }

    /// The quarantines in force.
    pub fn quarantines(&self) -> Result<Vec<Quarantine>, GeneratorError> {
        Ok(self.track(self.store.quarantines(self.clock.now()))?)
    }

    /// Lifts a quarantine by an operator's decision.
    pub async fn lift_quarantine(&self, prefix: &str) -> Result<bool, GeneratorError> {
        let lifted = self.track(self.writer.lift_quarantine(prefix, self.clock.now()).await)?;
        tracing::warn!(prefix, lifted, "quarantine lifted by an operator");
        Ok(lifted)
    }
}
