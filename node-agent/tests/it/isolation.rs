//! Single-model isolation at every instant: under a storm of concurrent switches, the process
//! table never holds two workers of the agent, and every request gets its turn.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};

use reqwest::StatusCode;
use serde_json::json;
use vramkeeper_e2e::{Agent, procs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_switches_never_overlap_workers() {
    let agent = Agent::small(&[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicUsize::new(0));
    let polls = Arc::new(AtomicUsize::new(0));
    let poller = {
        let (stop, most, polls, id) = (
            stop.clone(),
            most.clone(),
            polls.clone(),
            agent.agent_id.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                most.fetch_max(procs::workers_of(&id).len(), Ordering::Relaxed);
                std::thread::yield_now();
                polls.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let client = reqwest::Client::new();
    let mut ok = 0;
    let mut busy = 0;
    for round in 0..6 {
        let requests: Vec<_> = (0..4)
            .map(|i| {
                let model = if (round + i) % 2 == 0 {
                    "tiny-a"
                } else {
                    "tiny-b"
                };
                let (client, url) = (client.clone(), agent.url.clone());
                tokio::spawn(async move {
                    let (path, body) = if i % 2 == 0 {
                        ("/v1/models/switch", json!({"model": model}))
                    } else {
                        ("/v1/infer", json!({"model": model, "tokens": [1, 2]}))
                    };
                    client
                        .post(format!("{url}{path}"))
                        .json(&body)
                        .send()
                        .await
                        .unwrap()
                        .status()
                })
            })
            .collect();
        for request in requests {
            let status = request.await.unwrap();
            match status {
                StatusCode::OK => ok += 1,
                StatusCode::CONFLICT => busy += 1,
                other => panic!("unexpected {other}"),
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    poller.join().unwrap();
    assert!(polls.load(Ordering::Relaxed) > 100, "the poller ran");
    // Every request waits its turn in the device's queue: none is turned away.
    assert_eq!((ok, busy), (24, 0), "{ok} succeeded, {busy} busy");
    assert_eq!(
        most.load(Ordering::Relaxed),
        1,
        "two workers were alive at once"
    );
    let (_, h) = agent.get("/v1/history?window=3600").await;
    let switches = h["switches"].as_array().unwrap();
    // Every switch unloaded the model it replaced before loading.
    for pair in switches.windows(2) {
        assert_eq!(pair[1]["from"], pair[0]["to"], "{pair:?}");
    }
}
