//! otp-pipeline: a self-hosted, queue-native OTP service.
//!
//! Requests arrive on RabbitMQ (or `POST /v1/otp`); the [`generator`] issues a
//! code and stores only its keyed digest in sled ([`store`]); [`sender`]
//! workers push the SMS through [`carriers`]; applications verify codes over
//! [`http`]. See `README.md` for the public contract.

pub mod app;
pub mod broker;
pub mod carriers;
pub mod client;
pub mod config;
pub mod domain;
pub mod generator;
pub mod http;
pub mod probe;
pub mod secrets;
pub mod sender;
pub mod store;
pub mod supervisor;
pub mod telemetry;
