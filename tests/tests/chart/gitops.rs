//! The token across GitOps syncs. `helm template` (Argo CD) has no cluster to look the
//! generated token up in, so every render draws a new one. What keeps the agents and the
//! operator agreeing: both read the same Secret key (the operator through the API every
//! minute, the agents through the mounted file, which they read again when it changes), and
//! no Pod template depends on the token (`rollouts`), so no sync restarts anything.
//!
//! Here: two renders, then a real agent started with the chart's token flag and mount layout,
//! the file swapped the way kubelet updates a Secret volume (a new timestamped directory and
//! an atomic rename of the `..data` link); the second render's token is accepted at once and
//! the first one's refused.

use std::{os::unix::fs::symlink, path::Path};

use base64::Engine;
use reqwest::StatusCode;
use vramkeeper_e2e::{Agent, AgentOptions, agent::SMALL_CATALOG};

use crate::{
    helm::{Rendered, args, container, flag, render},
    manifests::{mount_of, token_volume},
};

/// The Secret and key the agents mount, and those the operator is told to read.
fn token_wiring(r: &Rendered) -> ((String, String), (String, String)) {
    let agent = r.agent();
    let volume = &token_volume(agent)["secret"];
    let mounted = (
        volume["secretName"].as_str().unwrap().to_string(),
        volume["items"][0]["key"].as_str().unwrap().to_string(),
    );
    let op = args(container(r.operator().unwrap(), "operator"));
    let read = (
        flag(&op, "--agent-token-secret").unwrap().to_string(),
        flag(&op, "--agent-token-key").unwrap().to_string(),
    );
    (mounted, read)
}

fn token_of(r: &Rendered) -> String {
    let data = r.get("Secret", "-token")["data"]["token"].as_str().unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .unwrap();
    String::from_utf8(bytes).unwrap()
}

/// Writes the Secret's key as kubelet does: `<dir>/<stamp>/<key>`, `..data -> <stamp>`,
/// `<key> -> ..data/<key>`; a later call swaps `..data` atomically.
fn kubelet_write(dir: &Path, stamp: &str, key: &str, token: &str) {
    let data = dir.join(stamp);
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join(key), token).unwrap();
    let next = dir.join("..data_tmp");
    symlink(stamp, &next).unwrap();
    std::fs::rename(&next, dir.join("..data")).unwrap();
    let link = dir.join(key);
    if link.symlink_metadata().is_err() {
        symlink(format!("..data/{key}"), &link).unwrap();
    }
}

async fn acting_status(agent: &Agent, bearer: &str) -> StatusCode {
    reqwest::Client::new()
        .post(format!("{}/v1/models/unload", agent.url))
        .bearer_auth(bearer)
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("POST")
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_renders_keep_the_agents_and_the_operator_on_one_token() {
    let first = render("values-default.yaml");
    let second = render("values-default.yaml");
    let (old, new) = (token_of(&first), token_of(&second));
    assert_ne!(old, new, "each `helm template` draws a new token");
    // Both renders point the agents and the operator at the same Secret key: whatever the
    // sync leaves in it, both read it.
    for r in [&first, &second] {
        let (mounted, read) = token_wiring(r);
        assert_eq!(mounted, read);
    }
    assert_eq!(token_wiring(&first), token_wiring(&second));

    // A real agent, its token file where the chart mounts it, holding the first render's token.
    let agent_container = container(first.agent(), "agent");
    let argv = args(agent_container);
    let token_file = flag(&argv, "--token-file").unwrap();
    let mount = mount_of(agent_container, "token");
    let key = token_file.strip_prefix(&format!("{mount}/")).unwrap();
    let secret_dir = tempfile::tempdir().unwrap();
    kubelet_write(secret_dir.path(), "..2026_11_27_10_00_00.1", key, &old);
    let agent = Agent::start(AgentOptions {
        args: vec![
            "--token-file".into(),
            secret_dir.path().join(key).display().to_string(),
        ],
        catalog: Some(SMALL_CATALOG.into()),
        ..Default::default()
    })
    .await;
    assert_eq!(acting_status(&agent, &old).await, StatusCode::OK);
    assert_eq!(acting_status(&agent, &new).await, StatusCode::UNAUTHORIZED);

    // The sync applies the second render's Secret; kubelet updates the volume.
    kubelet_write(secret_dir.path(), "..2026_11_27_10_05_00.2", key, &new);
    assert_eq!(
        acting_status(&agent, &new).await,
        StatusCode::OK,
        "the new token, without a restart:\n{}",
        agent.log()
    );
    assert_eq!(acting_status(&agent, &old).await, StatusCode::UNAUTHORIZED);
    assert!(agent.log().contains("the token file changed"));
    assert!(!agent.log().contains(&new) && !agent.log().contains(&old));
}
