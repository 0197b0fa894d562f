//! Generation under attack: a worker killed before its first token or in the middle of a
//! stream, a worker stopped (SIGSTOP) past the inference timeout, and clients that ask at the
//! same time. Each ends with a clear answer, nothing left hanging, and the next request served
//! by a working worker.

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use super::*;

fn signal(pid: u32, signal: Signal) {
    kill(Pid::from_raw(pid as i32), signal).unwrap();
}

/// POSTs `body` on a task of its own (the test acts while the request is in flight).
fn spawn_post(
    agent: &Agent,
    path: &str,
    body: Value,
) -> tokio::task::JoinHandle<reqwest::Response> {
    let url = format!("{}{path}", agent.url);
    tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .json(&body)
            .send()
            .await
            .unwrap()
    })
}

/// Loads `model` and returns its worker's pid.
async fn loaded(agent: &Agent, model: &str) -> u32 {
    let (code, body) = agent
        .post("/v1/models/switch", json!({"model": model}))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    serving(agent).await.1.expect("a worker pid")
}

/// The greedy completion still comes out right, from a worker other than `old`.
async fn serves_again(agent: &Agent, old: u32) {
    let (prompt, expected) = greedy_text("llama");
    let body = json!({"model": "llama", "prompt": prompt, "max_tokens": 32, "temperature": 0});
    let (code, answer) = agent.post("/v1/completions", body).await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    assert_eq!(answer["choices"][0]["text"], expected.as_str());
    let (model, pid) = serving(agent).await;
    assert_eq!(model.as_deref(), Some("llama"));
    assert_ne!(pid, Some(old), "the broken worker still serves");
    assert!(
        !std::path::Path::new(&format!("/proc/{old}")).exists(),
        "{old} is left running"
    );
}

#[tokio::test]
async fn a_worker_killed_while_it_holds_a_request_gives_a_clear_answer_and_a_new_worker() {
    let agent = agent().await;
    let pid = loaded(&agent, "llama").await;
    // Stopped, the worker takes the request but makes no token; then it is killed. Whether the
    // request reached it first (a 502 naming its death) or not (served by the worker that
    // replaces it), the answer is clear and complete.
    signal(pid, Signal::SIGSTOP);
    let body = json!({"model": "llama", "prompt": "The keeper", "max_tokens": 8, "stream": true});
    let request = spawn_post(&agent, "/v1/completions", body);
    signal(pid, Signal::SIGKILL);
    let answer = request.await.unwrap();
    match answer.status() {
        StatusCode::BAD_GATEWAY => {
            let body: Value = answer.json().await.unwrap();
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains("died"), "{message}");
        }
        StatusCode::OK => {
            let events = events(answer).await;
            assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        }
        other => panic!("{other}: {}", answer.text().await.unwrap()),
    }
    serves_again(&agent, pid).await;
}

#[tokio::test]
async fn a_worker_killed_mid_stream_ends_the_stream_with_an_error_event() {
    let agent = agent().await;
    let pid = loaded(&agent, "llama").await;
    let (prompt, _) = greedy_text("llama");
    // Long enough that it is still generating when the first piece arrives.
    let body = json!({"model": "llama", "prompt": prompt, "max_tokens": 220, "temperature": 0,
                      "stream": true});
    let answer = post(&agent, "/v1/completions", &body).await;
    assert_eq!(answer.status(), StatusCode::OK);
    let mut stream = answer.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    signal(pid, Signal::SIGSTOP);
    let mut text = String::from_utf8_lossy(&first).to_string();
    assert!(
        !text.contains("[DONE]"),
        "finished before it could be stopped: {text}"
    );
    signal(pid, Signal::SIGKILL);
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(!text.contains("[DONE]"), "{text}");
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    let event: Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
    assert!(event["error"]["message"].as_str().is_some(), "{last}");
    serves_again(&agent, pid).await;
}

#[tokio::test]
async fn a_stopped_worker_times_out_and_is_replaced() {
    let agent = agent_with_args(&["--infer-timeout-s", "2"]).await;
    let pid = loaded(&agent, "llama").await;
    signal(pid, Signal::SIGSTOP);
    let body = json!({"model": "llama", "prompt": "The keeper", "max_tokens": 8});
    let (code, answer) = agent.post("/v1/completions", body).await;
    assert_eq!(code, StatusCode::BAD_GATEWAY, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("did not answer"), "{message}");
    serves_again(&agent, pid).await;
}

#[tokio::test]
async fn clients_asking_at_once_each_get_their_whole_answer() {
    let agent = agent().await;
    let (prompt, expected) = greedy_text("llama");
    let asks = (0..4).map(|i| {
        let stream = i % 2 == 0;
        let body = json!({"model": "llama", "prompt": prompt, "max_tokens": 32,
                          "temperature": 0, "stream": stream});
        let answer = spawn_post(&agent, "/v1/completions", body);
        tokio::spawn(async move {
            let answer = answer.await.unwrap();
            assert_eq!(answer.status(), StatusCode::OK);
            if stream {
                events(answer)
                    .await
                    .iter()
                    .filter(|e| *e != "[DONE]")
                    .filter_map(|e| {
                        let v: Value = serde_json::from_str(e).unwrap();
                        v["choices"][0]["text"].as_str().map(str::to_string)
                    })
                    .collect::<String>()
            } else {
                let v: Value = answer.json().await.unwrap();
                v["choices"][0]["text"].as_str().unwrap().to_string()
            }
        })
    });
    for ask in asks.collect::<Vec<_>>() {
        assert_eq!(ask.await.unwrap(), expected);
    }
    // One switch for all of them: the first loaded the model, the others found it loaded.
    assert_eq!(agent.device().await.implicit_switches, 1);
}

#[tokio::test]
async fn a_switch_past_the_drain_timeout_ends_a_stream_with_an_error_event() {
    let agent = agent_with_args(&["--drain-timeout-s", "0.2"]).await;
    let pid = loaded(&agent, "llama").await;
    let (prompt, _) = greedy_text("llama");
    let body = json!({"model": "llama", "prompt": prompt, "max_tokens": 220, "temperature": 0,
                      "stream": true});
    let answer = post(&agent, "/v1/completions", &body).await;
    assert_eq!(answer.status(), StatusCode::OK);
    let mut stream = answer.bytes_stream();
    let mut text = String::from_utf8_lossy(&stream.next().await.unwrap().unwrap()).to_string();
    // Held mid-generation while a switch waits for it, past the drain timeout.
    signal(pid, Signal::SIGSTOP);
    assert!(
        !text.contains("[DONE]"),
        "finished before it could be stopped: {text}"
    );
    let switch = spawn_post(&agent, "/v1/models/switch", json!({"model": "tiny-a"}));
    vramkeeper_e2e::wait_until(
        "the switch ending the stream",
        vramkeeper_e2e::wait::DEADLINE,
        || async { agent.log().contains("ending the requests still in flight") },
    )
    .await;
    // Resumed, the worker meets the cancel at its next token.
    signal(pid, Signal::SIGCONT);
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(!text.contains("[DONE]"), "{text}");
    assert!(text.contains("unloaded before it finished"), "{text}");
    assert_eq!(switch.await.unwrap().status(), StatusCode::OK);
    assert_eq!(serving(&agent).await.0.as_deref(), Some("tiny-a"));
}
