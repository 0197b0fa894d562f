//! The double's watch semantics over real HTTP: `410 Gone` after a compaction, and bookmarks.
//! <https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes>
//! <https://kubernetes.io/docs/reference/using-api/api-concepts/#watch-bookmarks>

use std::time::Duration;

use serde_json::{Value, json};

use super::ApiServerDouble;

fn secret(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "ns"},
    })
}

/// The first line a watch sends.
async fn first_line(url: String) -> Value {
    let mut response = reqwest::get(url).await.unwrap();
    assert!(response.status().is_success());
    let mut buf = Vec::new();
    let read = async {
        while let Some(chunk) = response.chunk().await.unwrap() {
            buf.extend_from_slice(&chunk);
            if let Some(end) = buf.iter().position(|b| *b == b'\n') {
                return serde_json::from_slice(&buf[..end]).unwrap();
            }
        }
        panic!("the watch ended without a line");
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("a line within 30 s")
}

#[tokio::test]
async fn a_watch_from_a_compacted_version_is_gone() {
    let double = ApiServerDouble::start().await;
    let first = double.create(secret("a"));
    let rv = first["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    double.create(secret("b"));
    // Before the compaction, a watch from `rv` replays what came after.
    let url = format!(
        "{}/api/v1/namespaces/ns/secrets?watch=true&resourceVersion={rv}",
        double.url
    );
    let replayed = first_line(url.clone()).await;
    assert_eq!(replayed["type"], "ADDED");
    assert_eq!(replayed["object"]["metadata"]["name"], "b");
    double.compact();
    let gone = first_line(url).await;
    assert_eq!(gone["type"], "ERROR");
    assert_eq!(gone["object"]["code"], 410);
    assert_eq!(gone["object"]["reason"], "Expired");
}

#[tokio::test]
async fn watches_that_allow_bookmarks_get_them() {
    let double = ApiServerDouble::start().await;
    let created = double.create(secret("a"));
    let rv: u64 = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let url = format!(
        "{}/api/v1/namespaces/ns/secrets?watch=true&resourceVersion={rv}&allowWatchBookmarks=true",
        double.url
    );
    let line = first_line(url).await;
    assert_eq!(line["type"], "BOOKMARK");
    assert_eq!(line["object"]["kind"], "Secret");
    let at: u64 = line["object"]["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(at >= rv, "{line}");
}

#[tokio::test]
async fn a_stale_merge_patch_and_an_invalid_gpumodel_are_refused() {
    let double = ApiServerDouble::start().await;
    let gm = double.create(json!({
        "apiVersion": "vramkeeper.dev/v1alpha1",
        "kind": "GpuModel",
        "metadata": {"name": "g"},
        "spec": {"nodeName": "n"},
    }));
    let url = format!("{}/apis/vramkeeper.dev/v1alpha1/gpumodels/g", double.url);
    let client = reqwest::Client::new();
    let patch = |body: Value| {
        client
            .patch(&url)
            .header("content-type", "application/merge-patch+json")
            .body(body.to_string())
            .send()
    };
    // Stale version: 409, nothing changed.
    let stale = patch(json!({"metadata": {"resourceVersion": "0"}, "spec": {"model": "m"}}))
        .await
        .unwrap();
    assert_eq!(stale.status().as_u16(), 409);
    // gpu is immutable (CEL transition rule): 422.
    let moved = patch(json!({"spec": {"gpu": 3}})).await.unwrap();
    assert_eq!(moved.status().as_u16(), 422);
    let body: Value = moved.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("gpu is immutable"),
        "{body}"
    );
    // The current version: accepted.
    let rv = gm["metadata"]["resourceVersion"].clone();
    let fine = patch(json!({"metadata": {"resourceVersion": rv}, "spec": {"model": "m"}}))
        .await
        .unwrap();
    assert!(fine.status().is_success());
    let stored = double
        .get("vramkeeper.dev", "gpumodels", None, "g")
        .unwrap();
    assert_eq!(stored["spec"]["model"], "m");
    assert_eq!(stored["spec"]["gpu"], 0, "defaulted");
}

/// Field selectors: only supported field labels, as the API server does.
/// <https://kubernetes.io/docs/concepts/overview/working-with-objects/field-selectors/>
#[tokio::test]
async fn unknown_field_selectors_are_refused_and_known_ones_filter() {
    let double = ApiServerDouble::start().await;
    double.create(secret("a"));
    double.create(secret("b"));
    let list = |selector: &str| {
        reqwest::get(format!(
            "{}/api/v1/namespaces/ns/secrets?fieldSelector={selector}",
            double.url
        ))
    };
    let unknown = list("spec.nodeName=x").await.unwrap();
    assert_eq!(unknown.status().as_u16(), 400);
    let named: Value = list("metadata.name=a").await.unwrap().json().await.unwrap();
    assert_eq!(named["items"].as_array().unwrap().len(), 1);
    let others: Value = list("metadata.name!=a")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(others["items"][0]["metadata"]["name"], "b");
}

/// Lists in chunks: `limit` and `continue`.
/// <https://kubernetes.io/docs/reference/using-api/api-concepts/#retrieving-large-results-sets-in-chunks>
#[tokio::test]
async fn lists_come_in_pages_with_a_continue_token() {
    let double = ApiServerDouble::start().await;
    for name in ["a", "b", "c"] {
        double.create(secret(name));
    }
    let url = format!("{}/api/v1/namespaces/ns/secrets", double.url);
    let get = |query: String| reqwest::get(format!("{url}?{query}"));
    let first: Value = get("limit=2".into()).await.unwrap().json().await.unwrap();
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    assert_eq!(first["metadata"]["remainingItemCount"], 1);
    let token = first["metadata"]["continue"].as_str().unwrap().to_string();
    let second: Value = get(format!("limit=2&continue={token}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    assert_eq!(second["items"][0]["metadata"]["name"], "c");
    assert!(second["metadata"]["continue"].is_null());
    assert_eq!(
        second["metadata"]["resourceVersion"],
        first["metadata"]["resourceVersion"]
    );
}
