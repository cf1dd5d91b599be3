//! R: raw JetStream, the reference every figure is read against (these machines vary
//! twofold from run to run).

use std::time::Instant;

use crate::{Args, deployment::Nats, results::Results};
use futures::StreamExt;

/// R: the substrate's limit, measured the same way in the same run: publish, consume
/// and ack on a file-backed stream (with as many replicas as taskwire's streams get),
/// and a publish -> consume -> ack -> reply round trip.
pub async fn run(args: &Args, r: &mut Results) {
    use async_nats::jetstream::{self, consumer::pull, stream};
    let nats = Nats::start(args.nats_nodes.into()).await;
    let client = taskwire::nats::connect(&nats.url(), "bench", std::time::Duration::from_secs(5))
        .await
        .expect("connect");
    let js = jetstream::new(client.clone());
    let s = js
        .create_stream(stream::Config {
            name: "RAW".into(),
            subjects: vec!["raw.>".into()],
            storage: stream::StorageType::File,
            num_replicas: nats.replicas(),
            ..Default::default()
        })
        .await
        .expect("stream");
    let consumer: jetstream::consumer::PullConsumer = s
        .create_consumer(pull::Config {
            durable_name: Some("raw".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let n = args.n;
    let started = Instant::now();
    // Publish with up to 256 acks in flight, while consuming and acking.
    let publish = async {
        let mut acks = futures::stream::FuturesUnordered::new();
        for i in 0..n {
            let ack = js
                .publish("raw.x", bytes::Bytes::from(format!("{i}")))
                .await
                .expect("publish");
            acks.push(std::future::IntoFuture::into_future(ack));
            if acks.len() >= 256 {
                acks.next().await.expect("ack").expect("stored");
            }
        }
        while let Some(a) = acks.next().await {
            a.expect("stored");
        }
    };
    let mut messages = consumer.messages().await.expect("messages");
    let consume = async {
        for _ in 0..n {
            let m = messages.next().await.expect("message").expect("ok");
            m.ack().await.expect("ack");
        }
    };
    tokio::join!(publish, consume);
    r.add(
        "R",
        "-",
        "publish+consume+ack throughput",
        n as f64 / started.elapsed().as_secs_f64(),
        "msg/s",
    );

    // Round trip: a responder consumes, acks, and replies on core NATS.
    let responder = {
        let client = client.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = messages.next().await {
                let reply = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Reply-To"))
                    .map(|v| v.to_string());
                m.ack().await.expect("ack");
                if let Some(to) = reply {
                    client
                        .publish(to, bytes::Bytes::new())
                        .await
                        .expect("reply");
                }
            }
        })
    };
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.expect("sub");
    let mut lat = Vec::new();
    for _ in 0..args.round_trips {
        let t = Instant::now();
        let mut h = async_nats::HeaderMap::new();
        h.insert("Reply-To", inbox.as_str());
        js.publish_with_headers("raw.rt", h, bytes::Bytes::new())
            .await
            .expect("pub")
            .await
            .expect("stored");
        replies.next().await.expect("reply");
        lat.push(t.elapsed());
    }
    responder.abort();
    r.latencies("R", "-", "round trip", lat);
}
