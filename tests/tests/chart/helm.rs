//! The tools (Helm, kubernetes-validate) and the rendered chart as JSON values.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde::Deserialize;
use serde_json::Value;

/// The release every test renders.
pub const RELEASE: &str = "vk";
/// Its namespace: not `default`, so that the Role in `default` stands apart.
pub const NAMESPACE: &str = "vramkeeper-system";
/// The values files under `tests/chart/`, each a way users install the chart.
pub const VALUES: &[&str] = &[
    "values-default.yaml",
    "values-gpu.yaml",
    "values-existing-secret.yaml",
    "values-cpu.yaml",
];

const INSTALL_HINT: &str = "scripts/install-test-tools installs it (scripts/test runs that first)";

/// The repository root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// `charts/vramkeeper`.
pub fn chart_dir() -> PathBuf {
    workspace().join("charts/vramkeeper")
}

/// A values file of `tests/chart/`.
pub fn values_path(name: &str) -> PathBuf {
    workspace().join("tests/chart").join(name)
}

fn tool(env: &str, default: &str, what: &str) -> PathBuf {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(default));
    assert!(
        path.is_file(),
        "{} is missing: the chart tests need {what}; {INSTALL_HINT} (or set {env})",
        path.display()
    );
    path
}

/// Helm v3 (`.tools/bin/helm`, or `$VK_HELM`).
pub fn helm_bin() -> PathBuf {
    tool("VK_HELM", ".tools/bin/helm", "Helm v3")
}

/// kubernetes-validate (`.tools/venv/bin/kubernetes-validate`, or `$VK_KUBERNETES_VALIDATE`).
pub fn kubernetes_validate_bin() -> PathBuf {
    tool(
        "VK_KUBERNETES_VALIDATE",
        ".tools/venv/bin/kubernetes-validate",
        "kubernetes-validate",
    )
}

/// What a tool printed, and whether it succeeded.
pub struct Output {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs Helm with its cache, config and data in a fresh temporary directory.
pub fn helm(args: &[&str]) -> Output {
    let home = tempfile::tempdir().expect("temp dir");
    let out = Command::new(helm_bin())
        .args(args)
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .output()
        .expect("run helm");
    Output {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The API the Prometheus Operator adds, which the chart's monitors and alerts need.
pub const MONITORING_API: &str = "monitoring.coreos.com/v1";

/// `helm template` of the chart with a values file and `--set` overrides (CRDs included), as
/// for a cluster that runs the Prometheus Operator ([`MONITORING_API`]).
pub fn template(values: &str, sets: &[&str]) -> Output {
    template_of(
        &chart_dir(),
        values,
        sets,
        &["--api-versions", MONITORING_API],
    )
}

/// `helm template` of the chart in `chart` with more of Helm's own arguments (`extra`).
pub fn template_of(chart: &Path, values: &str, sets: &[&str], extra: &[&str]) -> Output {
    let values = values_path(values);
    let mut args = vec![
        "template".to_string(),
        RELEASE.into(),
        chart.display().to_string(),
        "--namespace".into(),
        NAMESPACE.into(),
        "--include-crds".into(),
        "--values".into(),
        values.display().to_string(),
    ];
    for set in sets {
        args.push("--set".into());
        args.push(set.to_string());
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    helm(&args)
}

/// The chart rendered with one of [`VALUES`].
pub struct Rendered {
    /// The values file.
    pub values_name: String,
    /// The values, as the file has them.
    pub values: Value,
    /// The YAML Helm printed.
    pub text: String,
    /// Every object.
    pub objects: Vec<Value>,
}

/// Renders the chart with a values file; panics with Helm's message when it fails.
pub fn render(values: &str) -> Rendered {
    render_with(values, &[])
}

/// Renders the chart with a values file and `--set` overrides; panics when it fails.
pub fn render_with(values: &str, sets: &[&str]) -> Rendered {
    let out = template(values, sets);
    assert!(
        out.ok,
        "helm template with {values} {sets:?} failed:\n{}",
        out.stderr
    );
    let text = std::fs::read_to_string(values_path(values)).expect("read values");
    Rendered {
        values_name: values.into(),
        values: serde_yaml_ng::from_str(&text).expect("values parse"),
        objects: parse_yaml_stream(&out.stdout),
        text: out.stdout,
    }
}

/// Every document of a YAML stream, empty ones left out.
pub fn parse_yaml_stream(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

impl Rendered {
    /// Objects of a kind.
    pub fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    /// The one object of a kind whose name ends with `suffix`, if any.
    pub fn find(&self, kind: &str, suffix: &str) -> Option<&Value> {
        let found: Vec<&Value> = self
            .of_kind(kind)
            .into_iter()
            .filter(|o| name(o).ends_with(suffix))
            .collect();
        assert!(
            found.len() <= 1,
            "{}: more than one {kind} named *{suffix}",
            self.values_name
        );
        found.into_iter().next()
    }

    /// Like [`Rendered::find`], but the object must exist.
    pub fn get(&self, kind: &str, suffix: &str) -> &Value {
        self.find(kind, suffix)
            .unwrap_or_else(|| panic!("{}: no {kind} named *{suffix}", self.values_name))
    }

    /// The agent DaemonSet.
    pub fn agent(&self) -> &Value {
        self.get("DaemonSet", "-agent")
    }

    /// The operator Deployment, when the operator is enabled.
    pub fn operator(&self) -> Option<&Value> {
        self.find("Deployment", "-operator")
    }

    /// A value of the values file by dotted path (`Value::Null` when absent).
    pub fn value(&self, path: &str) -> &Value {
        path.split('.').fold(&self.values, |v, k| &v[k])
    }
}

/// `metadata.name`.
pub fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

/// The one container of a workload's Pod template with that name.
pub fn container<'a>(workload: &'a Value, container: &str) -> &'a Value {
    workload["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == container))
        .unwrap_or_else(|| panic!("no container {container} in {}", name(workload)))
}

/// A container's args as strings.
pub fn args(container: &Value) -> Vec<String> {
    container["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().expect("args are strings").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The value following `flag` in `args`.
pub fn flag<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// The one init container of a workload's Pod template with that name, if any.
pub fn init_container<'a>(workload: &'a Value, container: &str) -> Option<&'a Value> {
    workload["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == container))
}

/// A container's environment variable (the whole `env` entry).
pub fn env<'a>(container: &'a Value, var: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["name"] == var))
}
