//! all-MiniLM-L6-v2 served OpenAI-style: the same vectors as sentence-transformers, the
//! OpenAI response shape, auto-switching, clear errors, and missing or corrupt weights.

use std::io::{Read, Write};

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use vramkeeper_e2e::{Agent, AgentOptions, agent::SMALL_CATALOG, agent::shared_cache_dir};

const MINILM: &str = "\n[[model]]\nname = \"all-minilm-l6-v2\"\nkind = \"minilm\"\n";

async fn agent_with(extra: &str, env: Vec<(String, String)>, own_cache: bool) -> Agent {
    Agent::start(AgentOptions {
        catalog: Some(format!("{SMALL_CATALOG}{extra}")),
        cache_dir: (!own_cache).then(shared_cache_dir),
        env,
        ..Default::default()
    })
    .await
}

fn reference() -> Value {
    serde_json::from_str(include_str!("../fixtures/minilm-reference.json")).unwrap()
}

fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * y).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|y| y.powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[tokio::test]
async fn embeddings_match_sentence_transformers() {
    let agent = agent_with(MINILM, vec![], false).await;
    agent
        .post("/v1/models/switch", json!({"model": "tiny-a"}))
        .await;
    let reference = reference();
    let sentences = reference["sentences"].as_array().unwrap();
    assert!(sentences.len() >= 20);
    let texts: Vec<&str> = sentences
        .iter()
        .map(|s| s["text"].as_str().unwrap())
        .collect();
    let (code, r) = agent
        .post(
            "/v1/embeddings",
            json!({"model": "all-minilm-l6-v2", "input": texts}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{r}");
    assert_eq!(r["object"], "list");
    assert_eq!(r["model"], "all-minilm-l6-v2");
    let data = r["data"].as_array().unwrap();
    assert_eq!(data.len(), sentences.len());
    let mut expected_tokens = 0;
    for (i, (item, want)) in data.iter().zip(sentences).enumerate() {
        assert_eq!(item["object"], "embedding");
        assert_eq!(item["index"], i);
        let got = floats(&item["embedding"]);
        assert_eq!(got.len(), 384);
        let want_v: Vec<f64> = want["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let c = cosine(&got, &want_v);
        assert!(c >= 0.9999, "sentence {i} ({:?}): cosine {c}", want["text"]);
        expected_tokens += want["tokens"].as_u64().unwrap();
    }
    assert_eq!(
        r["usage"]["prompt_tokens"].as_u64().unwrap(),
        expected_tokens
    );
    assert_eq!(r["usage"]["total_tokens"], r["usage"]["prompt_tokens"]);
    // The call switched models implicitly.
    let d = agent.device().await;
    assert_eq!(d.active_model.as_deref(), Some("all-minilm-l6-v2"));
    assert_eq!(
        d.last_switch.unwrap().trigger,
        vramkeeper_crds::SwitchTrigger::Auto
    );
    assert_eq!(d.implicit_switches, 1);
}

#[tokio::test]
async fn a_single_string_and_base64_vectors() {
    let agent = agent_with(MINILM, vec![], false).await;
    let (_, float) = agent
        .post(
            "/v1/embeddings",
            json!({"model": "all-minilm-l6-v2", "input": "Hello world"}),
        )
        .await;
    let (code, b64) = agent
        .post(
            "/v1/embeddings",
            json!({"model": "all-minilm-l6-v2", "input": "Hello world", "encoding_format": "base64", "dimensions": 384}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{b64}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(decoded, floats(&float["data"][0]["embedding"]));
    assert_eq!(float["usage"]["prompt_tokens"], 4);
}

#[tokio::test]
async fn bad_embedding_requests_are_rejected() {
    let agent = agent_with(MINILM, vec![], false).await;
    let cases = [
        (
            json!({"model": "all-minilm-l6-v2", "input": []}),
            "at least one",
        ),
        (
            json!({"model": "all-minilm-l6-v2", "input": ["ok", ""]}),
            "input[1]",
        ),
        (
            json!({"model": "tiny-a", "input": "hi"}),
            "not an embedding model",
        ),
        (
            json!({"model": "all-minilm-l6-v2", "input": "hi", "dimensions": 512}),
            "384",
        ),
        (
            json!({"model": "all-minilm-l6-v2", "input": [[1, 2]]}),
            "input",
        ),
        (
            json!({"model": "all-minilm-l6-v2", "input": "hi", "encoding_format": "hex"}),
            "hex",
        ),
    ];
    for (body, mentions) in cases {
        let (code, r) = agent.post("/v1/embeddings", body.clone()).await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body} -> {r}");
        let message = r["error"]["message"].as_str().unwrap();
        assert!(message.contains(mentions), "{body}: {message}");
    }
    // Bounds on work are 413, naming the bound.
    let (code, r) = agent
        .post(
            "/v1/embeddings",
            json!({"model": "all-minilm-l6-v2", "input": vec!["x"; 257]}),
        )
        .await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE, "{r}");
    assert_eq!(r["error"]["code"], "over_limit");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit of 256")
    );
    let (code, _) = agent
        .post("/v1/embeddings", json!({"model": "nope", "input": "hi"}))
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(
        agent.workers().is_empty(),
        "no rejected request loaded a model"
    );
}

#[tokio::test]
async fn missing_or_corrupt_weights_fail_that_model_only() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = format!(
        "\n[[model]]\nname = \"minilm-missing\"\nkind = \"minilm\"\ndir = \"{}\"\n\n[[model]]\nname = \"minilm-corrupt\"\nkind = \"minilm\"\ndir = \"{}\"\n",
        dir.path().join("missing").display(),
        dir.path().join("corrupt").display(),
    );
    let corrupt = dir.path().join("corrupt");
    std::fs::create_dir_all(&corrupt).unwrap();
    std::fs::write(corrupt.join("model.safetensors"), b"not a safetensors file").unwrap();
    let tokenizer = shared_cache_dir().join("models/all-minilm-l6-v2-0.1.0/tokenizer.json");
    let agent = agent_with(&catalog, vec![], true).await;
    if !tokenizer.exists() {
        // The other tests fill the shared cache; fetch it here if this test runs first.
        let other = agent_with(MINILM, vec![], false).await;
        other
            .post("/v1/models/switch", json!({"model": "all-minilm-l6-v2"}))
            .await;
    }
    std::fs::copy(&tokenizer, corrupt.join("tokenizer.json")).unwrap();

    let (code, r) = agent
        .post(
            "/v1/embeddings",
            json!({"model": "minilm-missing", "input": "hi"}),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_GATEWAY, "{r}");
    let message = r["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("missing/model.safetensors is missing") && message.contains("dir"),
        "{message}"
    );
    let (code, r) = agent
        .post("/v1/models/switch", json!({"model": "minilm-corrupt"}))
        .await;
    assert_eq!(code, StatusCode::BAD_GATEWAY, "{r}");
    let message = r["error"]["message"].as_str().unwrap();
    assert!(message.contains("corrupt/model.safetensors"), "{message}");
    assert!(agent.workers().is_empty());
    // The agent keeps serving the others.
    let (code, _) = agent
        .post("/v1/models/switch", json!({"model": "tiny-a"}))
        .await;
    assert_eq!(code, StatusCode::OK);
}

#[tokio::test]
async fn a_download_with_the_wrong_checksum_is_refused() {
    // A one-shot HTTP server on loopback that serves bytes that are not the wheel.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/wheel.whl", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let body = b"definitely not a zip";
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(body);
        }
    });
    let agent = agent_with(MINILM, vec![("VRAMKEEPER_MINILM_URL".into(), url)], true).await;
    let (code, r) = agent
        .post("/v1/models/switch", json!({"model": "all-minilm-l6-v2"}))
        .await;
    server.join().unwrap();
    assert_eq!(code, StatusCode::BAD_GATEWAY, "{r}");
    let message = r["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("sha256") && message.contains("pinned"),
        "{message}"
    );
    assert!(agent.workers().is_empty());
    assert!(
        !agent
            .state
            .path()
            .join("cache/models/all-minilm-l6-v2-0.1.0")
            .exists()
    );
}
