//! The `server` kind: a model server a team already runs (vLLM, llama.cpp's `llama-server`,
//! their own Python server), started from the catalog's command line and managed like any
//! worker: its whole process tree measured, its release verified, its leftovers named.
//!
//! The worker process supervises it (`worker::server_process`); the agent passes OpenAI-style
//! requests through to its port (`api::openai`). Commands come only from the catalog.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    DType,
    kind::{Capabilities, Kind, Loaded, Size},
};
use crate::backend::ModelBackend;

/// The placeholders a command or an environment value may hold.
pub(crate) const PLACEHOLDERS: [&str; 3] = ["{port}", "{gpu}", "{gpu_uuid}"];

/// Environment variables the agent sets itself: a catalog entry may not change them.
const RESERVED_ENV: [&str; 2] = ["CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"];

/// The longest a server may take to become healthy, and to stop.
const MAX_WAIT_S: f64 = 24.0 * 3600.0;

/// How to run a model server.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    /// The program and its arguments (`{port}`, `{gpu}`, `{gpu_uuid}` are filled in).
    pub command: Vec<String>,
    /// The path that answers `GET` with 200 once the server is ready.
    #[serde(default = "default_health")]
    pub health: String,
    /// Seconds the server may take to become healthy.
    #[serde(default = "default_ready_timeout")]
    pub ready_timeout_s: f64,
    /// Extra environment (values may hold the placeholders).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Seconds between SIGTERM and SIGKILL when it is stopped.
    #[serde(default = "default_stop_grace")]
    pub stop_grace_s: f64,
    /// A path the server offers (`POST`) to return memory it caches without using it (the
    /// agent's post-load cleanup and its Free VRAM call it); without one, only a reset
    /// (a restart of the server) returns such memory.
    #[serde(default)]
    pub free_path: Option<String>,
}

fn default_health() -> String {
    "/health".into()
}

fn default_ready_timeout() -> f64 {
    600.0
}

fn default_stop_grace() -> f64 {
    10.0
}

/// What the placeholders stand for on one start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placeholders {
    /// A free TCP port on 127.0.0.1, picked by the worker.
    pub port: u16,
    /// The device's index (NVML's; 0 on the CPU). CUDA itself sees only this GPU, as device 0.
    pub gpu: u32,
    /// The GPU's UUID (empty on the CPU).
    pub gpu_uuid: String,
}

impl Placeholders {
    /// `text` with every placeholder filled in.
    pub(crate) fn fill(&self, text: &str) -> String {
        text.replace("{port}", &self.port.to_string())
            .replace("{gpu}", &self.gpu.to_string())
            .replace("{gpu_uuid}", &self.gpu_uuid)
    }
}

impl ServerSpec {
    /// The command line and extra environment of one start.
    pub(crate) fn render(&self, vars: &Placeholders) -> (Vec<String>, Vec<(String, String)>) {
        let command = self.command.iter().map(|a| vars.fill(a)).collect();
        let env = self
            .env
            .iter()
            .map(|(k, v)| (k.clone(), vars.fill(v)))
            .collect();
        (command, env)
    }
}

/// The first `{...}` in `text` that is not a known placeholder.
fn unknown_placeholder(text: &str) -> Option<String> {
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        let tail = &rest[start..];
        let Some(end) = tail.find('}') else {
            return Some(tail.to_string());
        };
        let candidate = &tail[..=end];
        if !PLACEHOLDERS.contains(&candidate) {
            return Some(candidate.to_string());
        }
        rest = &tail[end + 1..];
    }
    None
}

fn check_path(field: &str, path: &str) -> Result<(), String> {
    if path.starts_with('/') && !path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Ok(())
    } else {
        Err(format!(
            "{field} = {path:?} must be a path starting with '/' (on the server's port)"
        ))
    }
}

fn check_wait(field: &str, secs: f64) -> Result<(), String> {
    if secs.is_finite() && secs > 0.0 && secs <= MAX_WAIT_S {
        Ok(())
    } else {
        Err(format!(
            "{field} = {secs} must be a number of seconds above 0 and at most {MAX_WAIT_S}"
        ))
    }
}

impl Kind for ServerSpec {
    const NAME: &'static str = "server";

    fn check(&self) -> Result<(), String> {
        match self.command.first() {
            None => return Err("command must name a program".into()),
            Some(program) if program.trim().is_empty() => {
                return Err("command's program (its first element) is empty".into());
            }
            Some(_) => {}
        }
        let texts = self.command.iter().chain(self.env.values());
        if let Some(bad) = texts.filter_map(|t| unknown_placeholder(t)).next() {
            return Err(format!(
                "{bad} is not a placeholder; command and env values may hold {}",
                PLACEHOLDERS.join(", ")
            ));
        }
        if self
            .command
            .iter()
            .chain(self.env.values())
            .any(|t| t.contains('\0'))
        {
            return Err("command and env values must not hold NUL bytes".into());
        }
        if !self
            .command
            .iter()
            .chain(self.env.values())
            .any(|t| t.contains("{port}"))
        {
            return Err(
                "command (or an env value) must pass {port} to the server: the agent \
                        picks the port and sends requests there"
                    .into(),
            );
        }
        check_path("health", &self.health)?;
        if let Some(free) = &self.free_path {
            check_path("free_path", free)?;
        }
        check_wait("ready_timeout_s", self.ready_timeout_s)?;
        check_wait("stop_grace_s", self.stop_grace_s)?;
        for key in self.env.keys() {
            let valid = !key.is_empty()
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !key.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(format!(
                    "env name {key:?} is not a variable name (letters, digits, '_')"
                ));
            }
            if RESERVED_ENV.contains(&key.as_str()) || key.starts_with("VRAMKEEPER_") {
                return Err(format!(
                    "env {key} is set by the agent (it picks the server's GPU and marks its \
                     processes); leave it out"
                ));
            }
        }
        Ok(())
    }

    fn size(&self) -> Size {
        // Unknown before a first load: the server's own business. Its measured footprint is
        // what the agent goes by.
        Size {
            params: 0,
            dtype: DType::F32,
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            openai: true,
            ..Capabilities::default()
        }
    }

    fn load<B: ModelBackend>(&self, _device: &B::Device) -> Result<Box<dyn Loaded<B>>, String> {
        Err(
            "a server model runs its own process; the worker supervises it instead of building \
             it on a burn backend"
                .into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(command: &[&str]) -> ServerSpec {
        ServerSpec {
            command: command.iter().map(|s| s.to_string()).collect(),
            health: default_health(),
            ready_timeout_s: 600.0,
            env: BTreeMap::new(),
            stop_grace_s: 10.0,
            free_path: None,
        }
    }

    #[test]
    fn placeholders_are_filled_in_commands_and_env() {
        let mut s = spec(&["vllm", "serve", "/m", "--port", "{port}", "--tag=gpu{gpu}"]);
        s.env.insert("GPU".into(), "{gpu_uuid}".into());
        let vars = Placeholders {
            port: 41234,
            gpu: 3,
            gpu_uuid: "GPU-abc".into(),
        };
        let (command, env) = s.render(&vars);
        assert_eq!(
            command,
            ["vllm", "serve", "/m", "--port", "41234", "--tag=gpu3"]
        );
        assert_eq!(env, [("GPU".to_string(), "GPU-abc".to_string())]);
        assert!(s.check().is_ok());
    }

    #[test]
    fn bad_entries_name_the_field() {
        let err = |s: ServerSpec| s.check().unwrap_err();
        assert!(err(spec(&[])).contains("command"));
        assert!(err(spec(&["srv", "--port", "8000"])).contains("{port}"));
        assert!(err(spec(&["srv", "--port", "{prot}"])).contains("{prot}"));
        assert!(err(spec(&["srv", "{port"])).contains("{port"));
        let ok = || spec(&["srv", "--port", "{port}"]);
        let mut s = ok();
        s.health = "health".into();
        assert!(err(s).contains("health"));
        let mut s = ok();
        s.free_path = Some("x y".into());
        assert!(err(s).contains("free_path"));
        let mut s = ok();
        s.ready_timeout_s = 0.0;
        assert!(err(s).contains("ready_timeout_s"));
        let mut s = ok();
        s.stop_grace_s = f64::NAN;
        assert!(err(s).contains("stop_grace_s"));
        let mut s = ok();
        s.env.insert("CUDA_VISIBLE_DEVICES".into(), "1".into());
        assert!(err(s).contains("CUDA_VISIBLE_DEVICES"));
        let mut s = ok();
        s.env
            .insert("VRAMKEEPER_WORKER_MARKER".into(), "x:y".into());
        assert!(err(s).contains("VRAMKEEPER_WORKER_MARKER"));
        let mut s = ok();
        s.env.insert("A=B".into(), "1".into());
        assert!(err(s).contains("A=B"));
        let mut s = spec(&["srv"]);
        s.env.insert("PORT".into(), "{port}".into());
        assert!(s.check().is_ok());
    }
}
