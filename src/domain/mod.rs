//! The domain: phone numbers, codes, digests, requests, templates, verification
//! rules and the message types that cross the broker.
//!
//! Nothing in here does I/O: every function takes what it needs (including the
//! current time) as arguments, so the rules are unit-tested in isolation.

pub mod breaker;
pub mod clock;
pub mod code;
pub mod digest;
pub mod limits;
pub mod messages;
pub mod phone;
pub mod request;
pub mod routing;
pub mod seal;
pub mod sharding;
pub mod template;
pub mod verification;

pub use breaker::Breaker;
pub use clock::{Clock, ManualClock, SystemClock};
pub use code::{Code, CodeLength};
pub use digest::{CodeDigest, DigestKey, KeyRing};
pub use messages::{Delivery, Event, EventKind, ReceiptMessage, Reply, ReplyStatus, RequestStatus};
pub use phone::{Phone, PhoneError};
pub use request::{DecodeError, Limits, RawRequest, RejectReason, Rejection, ValidRequest};
pub use routing::{Route, Routes, RoutingError};
pub use seal::{SealError, SealKey, SealRing};
pub use template::{TemplateError, Templates};
pub use verification::{CodeRecord, Transition, VerifyOutcome, decide};
