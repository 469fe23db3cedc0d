//! Scaling the generator past one process: two generator shards on one
//! broker split the numbers between their own sled stores. Producers keep
//! publishing the contract's `request` key (a shard forwards what it does not
//! own), and any shard's HTTP API answers for any number (calls are forwarded
//! to the owner).

mod common;

use common::{API_KEY, TestEnv};
use lapin::options::QueueDeleteOptions;
use otp_pipeline::app::GeneratorApp;
use otp_pipeline::domain::sharding::shard_of;
use otp_pipeline::domain::{Clock, RawRequest, ReplyStatus};
use serde_json::json;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// A free loopback port (bound, read, released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET /v1/otp/{id}` answered by that shard alone (marked as forwarded, so not forwarded again).
async fn local_status(http: &reqwest::Client, shard_url: &str, request_id: &str) -> u16 {
    let request = http.get(format!("{shard_url}/v1/otp/{request_id}")).bearer_auth(API_KEY);
    request.header("x-otp-forwarded", "1").send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_generator_shards_split_the_numbers_and_answer_for_each_other() {
    let ports = [free_port(), free_port()];
    let urls: Vec<String> = ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
    let env = TestEnv::start_with(|c, _| {
        c.broker.shards = 2;
        c.generator.shard = 0;
        c.generator.shard_urls = urls.clone();
        c.http.listen = format!("127.0.0.1:{}", ports[0]).parse().unwrap();
    })
    .await;
    // Shard 1: same broker and prefix, its own store and port.
    let other_dir = tempfile::tempdir().unwrap();
    let mut config = env.config.clone();
    config.generator.shard = 1;
    config.http.listen = format!("127.0.0.1:{}", ports[1]).parse().unwrap();
    config.store.data_dir = other_dir.path().to_owned();
    // Every process of a deployment shares the key that seals internal messages.
    config.broker.internal_key_file = Some(env.data_dir().join("internal.key"));
    let clock: Arc<dyn Clock> = Arc::new(env.clock.clone());
    let shard1 = GeneratorApp::build(&config, clock).await.expect("shard 1 builds");
    let broker1 = shard1.broker();
    let stop1 = CancellationToken::new();
    let running1 = tokio::spawn({
        let stop = stop1.clone();
        async move { shard1.run(stop).await.expect("shard 1 runs") }
    });
    assert!(broker1.wait_connected(std::time::Duration::from_secs(15)).await);
    assert_eq!(broker1.topology().requests, format!("{}otp.requests.1", env.prefix));

    // Producers publish the contract's `request` key and get their reply from the owner.
    let phones: Vec<String> = (0..16).map(|i| format!("+1415555{:04}", 3000 + i)).collect();
    let owners: Vec<u16> = phones.iter().map(|p| shard_of(p, 2)).collect();
    assert!(owners.contains(&0) && owners.contains(&1), "the numbers cover both shards: {owners:?}");
    for (i, phone) in phones.iter().enumerate() {
        let request = RawRequest { request_id: format!("shard-{i}"), phone: phone.clone(), ..Default::default() };
        assert_eq!(env.publish(&request).await.status, ReplyStatus::Accepted, "{phone}");
    }

    // Each request lives in its owner's store only (a forwarded call is not forwarded again).
    let http = reqwest::Client::new();
    for (i, owner) in owners.iter().enumerate() {
        for (shard, url) in urls.iter().enumerate() {
            let status = local_status(&http, url, &format!("shard-{i}")).await;
            let expected = if usize::from(*owner) == shard { 200 } else { 404 };
            assert_eq!(status, expected, "request shard-{i} on shard {shard} (owner {owner})");
        }
    }

    // A producer that knows the shards publishes straight to the owner's key.
    let sharded = otp_pipeline::broker::Topology::new(&env.prefix, None).sharded(None, 2);
    for i in 0..4 {
        let phone = format!("+1415555{:04}", 3100 + i);
        let request = RawRequest { request_id: format!("direct-{i}"), phone: phone.clone(), ..Default::default() };
        let wait = Some(std::time::Duration::from_secs(15));
        let reply = otp_pipeline::client::publish(&env.config.broker.url, &sharded, &request, wait).await.unwrap();
        assert_eq!(reply.map(|r| r.status), Some(ReplyStatus::Accepted));
        let owner = &urls[usize::from(shard_of(&phone, 2))];
        let found = local_status(&http, owner, &format!("direct-{i}")).await;
        assert_eq!(found, 200, "direct-{i} is on its owner");
    }

    // Any shard answers for any number: verify every code through shard 0,
    // read every request's state through shard 1.
    for (i, phone) in phones.iter().enumerate() {
        let code = env.code_for(&format!("shard-{i}")).await;
        assert_eq!(env.verify(phone, &code).await, (200, json!({"status": "approved"})), "{phone}");
        let view: serde_json::Value = http
            .get(format!("{}/v1/otp/shard-{i}", urls[1]))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(view["status"], "verified", "{view}");
    }

    // POST /v1/otp on the wrong shard is answered by the owner.
    let phone = phones.iter().zip(&owners).find(|(_, o)| **o == 0).unwrap().0;
    let request = json!({"request_id": "shard-http", "phone": phone});
    let answer = http.post(format!("{}/v1/otp", urls[1])).bearer_auth(API_KEY).json(&request).send().await.unwrap();
    assert_eq!(answer.status(), 429, "the owner's resend cooldown for {phone} applies, wherever the call lands");

    let metrics = http.get(format!("{}/metrics", urls[0])).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("otp_requests_total{outcome=\"forwarded\"}"), "forwarding is counted");

    stop1.cancel();
    running1.await.unwrap();
    let prefix = env.prefix.clone();
    env.teardown().await;
    // The shards' own queues, once no shard is left to declare them again.
    let (connection, channel) = common::open_channel().await;
    for queue in ["otp.requests.0", "otp.requests.1", "otp.status.0", "otp.status.1"] {
        let name = format!("{prefix}{queue}");
        channel.queue_delete(name.as_str().into(), QueueDeleteOptions::default()).await.unwrap();
    }
    let _ = connection.close(200, "bye".into()).await;
}

/// For a RabbitMQ cluster: the same pipeline on quorum queues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_on_quorum_queues() {
    let env = TestEnv::start_with(|c, _| c.broker.queue_type = otp_pipeline::config::QueueType::Quorum).await;
    let reply = env.publish(&env.request("quorum-1")).await;
    assert_eq!(reply.status, ReplyStatus::Accepted);
    let code = env.code_for("quorum-1").await;
    assert_eq!(env.verify(common::PHONE, &code).await.0, 200);
    let listed = std::process::Command::new("rabbitmqctl")
        .args(["list_queues", "name", "type", "--quiet", "--no-table-headers"])
        .output()
        .expect("rabbitmqctl runs");
    let text = String::from_utf8_lossy(&listed.stdout);
    let ours: Vec<&str> = text.lines().filter(|l| l.starts_with(&env.prefix)).collect();
    assert!(ours.len() >= 4 && ours.iter().all(|l| l.ends_with("quorum")), "{ours:?}");
    env.teardown().await;
}
