//! The agent's HTTP API, as the operator calls it: one read (`GET /v1/status`) and four acting
//! routes, each with the bearer token.

use std::time::Duration;

use serde::{Serialize, de::DeserializeOwned};
use vramkeeper_crds::{
    SwitchTrigger,
    api::{
        ErrorBody, ErrorCode, RemediateRequest, RemediationReport, RemediationTrigger,
        StatusResponse, SwitchRequest, SwitchResponse, UnloadRequest, UnloadResponse,
    },
};

use crate::error::{Error, Result};

/// Where one agent answers, and how to authenticate.
#[derive(Clone, PartialEq, Eq)]
pub struct AgentTarget {
    /// `http://IP:PORT`.
    pub url: String,
    /// The agent Pod's name (for events and logs).
    pub pod: String,
    /// The bearer token, when one is configured.
    pub token: Option<String>,
}

impl std::fmt::Debug for AgentTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentTarget")
            .field("url", &self.url)
            .field("pod", &self.pod)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Calls agents.
#[derive(Clone, Debug)]
pub struct AgentClient {
    http: reqwest::Client,
    read_timeout: Duration,
    act_timeout: Duration,
}

impl AgentClient {
    /// A client; `act_timeout` bounds a switch (model load included), `read_timeout` a status read.
    pub fn new(read_timeout: Duration, act_timeout: Duration) -> Self {
        Self {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                // A burst opens a connection per call in flight; keep few once it is over.
                .pool_max_idle_per_host(2)
                .pool_idle_timeout(Duration::from_secs(30))
                .build()
                .expect("an HTTP client without TLS builds"),
            read_timeout,
            act_timeout,
        }
    }

    /// `GET /v1/status`.
    pub async fn status(&self, target: &AgentTarget) -> Result<StatusResponse> {
        let req = self
            .http
            .get(format!("{}/v1/status", target.url))
            .timeout(self.read_timeout);
        self.send(target, req).await
    }

    /// `POST /v1/models/switch` with trigger `spec`.
    pub async fn switch(
        &self,
        target: &AgentTarget,
        gpu: u32,
        model: &str,
    ) -> Result<SwitchResponse> {
        let body = SwitchRequest {
            model: model.into(),
            gpu,
            trigger: Some(SwitchTrigger::Spec),
        };
        self.post(target, "/v1/models/switch", &body).await
    }

    /// `POST /v1/models/unload` with `trigger`: `spec` (the spec wants another model or none)
    /// or `idle` (the model served nothing for `idleUnloadSeconds`).
    pub async fn unload(
        &self,
        target: &AgentTarget,
        gpu: u32,
        trigger: SwitchTrigger,
    ) -> Result<UnloadResponse> {
        let body = UnloadRequest {
            gpu,
            trigger: Some(trigger),
        };
        self.post(target, "/v1/models/unload", &body).await
    }

    /// `POST /v1/gpu/free` with trigger `operator`; `kill_foreign` from the GpuModel's policy.
    pub async fn free(
        &self,
        target: &AgentTarget,
        gpu: u32,
        kill_foreign: bool,
    ) -> Result<RemediationReport> {
        let body = RemediateRequest {
            gpu,
            trigger: Some(RemediationTrigger::Operator),
            kill_foreign: Some(kill_foreign),
        };
        self.post(target, "/v1/gpu/free", &body).await
    }

    /// `POST /v1/gpu/reset` with trigger `operator`; `kill_foreign` from the GpuModel's policy.
    pub async fn reset(
        &self,
        target: &AgentTarget,
        gpu: u32,
        kill_foreign: bool,
    ) -> Result<RemediationReport> {
        let body = RemediateRequest {
            gpu,
            trigger: Some(RemediationTrigger::Operator),
            kill_foreign: Some(kill_foreign),
        };
        self.post(target, "/v1/gpu/reset", &body).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        target: &AgentTarget,
        path: &str,
        body: &B,
    ) -> Result<T> {
        let req = self
            .http
            .post(format!("{}{path}", target.url))
            .json(body)
            .timeout(self.act_timeout);
        self.send(target, req).await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        target: &AgentTarget,
        mut req: reqwest::RequestBuilder,
    ) -> Result<T> {
        if let Some(token) = &target.token {
            req = req.bearer_auth(token);
        }
        let unreachable = |e: reqwest::Error| Error::AgentUnreachable {
            url: target.url.clone(),
            message: e.to_string(),
        };
        let response = req.send().await.map_err(unreachable)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(unreachable)?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| Error::AgentRejected {
                url: target.url.clone(),
                status: status.as_u16(),
                code: ErrorCode::Unrecognized,
                message: format!("cannot read the answer: {e}"),
            });
        }
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(b) => (b.error.code, b.error.message),
            Err(_) => (
                ErrorCode::Unrecognized,
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
            ),
        };
        Err(Error::AgentRejected {
            url: target.url.clone(),
            status: status.as_u16(),
            code,
            message,
        })
    }
}
