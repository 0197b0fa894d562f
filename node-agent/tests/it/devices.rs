//! Which device the agent manages, on this machine without an NVIDIA GPU: `--device cuda`
//! refuses to start, naming what is missing; an agent told to expect GPUs is not ready
//! without them.

use reqwest::StatusCode;

use crate::security::{refused_start, small_with};

#[tokio::test]
async fn device_cuda_refuses_to_start_without_nvml() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = refused_start(&["--device", "cuda"], &dir.path().join("state")).await;
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("--device cuda") && stderr.contains("NVML is unusable"),
        "{stderr}"
    );
    // It says where NVML comes from, so the fix is findable.
    assert!(stderr.contains("libnvidia-ml.so.1"), "{stderr}");
    // `auto` on the same machine serves on the CPU instead: that fallback is what `cuda` stops.
    let agent = small_with(&["--min-gpus", "0"], None).await;
    assert_eq!(agent.get_text("/readyz").await.0, StatusCode::OK);
}

#[tokio::test]
async fn an_agent_that_expects_gpus_is_not_ready_without_them() {
    let agent = small_with(&["--min-gpus", "1"], None).await;
    let (code, body) = agent.get_text("/readyz").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body.contains("0 GPU(s) readable, 1 expected"),
        "the reason is given: {body}"
    );
    // Alive all the same: liveness restarts would not bring a GPU back.
    assert_eq!(agent.get_text("/healthz").await.0, StatusCode::OK);
}
