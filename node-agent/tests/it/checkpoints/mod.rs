//! Hugging Face checkpoints (`kind = "hf"`) served by the agent's own workers, on tiny random
//! checkpoints made with transformers (`vramkeeper_e2e::checkpoints`): completions through
//! `/v1/completions` and `/v1/chat/completions` (whole and streamed) give transformers' greedy
//! text and count tokens as its tokenizer does; settings are honoured (stop sequences, seeds,
//! `max_tokens`); bad requests are refused by name and change nothing; a client that leaves
//! mid-stream stops the generation without harming the worker; BERT checkpoints embed.
//! `faults`: workers killed, stopped or raced while they generate.

mod faults;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use vramkeeper_e2e::{
    Agent, AgentOptions,
    agent::SMALL_CATALOG,
    checkpoints::{reference, tiny_checkpoints},
};

fn entry(name: &str) -> String {
    let dir = tiny_checkpoints().join(name);
    format!("\n[[model]]\nname = \"{name}\"\nkind = \"hf\"\ndir = {dir:?}\n")
}

async fn agent() -> Agent {
    agent_with_args(&[]).await
}

async fn agent_with_args(args: &[&str]) -> Agent {
    let entries: String = ["llama", "qwen2", "mistral", "bert"]
        .iter()
        .map(|n| entry(n))
        .collect();
    Agent::start(AgentOptions {
        catalog: Some(format!("{SMALL_CATALOG}{entries}")),
        args: args.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    })
    .await
}

async fn post(agent: &Agent, path: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}{path}", agent.url))
        .json(body)
        .send()
        .await
        .expect("POST")
}

/// The `data:` payloads of a server-sent event stream, `[DONE]` included.
async fn events(response: reqwest::Response) -> Vec<String> {
    let text = response.text().await.unwrap();
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

/// The model loaded on device 0 and its worker's pid.
async fn serving(agent: &Agent) -> (Option<String>, Option<u32>) {
    let device = agent.device().await;
    let pid = device
        .models
        .iter()
        .find(|m| Some(&m.name) == device.active_model.as_ref())
        .and_then(|m| m.pid);
    (device.active_model, pid)
}

fn greedy_text(name: &str) -> (String, String) {
    let r = reference(name);
    (
        r["greedy"]["text"].as_str().unwrap().to_string(),
        r["greedy"]["new_text"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn completions_give_transformers_greedy_text_whole_and_streamed() {
    let agent = agent().await;
    for name in ["llama", "qwen2", "mistral"] {
        let (prompt, expected) = greedy_text(name);
        let prompt_ids = reference(name)["greedy"]["ids"].as_array().unwrap().len();
        let body = json!({"model": name, "prompt": prompt, "max_tokens": 32, "temperature": 0});
        let answer = post(&agent, "/v1/completions", &body).await;
        assert_eq!(answer.status(), StatusCode::OK, "{name}");
        let switched = answer.headers()["x-vramkeeper-switched"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(switched.ends_with(&format!("-> {name}")), "{switched}");
        let answer: Value = answer.json().await.unwrap();
        assert_eq!(answer["object"], "text_completion");
        assert_eq!(answer["choices"][0]["text"], expected.as_str(), "{name}");
        assert_eq!(answer["choices"][0]["finish_reason"], "length");
        assert_eq!(answer["usage"]["prompt_tokens"], prompt_ids);
        assert_eq!(answer["usage"]["completion_tokens"], 32);

        let mut streamed = body.clone();
        streamed["stream"] = true.into();
        streamed["stream_options"] = json!({"include_usage": true});
        let answer = post(&agent, "/v1/completions", &streamed).await;
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(answer.headers()["content-type"], "text/event-stream");
        let events = events(answer).await;
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["text"].as_str())
            .collect();
        assert_eq!(text, expected, "{name}: streamed");
        assert!(chunks.len() > 3, "{name}: the text came in one piece");
        let usage = &chunks.last().unwrap()["usage"];
        assert_eq!(usage["completion_tokens"], 32);
        assert_eq!(
            chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
            "length"
        );
    }
}

#[tokio::test]
async fn chat_completions_use_the_chat_template_and_stream_as_openai_does() {
    let agent = agent().await;
    let r = reference("qwen2");
    let case = &r["chat"][1];
    let prompt_tokens = case["ids"].as_array().unwrap().len();
    let body = json!({
        "model": "qwen2", "messages": case["messages"], "max_tokens": 12, "temperature": 0,
        "user": "ignored", "frequency_penalty": 0
    });
    let (code, whole) = agent.post("/v1/chat/completions", body.clone()).await;
    assert_eq!(code, StatusCode::OK, "{whole}");
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["choices"][0]["message"]["role"], "assistant");
    assert_eq!(whole["usage"]["prompt_tokens"], prompt_tokens);
    let text = whole["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!text.is_empty());

    let mut streamed = body;
    streamed["stream"] = true.into();
    let events = events(post(&agent, "/v1/chat/completions", &streamed).await).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert!(chunks.iter().all(|c| c["id"] == chunks[0]["id"]));
    let joined: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(joined, text);
    let last = chunks.last().unwrap();
    assert_eq!(
        last["choices"][0]["finish_reason"],
        whole["choices"][0]["finish_reason"]
    );
}

#[tokio::test]
async fn stop_sequences_seeds_and_limits_are_honoured() {
    let agent = agent().await;
    let (prompt, expected) = greedy_text("llama");
    // A stop sequence taken from the middle of the greedy text ends it there.
    let cut = expected
        .char_indices()
        .nth(expected.chars().count() / 2)
        .unwrap()
        .0;
    let stop: String = expected[cut..].chars().take(3).collect();
    let at = expected.find(&stop).unwrap();
    let body = json!({"model": "llama", "prompt": prompt, "max_tokens": 32, "temperature": 0,
                      "stop": [stop]});
    let (code, answer) = agent.post("/v1/completions", body).await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    assert_eq!(answer["choices"][0]["text"], &expected[..at]);
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");

    // The same seed, the same sampled text; another seed, another text.
    let sample = |seed: u64| {
        json!({"model": "llama", "prompt": prompt, "max_tokens": 24, "temperature": 1.0,
               "top_p": 0.9, "seed": seed})
    };
    let text = |v: Value| v["choices"][0]["text"].as_str().unwrap().to_string();
    let a = text(agent.post("/v1/completions", sample(7)).await.1);
    let b = text(agent.post("/v1/completions", sample(7)).await.1);
    let c = text(agent.post("/v1/completions", sample(8)).await.1);
    assert_eq!(a, b);
    assert_ne!(a, c);

    // Without max_tokens a chat completion may fill the context (256 here), not more.
    let body = json!({"model": "llama", "messages": [{"role": "user", "content": "hi"}],
                      "temperature": 0});
    let (code, answer) = agent.post("/v1/chat/completions", body).await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    let usage = &answer["usage"];
    assert!(usage["total_tokens"].as_u64().unwrap() <= 256, "{usage}");
}

#[tokio::test]
async fn bad_requests_are_refused_by_name_and_change_nothing() {
    let agent = agent().await;
    let (code, _) = agent
        .post("/v1/models/switch", json!({"model": "mistral"}))
        .await;
    assert_eq!(code, StatusCode::OK);
    let before = serving(&agent).await;
    assert_eq!(before.0.as_deref(), Some("mistral"));
    let long = "lighthouse keeper ".repeat(200);
    let cases = [
        (
            json!({"model": "mistral", "prompt": long}),
            StatusCode::BAD_REQUEST,
            "context",
        ),
        (
            json!({"model": "mistral", "prompt": "a", "max_tokens": 1000}),
            StatusCode::BAD_REQUEST,
            "max_tokens 1000",
        ),
        (
            json!({"model": "mistral", "prompt": "a", "n": 2}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "n = 2",
        ),
        (
            json!({"model": "mistral", "prompt": "a", "temperature": 3}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "temperature",
        ),
        (
            json!({"model": "mistral", "prompt": "a", "stop": ["a", "b", "c", "d", "e"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "stop",
        ),
        (
            json!({"model": "mistral", "prompt": ["a", "b"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "one per request",
        ),
        (
            json!({"model": "mistral"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "prompt",
        ),
        (
            json!({"model": "mistral", "prompt": "a", "echo": true}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "echo",
        ),
    ];
    for (body, status, words) in cases {
        let (code, answer) = agent.post("/v1/completions", body.clone()).await;
        assert_eq!(code, status, "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(words),
            "{body}: {message:?} lacks {words:?}"
        );
    }
    let chats = [
        // Mistral's template raises on roles that do not alternate.
        (
            json!({"model": "mistral", "messages": [{"role": "user", "content": "a"},
                                                   {"role": "user", "content": "b"}]}),
            StatusCode::BAD_REQUEST,
            "roles must alternate",
        ),
        (
            json!({"model": "mistral", "messages": []}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "at least one",
        ),
        (
            json!({"model": "mistral", "messages": [{"role": "user",
                   "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "image_url",
        ),
        (
            json!({"model": "mistral", "messages": [{"role": "user", "content": "a"}],
                   "max_tokens": 2, "max_completion_tokens": 2}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "not both",
        ),
        (
            json!({"model": "bert", "messages": [{"role": "user", "content": "a"}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "bert",
        ),
    ];
    for (body, status, words) in chats {
        let (code, answer) = agent.post("/v1/chat/completions", body.clone()).await;
        assert_eq!(code, status, "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(words),
            "{body}: {message:?} lacks {words:?}"
        );
    }
    assert_eq!(serving(&agent).await, before);
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_stops_the_generation_and_the_worker_serves_on() {
    let agent = agent().await;
    let (prompt, expected) = greedy_text("llama");
    for _ in 0..3 {
        let body = json!({"model": "llama", "prompt": prompt, "max_tokens": 200,
                          "temperature": 0, "stream": true});
        let answer = post(&agent, "/v1/completions", &body).await;
        assert_eq!(answer.status(), StatusCode::OK);
        let mut body = answer.bytes_stream();
        // One chunk read, then the connection is dropped.
        assert!(body.next().await.is_some());
    }
    let before = serving(&agent).await;
    let body = json!({"model": "llama", "prompt": prompt, "max_tokens": 32, "temperature": 0});
    let (code, answer) = agent.post("/v1/completions", body).await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    assert_eq!(answer["choices"][0]["text"], expected.as_str());
    assert_eq!(serving(&agent).await, before, "the worker was replaced");
}

#[tokio::test]
async fn bert_checkpoints_embed_as_sentence_transformers() {
    let agent = agent().await;
    let r = reference("bert");
    let (code, answer) = agent
        .post(
            "/v1/embeddings",
            json!({"model": "bert", "input": r["sentences"]}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    let expected = r["embeddings"].as_array().unwrap();
    for (got, want) in answer["data"].as_array().unwrap().iter().zip(expected) {
        let got = got["embedding"].as_array().unwrap();
        let dot: f64 = got
            .iter()
            .zip(want.as_array().unwrap())
            .map(|(a, b)| a.as_f64().unwrap() * b.as_f64().unwrap())
            .sum();
        // Both unit length (the model normalises).
        assert!(dot >= 0.99999, "cosine {dot}");
    }
    let tokens: u64 = r["token_counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .sum();
    assert_eq!(answer["usage"]["prompt_tokens"], tokens);
    // /v1/models says what each serves.
    let (_, models) = agent.get("/v1/models").await;
    let caps = |name: &str| {
        models["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .map(|m| m["capabilities"].clone())
            .unwrap()
    };
    assert_eq!(caps("bert"), json!(["embeddings"]));
    assert_eq!(caps("llama"), json!(["infer", "completions"]));
}

#[tokio::test]
async fn a_catalog_with_an_unsupported_architecture_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"architectures": ["GPT2LMHeadModel"], "vocab_size": 10}"#,
    )
    .unwrap();
    let catalog = format!(
        "[[model]]\nname = \"gpt\"\nkind = \"hf\"\ndir = {:?}\n",
        dir.path()
    );
    let file = dir.path().join("catalog.toml");
    std::fs::write(&file, catalog).unwrap();
    let out = std::process::Command::new(vramkeeper_e2e::agent::agent_bin())
        .args(["--listen", "127.0.0.1:0", "--device", "cpu", "--catalog"])
        .arg(&file)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("GPT2LMHeadModel"), "{stderr}");
}
