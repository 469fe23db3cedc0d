//! The contract's exchanges and queues, named from a configurable prefix.

use lapin::options::{ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};

/// Every name of the AMQP contract, with the prefix applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Topic exchange producers publish to (`otp`); events reach it from
    /// `internal`.
    pub exchange: String,
    /// Topic exchange of the service's own hops (`otp.internal`): deliveries,
    /// status events and receipts. Only the
    /// service's RabbitMQ user may write to it; it forwards `event.#` to
    /// `exchange`.
    pub internal: String,
    /// Requests queue (`otp.requests`).
    pub requests: String,
    /// Deliveries queue (`otp.deliveries`, internal).
    pub deliveries: String,
    /// The generator's queue of sender status events (`otp.status`, internal).
    pub status: String,
    /// Dead-letter exchange (`otp.dlx`).
    pub dlx: String,
    /// Dead-letter queue (`otp.dead`).
    pub dead: String,
    /// Where producers' `request` messages land (`otp.requests`); the same as
    /// `requests` unless sharded, when every shard takes from it and forwards
    /// what another shard owns.
    pub ingress: String,
    /// Generator shards (1: not sharded).
    pub shards: u16,
    /// This process's shard, for a sharded generator.
    pub shard: Option<u16>,
    /// Quorum queues (replicated, for a RabbitMQ cluster) instead of classic ones.
    pub quorum: bool,
    queue_expires_ms: Option<u32>,
}

impl Topology {
    /// Routing key of requests.
    pub const REQUEST_KEY: &'static str = "request";
    /// Routing key of deliveries.
    pub const DELIVERY_KEY: &'static str = "delivery";
    /// Routing key of carriers' delivery receipts (sender → generator, internal).
    pub const RECEIPT_KEY: &'static str = "receipt";
    /// What the generator follows to keep request status: senders' outcomes and receipts.
    pub const STATUS_KEYS: [&'static str; 3] = ["event.sent", "event.failed", Self::RECEIPT_KEY];
    /// Header carrying why a message was dead-lettered.
    pub const ERROR_HEADER: &'static str = "x-otp-error";
    /// Header carrying the dead-letter reason code.
    pub const REASON_HEADER: &'static str = "x-otp-reason";
    /// Set on a dead letter whose original headers were too large to copy.
    pub const HEADERS_DROPPED_HEADER: &'static str = "x-otp-headers-dropped";
    /// Header carrying an internal message's seal (see [`crate::domain::SealRing`]).
    pub const SEAL_HEADER: &'static str = "x-otp-seal";
    /// Header naming the application (scoped API key) a request was made
    /// for; trusted only under a valid seal.
    pub const OWNER_HEADER: &'static str = "x-otp-owner";
    /// What `internal` forwards to the public exchange.
    pub const PUBLIC_KEYS: &'static str = "event.#";

    /// Names under `prefix` (empty for the contract's defaults).
    /// `queue_expires_ms` (tests only) lets idle queues delete themselves,
    /// and the exchanges with them.
    pub fn new(prefix: &str, queue_expires_ms: Option<u32>) -> Self {
        let name = |s: &str| format!("{prefix}{s}");
        Self {
            exchange: name("otp"),
            internal: name("otp.internal"),
            requests: name("otp.requests"),
            deliveries: name("otp.deliveries"),
            status: name("otp.status"),
            dlx: name("otp.dlx"),
            dead: name("otp.dead"),
            ingress: name("otp.requests"),
            shards: 1,
            shard: None,
            quorum: false,
            queue_expires_ms,
        }
    }

    /// Declares quorum queues (for a RabbitMQ cluster) if `quorum`.
    pub fn quorum(mut self, quorum: bool) -> Self {
        self.quorum = quorum;
        self
    }

    /// The names for one of `shards` generator shards (`shard`), or for a
    /// sender of a sharded deployment (`None`): shard `k` consumes
    /// `otp.requests.k` (routing key `request.k`) and `otp.status.k`, and
    /// takes from the shared `otp.requests` to forward what it does not own.
    pub fn sharded(mut self, shard: Option<u16>, shards: u16) -> Self {
        self.shards = shards.max(1);
        if self.shards > 1
            && let Some(k) = shard
        {
            self.requests = format!("{}.{k}", self.ingress);
            self.status = format!("{}.{k}", self.status);
            self.shard = Some(k);
        }
        self
    }

    /// The routing key that reaches the owner of `e164`'s requests.
    pub fn request_key_for(&self, e164: &str) -> String {
        if self.shards > 1 {
            crate::domain::sharding::request_key(crate::domain::sharding::shard_of(e164, self.shards))
        } else {
            Self::REQUEST_KEY.to_owned()
        }
    }

    fn queue_args(&self, dead_letter: bool) -> FieldTable {
        let mut args = FieldTable::default();
        if dead_letter {
            args.insert(ShortString::from("x-dead-letter-exchange"), AMQPValue::LongString(self.dlx.as_str().into()));
        }
        if let Some(ms) = self.queue_expires_ms {
            args.insert(ShortString::from("x-expires"), AMQPValue::LongUInt(ms));
        }
        if self.quorum {
            args.insert(ShortString::from("x-queue-type"), AMQPValue::LongString("quorum".into()));
            // A message that keeps failing is dead-lettered, never redelivered forever.
            args.insert(ShortString::from("x-delivery-limit"), AMQPValue::LongUInt(20));
        }
        args
    }

    /// Declares (idempotently) everything: durable exchanges and queues,
    /// bindings, and the dead-letter route of each work queue. Internal
    /// queues are bound to `internal` only; bindings of older versions that
    /// fed them from the public exchange are removed.
    pub async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        // With expiring queues (tests), exchanges go once their last queue has.
        let durable = ExchangeDeclareOptions {
            durable: true,
            auto_delete: self.queue_expires_ms.is_some(),
            ..Default::default()
        };
        for exchange in [&self.exchange, &self.internal, &self.dlx] {
            channel
                .exchange_declare(exchange.as_str().into(), ExchangeKind::Topic, durable, FieldTable::default())
                .await?;
        }
        channel
            .exchange_bind(
                self.exchange.as_str().into(),
                self.internal.as_str().into(),
                Self::PUBLIC_KEYS.into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let queue = QueueDeclareOptions { durable: true, ..Default::default() };
        for (name, exchange, keys) in self.work_queues() {
            channel.queue_declare(name.as_str().into(), queue, self.queue_args(true)).await?;
            for key in &keys {
                channel
                    .queue_bind(
                        name.as_str().into(),
                        exchange.as_str().into(),
                        key.as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                if exchange == &self.internal {
                    // Before 0.3, internal queues were fed from the public exchange.
                    channel
                        .queue_unbind(
                            name.as_str().into(),
                            self.exchange.as_str().into(),
                            key.as_str().into(),
                            FieldTable::default(),
                        )
                        .await?;
                }
            }
        }
        channel.queue_declare(self.dead.as_str().into(), queue, self.queue_args(false)).await?;
        channel
            .queue_bind(
                self.dead.as_str().into(),
                self.dlx.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    /// Each work queue this process declares, its exchange and binding keys:
    /// producers' requests from the public exchange, everything else from
    /// the internal one.
    fn work_queues(&self) -> Vec<(&String, &String, Vec<String>)> {
        let mut work = vec![
            (&self.ingress, &self.exchange, vec![Self::REQUEST_KEY.to_owned()]),
            (&self.deliveries, &self.internal, vec![Self::DELIVERY_KEY.to_owned()]),
        ];
        // A sharded sender declares no status queue: each shard has its own.
        if self.shards <= 1 || self.shard.is_some() {
            work.push((&self.status, &self.internal, Self::STATUS_KEYS.map(str::to_owned).to_vec()));
        }
        if let Some(k) = self.shard.filter(|_| self.shards > 1) {
            // Requests like any other: producers that know the shards publish here too.
            work.push((&self.requests, &self.exchange, vec![crate::domain::sharding::request_key(k)]));
        }
        work
    }

    /// Whether messages on `queue` must carry the service's seal: every
    /// queue but the requests queues (producers') and the dead letters.
    pub fn is_internal(&self, queue: &str) -> bool {
        queue != self.ingress && queue != self.requests && queue != self.dead
    }

    /// The exchange a message with `routing_key` is published to by the
    /// service: requests (`request`, `request.<shard>`: `POST /v1/otp` and
    /// forwards between shards) to the public one, like any producer's;
    /// everything else to the internal one.
    pub fn exchange_for(&self, routing_key: &str) -> &str {
        let request = routing_key == Self::REQUEST_KEY || routing_key.starts_with("request.");
        if request { &self.exchange } else { &self.internal }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_are_the_contract() {
        let t = Topology::new("", None);
        assert_eq!(
            [t.exchange.as_str(), &t.requests, &t.deliveries, &t.dlx, &t.dead],
            ["otp", "otp.requests", "otp.deliveries", "otp.dlx", "otp.dead"]
        );
    }

    #[test]
    fn a_shard_has_its_own_request_and_status_queues() {
        let t = Topology::new("t1.", None).sharded(Some(2), 3);
        assert_eq!(
            (t.requests.as_str(), t.status.as_str(), t.ingress.as_str()),
            ("t1.otp.requests.2", "t1.otp.status.2", "t1.otp.requests")
        );
        let unsharded = Topology::new("t1.", None).sharded(Some(0), 1);
        assert_eq!(unsharded, Topology::new("t1.", None));
        assert_eq!(unsharded.request_key_for("+14155550123"), "request");
        let key = t.request_key_for("+14155550123");
        assert!(["request.0", "request.1", "request.2"].contains(&key.as_str()), "{key}");
    }

    #[test]
    fn only_producers_requests_come_from_the_public_exchange() {
        let t = Topology::new("", None).sharded(Some(1), 2);
        let public: Vec<&String> = t.work_queues().into_iter().filter(|w| w.1 == &t.exchange).map(|w| w.0).collect();
        assert_eq!(public, [&t.ingress, &t.requests]);
        assert!(!t.is_internal(&t.ingress) && !t.is_internal(&t.requests) && t.is_internal(&t.deliveries));
        assert!(t.is_internal(&t.status));
        assert_eq!((t.exchange_for("request"), t.exchange_for("request.1")), ("otp", "otp"));
        assert_eq!(t.exchange_for("event.sent"), "otp.internal");
    }

    #[test]
    fn prefix_applies_to_every_name() {
        let t = Topology::new("t1.", None);
        for n in [&t.exchange, &t.internal, &t.requests, &t.deliveries, &t.status, &t.dlx, &t.dead] {
            assert!(n.starts_with("t1.otp"), "{n}");
        }
    }
}
