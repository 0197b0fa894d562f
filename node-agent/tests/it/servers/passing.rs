//! Requests and streams passed through to model servers.

use super::*;

#[tokio::test]
async fn requests_pass_through_and_streams_arrive_chunk_by_chunk() {
    let agent = agent_with(&[server("srv-a", &["--token-delay-ms", "40"], "")]).await;

    // Not loaded: the request switches first (trigger auto), as every inference route does.
    let r = post_chat(&agent, "srv-a", 3, false).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-vramkeeper-switched"], "none -> srv-a");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "tok0 tok1 tok2 ");
    let (_, h) = agent.get("/v1/history?window=3600").await;
    assert_eq!(
        h["switches"].as_array().unwrap().last().unwrap()["trigger"],
        "auto"
    );

    let (code, completion) = agent
        .post(
            "/v1/completions",
            json!({"model": "srv-a", "prompt": "x", "max_tokens": 2}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{completion}");
    assert_eq!(completion["choices"][0]["text"], "tok0 tok1 ");
    let (code, embedded) = agent
        .post(
            "/v1/embeddings",
            json!({"model": "srv-a", "input": ["a", "b"]}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{embedded}");
    assert_eq!(embedded["data"].as_array().unwrap().len(), 2);

    // A stream: the first chunk reaches the client before the server produced the last
    // token (each chunk says when it was produced), so nothing buffers the stream.
    let mut r = post_chat(&agent, "srv-a", 12, true).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut text = String::new();
    let mut first_seen_at = None;
    while let Some(chunk) = r.chunk().await.unwrap() {
        if first_seen_at.is_none() && !chunk.is_empty() {
            first_seen_at = Some(now_s());
        }
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let events: Vec<Value> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(events.len(), 13, "12 tokens and the final chunk: {text}");
    assert!(text.trim_end().ends_with("data: [DONE]"));
    let last_produced = events.last().unwrap()["created"].as_f64().unwrap();
    assert!(
        first_seen_at.unwrap() < last_produced,
        "the first chunk arrived only after the last token was produced: buffered"
    );

    // Requests are counted per model.
    let (_, metrics) = agent.get_text("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("model=\"srv-a\"") && l.contains("request")),
        "{metrics}"
    );
}

fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test]
async fn a_client_that_leaves_cancels_the_upstream_request() {
    let agent = agent_with(&[server("srv-a", &["--token-delay-ms", "100"], "")]).await;
    switch(&agent, "srv-a").await;
    let port = fixture_port(&agent, "srv-a").await;
    let mut r = post_chat(&agent, "srv-a", 1000, true).await;
    let first = r.chunk().await.unwrap().expect("a first chunk");
    assert!(!first.is_empty());
    wait_until("the stream runs upstream", DEADLINE, || async {
        fixture_stats(port).await["in_flight"] == 1
    })
    .await;
    drop(r);
    wait_until(
        "the server sees the request cancelled",
        DEADLINE,
        || async {
            let stats = fixture_stats(port).await;
            stats["cancelled"] == 1 && stats["in_flight"] == 0
        },
    )
    .await;
    // The model is free again: a switch does not wait for a drain.
    switch(&agent, "tiny-a").await;
}

#[tokio::test]
async fn an_unload_ends_a_stream_that_outlasts_the_drain_timeout() {
    let agent = Agent::start(AgentOptions {
        args: vec![
            "--enable-test-ops".into(),
            "--drain-timeout-s".into(),
            "1".into(),
        ],
        catalog: Some(format!(
            "{SMALL_CATALOG}{}",
            server("srv-a", &["--token-delay-ms", "100"], "")
        )),
        ..Default::default()
    })
    .await;
    let mut r = post_chat(&agent, "srv-a", 100_000, true).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.chunk().await.unwrap().expect("a first chunk");
    let (code, unloaded) = agent.post("/v1/models/unload", json!({})).await;
    assert_eq!(code, StatusCode::OK, "{unloaded}");
    assert_eq!(unloaded["release"]["verified"], true, "{unloaded}");
    // The stream ended (cut short: no [DONE]) rather than holding the model forever.
    let mut rest = String::new();
    while let Ok(Some(chunk)) = r.chunk().await {
        rest.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!rest.contains("[DONE]"));
    assert!(procs::marked_by(&agent.agent_id).is_empty());
}

#[tokio::test]
async fn concurrent_requests_for_two_servers_never_put_both_up() {
    let agent = agent_with(&[
        server("srv-a", &["--hold-mib", "10"], ""),
        server("srv-b", &["--hold-mib", "10"], ""),
    ])
    .await;
    let url = agent.url.clone();
    let client = reqwest::Client::new();
    let requests = (0..12).map(|i| {
        let client = client.clone();
        let url = url.clone();
        let model = if i % 2 == 0 { "srv-a" } else { "srv-b" };
        tokio::spawn(async move {
            let r = client
                .post(format!("{url}/v1/chat/completions"))
                .json(&chat(model, 2, true))
                .send()
                .await
                .unwrap();
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            (status, text)
        })
    });
    let requests: Vec<_> = requests.collect();
    let agent_id = agent.agent_id.clone();
    let both = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (both, stop) = (both.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let models: Vec<Option<String>> = procs::marked_by(&agent_id)
                    .into_iter()
                    .map(|(_, m)| m)
                    .collect();
                let up = |name: &str| models.iter().any(|m| m.as_deref() == Some(name));
                if up("srv-a") && up("srv-b") {
                    both.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
    };
    for r in requests {
        let (status, text) = r.await.unwrap();
        assert!(
            status == StatusCode::OK || status == StatusCode::CONFLICT,
            "{status}: {text}"
        );
        if status == StatusCode::OK {
            assert!(text.contains("[DONE]"), "{text}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    watcher.await.unwrap();
    assert_eq!(
        both.load(Ordering::Relaxed),
        0,
        "both servers' processes were seen up at once"
    );
    let models: Vec<_> = procs::marked_by(&agent.agent_id);
    assert!(models.len() <= 2, "{models:?}");
}
