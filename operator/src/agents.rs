//! Finding the agent of a node: its Pod (from the watched Pods, by label selector and
//! `spec.nodeName`) and the bearer token (from a Secret, cached briefly).

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{Api, ResourceExt, runtime::reflector::Store};

use crate::{
    agent_client::AgentTarget,
    error::{Error, Result},
};

/// How long a token read from the Secret is reused.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);

/// How long a lookup waits for the Pod cache's first list.
pub const STORE_WAIT: Duration = Duration::from_secs(30);

/// Where the token lives.
#[derive(Clone, Debug)]
pub struct TokenSecret {
    /// The Secret (in the agents' namespace).
    pub api: Api<Secret>,
    /// Its name.
    pub name: String,
    /// The key holding the token.
    pub key: String,
}

/// Finds agents.
pub struct AgentLocator {
    pods: Store<Pod>,
    port_name: String,
    default_port: u16,
    secret: Option<TokenSecret>,
    token: Mutex<Option<(Instant, Option<String>)>>,
}

impl AgentLocator {
    /// A locator over the watched agent Pods. The port is the container port named
    /// `port_name`, else `default_port`.
    pub fn new(
        pods: Store<Pod>,
        port_name: String,
        default_port: u16,
        secret: Option<TokenSecret>,
    ) -> Self {
        Self {
            pods,
            port_name,
            default_port,
            secret,
            token: Mutex::new(None),
        }
    }

    /// The agent Pod on `node` and its URL: a Running, Ready Pod with an IP, not being
    /// deleted; the newest when there are several.
    pub fn pod_on(&self, node: &str) -> Option<(String, String)> {
        let pod = self
            .pods
            .state()
            .into_iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
            .filter(|p| p.metadata.deletion_timestamp.is_none() && ready(p))
            .max_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0))?;
        let ip = pod.status.as_ref()?.pod_ip.clone()?;
        let port = pod
            .spec
            .as_ref()
            .into_iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(self.port_name.as_str()))
            .map_or(i32::from(self.default_port), |p| p.container_port);
        let host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip
        };
        Some((pod.name_any(), format!("http://{host}:{port}")))
    }

    /// The agent of `node`, with the token. Waits (briefly) for the Pod cache's first list,
    /// so that a fresh operator does not report agents missing that are merely unlisted.
    pub async fn target(&self, node: &str) -> Result<AgentTarget> {
        let _ = tokio::time::timeout(STORE_WAIT, self.pods.wait_until_ready()).await;
        let (pod, url) = self.pod_on(node).ok_or_else(|| Error::AgentNotFound {
            node: node.to_string(),
        })?;
        Ok(AgentTarget {
            url,
            pod,
            token: self.token().await?,
        })
    }

    /// The token: cached for [`TOKEN_TTL`], else read from the Secret.
    pub async fn token(&self) -> Result<Option<String>> {
        let Some(secret) = &self.secret else {
            return Ok(None);
        };
        if let Some((at, token)) = self.token.lock().unwrap().as_ref()
            && at.elapsed() < TOKEN_TTL
        {
            return Ok(token.clone());
        }
        let s =
            secret.api.get_opt(&secret.name).await?.ok_or_else(|| {
                Error::Token(format!("the Secret {} does not exist", secret.name))
            })?;
        let token = s
            .data
            .as_ref()
            .and_then(|d| d.get(&secret.key))
            .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
            .or_else(|| {
                s.string_data
                    .as_ref()
                    .and_then(|d| d.get(&secret.key))
                    .map(|v| v.trim().to_string())
            })
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Error::Token(format!(
                    "the Secret {} has no key {:?}",
                    secret.name, secret.key
                ))
            })?;
        *self.token.lock().unwrap() = Some((Instant::now(), Some(token.clone())));
        Ok(Some(token))
    }

    /// Forgets the cached token (after the agent refused it).
    pub fn forget_token(&self) {
        *self.token.lock().unwrap() = None;
    }
}

fn ready(pod: &Pod) -> bool {
    pod.status.as_ref().is_some_and(|s| {
        s.phase.as_deref() == Some("Running")
            && s.conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}
