//! Server-side apply over real HTTP: `managedFields` on every object the API returns, the
//! `409` Status of a conflict, no-op applies, and the field manager of other writes.
//! <https://kubernetes.io/docs/reference/using-api/server-side-apply/>

use std::time::Duration;

use serde_json::{Value, json};

use super::ApiServerDouble;

const GM: &str = "/apis/vramkeeper.dev/v1alpha1/gpumodels";

async fn gpumodel(double: &ApiServerDouble) {
    double.create(json!({
        "apiVersion": "vramkeeper.dev/v1alpha1",
        "kind": "GpuModel",
        "metadata": {"name": "g"},
        "spec": {"nodeName": "n"},
    }));
}

/// PATCH `path` with `content_type`; the status and the body.
async fn patch(
    double: &ApiServerDouble,
    path: &str,
    content_type: &str,
    user_agent: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .patch(format!("{}{path}", double.url))
        .header("content-type", content_type)
        .body(body.to_string());
    if let Some(ua) = user_agent {
        request = request.header("user-agent", ua);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn apply(
    double: &ApiServerDouble,
    manager: &str,
    force: bool,
    status: Value,
) -> (u16, Value) {
    let path = format!("{GM}/g/status?fieldManager={manager}&force={force}");
    let body =
        json!({"apiVersion": "vramkeeper.dev/v1alpha1", "kind": "GpuModel", "status": status});
    patch(double, &path, "application/apply-patch+yaml", None, body).await
}

fn managers(object: &Value) -> Vec<(String, String)> {
    object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["manager"].as_str().unwrap().to_string(),
                e["operation"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// `managedFields` are part of the object on get, list and watch, and kube's types read them.
/// <https://kubernetes.io/docs/reference/using-api/server-side-apply/#field-management>
#[tokio::test]
async fn managed_fields_come_back_on_get_list_and_watch() {
    let double = ApiServerDouble::start().await;
    gpumodel(&double).await;
    let (code, applied) = apply(
        &double,
        "vramkeeper-operator",
        true,
        json!({"phase": "Ready"}),
    )
    .await;
    assert_eq!(code, 200, "{applied}");
    let want = vec![
        ("vramkeeper-operator".to_string(), "Apply".to_string()),
        ("kubectl-create".to_string(), "Update".to_string()),
    ];
    assert_eq!(managers(&applied), want);
    let got: Value = reqwest::get(format!("{}{GM}/g", double.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(managers(&got), want);
    let list: Value = reqwest::get(format!("{}{GM}", double.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(managers(&list["items"][0]), want);
    let mut watch = reqwest::get(format!("{}{GM}?watch=true", double.url))
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(30), watch.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let event: Value =
        serde_json::from_slice(first.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(managers(&event["object"]), want);
    let api: kube::Api<vramkeeper_crds::GpuModel> = kube::Api::all(double.client());
    let typed = api.get("g").await.unwrap();
    let entries = typed.metadata.managed_fields.unwrap();
    assert_eq!(entries[0].subresource.as_deref(), Some("status"));
    assert_eq!(
        entries[0].fields_v1.as_ref().unwrap().0,
        json!({"f:status": {"f:phase": {}}})
    );
}

/// A conflict is a `409` Status with the real message; re-applying the same configuration
/// changes nothing (not even the `resourceVersion`).
/// <https://kubernetes.io/docs/reference/using-api/server-side-apply/#conflicts>
#[tokio::test]
async fn a_conflict_is_a_409_status_and_a_same_apply_no_write() {
    let double = ApiServerDouble::start().await;
    gpumodel(&double).await;
    let (_, first) = apply(
        &double,
        "vramkeeper-operator",
        true,
        json!({"phase": "Ready"}),
    )
    .await;
    let (code, again) = apply(
        &double,
        "vramkeeper-operator",
        true,
        json!({"phase": "Ready"}),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(
        again["metadata"]["resourceVersion"],
        first["metadata"]["resourceVersion"]
    );
    assert_eq!(
        again["metadata"]["managedFields"],
        first["metadata"]["managedFields"]
    );
    let (code, status) = apply(
        &double,
        "vramkeeper-agent",
        false,
        json!({"phase": "Failed"}),
    )
    .await;
    assert_eq!(code, 409);
    assert_eq!(
        (&status["kind"], &status["reason"], &status["code"]),
        (&json!("Status"), &json!("Conflict"), &json!(409))
    );
    assert_eq!(
        status["message"],
        r#"Apply failed with 1 conflict: conflict with "vramkeeper-operator" with subresource "status": .status.phase"#
    );
    // An apply without a field manager is refused, as the real server does.
    let (code, _) = patch(
        &double,
        &format!("{GM}/g/status"),
        "application/apply-patch+yaml",
        None,
        json!({"status": {}}),
    )
    .await;
    assert_eq!(code, 422);
}

/// Other writes without `fieldManager` are recorded under the `User-Agent`'s name, up to its
/// first `/` (`unknown` without one).
/// <https://kubernetes.io/docs/reference/using-api/server-side-apply/#managers>
#[tokio::test]
async fn other_writes_are_recorded_under_the_user_agent() {
    let double = ApiServerDouble::start().await;
    gpumodel(&double).await;
    let merge = "application/merge-patch+json";
    let (code, o) = patch(
        &double,
        &format!("{GM}/g"),
        merge,
        Some("kubectl/v1.31.0 (linux/amd64)"),
        json!({"spec": {"model": "m"}}),
    )
    .await;
    assert_eq!(code, 200, "{o}");
    let (_, o) = patch(
        &double,
        &format!("{GM}/g/status"),
        merge,
        None,
        json!({"status": {"phase": "Pending"}}),
    )
    .await;
    let entries = o["metadata"]["managedFields"].as_array().unwrap();
    let kubectl = entries.iter().find(|e| e["manager"] == "kubectl").unwrap();
    assert_eq!(kubectl["fieldsV1"], json!({"f:spec": {"f:model": {}}}));
    let unknown = entries.iter().find(|e| e["manager"] == "unknown").unwrap();
    assert_eq!(
        (&unknown["operation"], &unknown["subresource"]),
        (&json!("Update"), &json!("status"))
    );
    // An update (PUT) of the status subresource changes the status only, and says so.
    let mut body = o.clone();
    body["status"]["phase"] = json!("Ready");
    body["spec"]["model"] = json!("ignored");
    let response = reqwest::Client::new()
        .put(format!("{}{GM}/g/status?fieldManager=putter", double.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let o: Value = response.json().await.unwrap();
    assert_eq!(
        (&o["spec"]["model"], &o["status"]["phase"]),
        (&json!("m"), &json!("Ready"))
    );
    let entries = o["metadata"]["managedFields"].as_array().unwrap();
    let putter = entries.iter().find(|e| e["manager"] == "putter").unwrap();
    assert_eq!(putter["fieldsV1"], json!({"f:status": {"f:phase": {}}}));
    // The phase is the putter's alone now (`unknown` keeps what defaulting added).
    let unknown = entries.iter().find(|e| e["manager"] == "unknown").unwrap();
    assert!(
        unknown["fieldsV1"]["f:status"].get("f:phase").is_none(),
        "{unknown}"
    );
}
