//! Helm lint and template over every values file; the output through kubernetes-validate; the
//! objects wired to each other and to the binaries' flags.

use std::{collections::BTreeSet, process::Command};

use clap::{CommandFactory, Parser};
use serde_json::{Value, json};
use vramkeeper_e2e::agent::agent_bin;
use vramkeeper_operator::Args as OperatorArgs;

use crate::helm::{
    NAMESPACE, Rendered, VALUES, args, container, env, flag, helm, init_container, name, render,
    render_with, template,
};

/// Kubernetes versions the manifests are validated against: k8s-openapi's `v1_33` (what the
/// code is built for) up to the newest kubernetes-validate 1.37.0 knows.
pub const KUBERNETES_VERSIONS: &[&str] = &["1.33", "1.34", "1.35", "1.36", "1.37"];

/// Kinds kubernetes-validate has no schema for (the Prometheus Operator's): checked here by
/// [`monitors_select_the_agents_and_the_operator`] instead.
const NO_SCHEMA: &[&str] = &["ServiceMonitor", "PodMonitor", "PrometheusRule"];

#[test]
fn helm_lint_strict_passes_for_every_values_file() {
    for values in VALUES {
        let path = crate::helm::values_path(values);
        let chart = crate::helm::chart_dir();
        let out = helm(&[
            "lint",
            "--strict",
            &chart.display().to_string(),
            "--namespace",
            NAMESPACE,
            "--values",
            &path.display().to_string(),
        ]);
        assert!(
            out.ok,
            "helm lint --strict with {values}:\n{}{}",
            out.stdout, out.stderr
        );
    }
}

#[test]
fn rendered_manifests_pass_kubernetes_validate_strict() {
    let dir = tempfile::tempdir().unwrap();
    for values in VALUES {
        let rendered = render(values);
        let file = dir.path().join(values);
        std::fs::write(&file, &rendered.text).unwrap();
        let mut cmd = Command::new(crate::helm::kubernetes_validate_bin());
        cmd.arg("--strict");
        for v in KUBERNETES_VERSIONS {
            cmd.args(["-k", v]);
        }
        let out = cmd.arg(&file).output().expect("run kubernetes-validate");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let problems: Vec<&str> = stdout
            .lines()
            .filter(|l| !l.starts_with("INFO "))
            .filter(|l| {
                !NO_SCHEMA
                    .iter()
                    .any(|k| l.contains(&format!("for kind {k} ")))
            })
            .collect();
        assert!(
            out.status.success() && problems.is_empty(),
            "kubernetes-validate --strict with {values}:\n{}\n{}",
            problems.join("\n"),
            String::from_utf8_lossy(&out.stderr)
        );
        let checked = rendered
            .objects
            .iter()
            .filter(|o| !NO_SCHEMA.contains(&o["kind"].as_str().unwrap_or_default()))
            .count();
        let passed = stdout
            .lines()
            .filter(|l| l.contains(" passed for "))
            .count();
        assert_eq!(
            passed,
            checked * KUBERNETES_VERSIONS.len(),
            "{values}: every object validated against every version:\n{stdout}"
        );
    }
}

/// Every values file renders the objects of an installation.
#[test]
fn every_values_file_renders_an_installation() {
    for values in VALUES {
        let r = render(values);
        for (kind, suffix) in [
            ("CustomResourceDefinition", "gpumodels.vramkeeper.dev"),
            ("DaemonSet", "-agent"),
            ("ServiceAccount", "-agent"),
            ("ClusterRole", "-agent"),
            ("ClusterRoleBinding", "-agent"),
            ("Service", "-agent"),
            ("ConfigMap", "-agent-catalog"),
        ] {
            r.get(kind, suffix);
        }
        let operator = r.value("operator.enabled") != &json!(false);
        assert_eq!(r.operator().is_some(), operator, "{values}");
        assert_eq!(r.find("Service", "-operator").is_some(), operator);
        for o in &r.objects {
            let cluster_scoped = matches!(
                o["kind"].as_str().unwrap(),
                "ClusterRole" | "ClusterRoleBinding" | "CustomResourceDefinition"
            );
            assert_eq!(
                o["metadata"]["namespace"].is_null(),
                cluster_scoped,
                "{values}: namespace of {} {}",
                o["kind"],
                name(o)
            );
        }
    }
}

#[test]
fn the_operator_is_configured_to_find_the_agents() {
    for values in VALUES {
        let r = render(values);
        let Some(deployment) = r.operator() else {
            continue;
        };
        let c = container(deployment, "operator");
        let mut argv = vec!["vramkeeper-operator".to_string()];
        argv.extend(args(c));
        let parsed = OperatorArgs::try_parse_from(&argv)
            .unwrap_or_else(|e| panic!("{values}: the operator refuses its args {argv:?}: {e}"));
        let a = &parsed.agents;
        assert_eq!(a.agent_namespace, NAMESPACE, "{values}");

        // The selector picks exactly the DaemonSet's Pods.
        let agent = r.agent();
        let pod_labels = &agent["spec"]["template"]["metadata"]["labels"];
        let match_labels = &agent["spec"]["selector"]["matchLabels"];
        let selector: Value = a
            .agent_selector
            .split(',')
            .map(|kv| {
                let (k, v) = kv.split_once('=').expect("k=v");
                (k.to_string(), json!(v))
            })
            .collect::<serde_json::Map<_, _>>()
            .into();
        assert_eq!(&selector, match_labels, "{values}: agent selector");
        for (k, v) in selector.as_object().unwrap() {
            assert_eq!(&pod_labels[k], v, "{values}: Pod label {k}");
        }

        // The port, by name and number.
        let agent_container = container(agent, "agent");
        let port = agent_container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == a.agent_port_name.as_str())
            .unwrap_or_else(|| panic!("{values}: no agent port {}", a.agent_port_name));
        assert_eq!(port["containerPort"], json!(a.agent_port));

        // The token: the same Secret and key the agent mounts.
        let secret = a.agent_token_secret.as_deref().expect("a token Secret");
        assert_eq!(secret, token_volume(agent)["secret"]["secretName"]);
        let key = token_volume(agent)["secret"]["items"][0]["key"].clone();
        assert_eq!(json!(a.agent_token_key), key, "{values}");
        match r
            .value("auth.existingSecret")
            .as_str()
            .filter(|s| !s.is_empty())
        {
            Some(existing) => {
                assert_eq!(secret, existing);
                assert!(
                    r.find("Secret", "").is_none(),
                    "{values}: no Secret rendered"
                );
            }
            None => {
                let s = r.get("Secret", "-token");
                assert_eq!(name(s), secret);
                assert!(s["data"][&a.agent_token_key].is_string());
            }
        }

        // Leader election: the Lease in the operator's namespace, one identity per Pod.
        let replicas = deployment["spec"]["replicas"].as_u64().unwrap();
        assert!(parsed.leader.leader_elect || replicas <= 1, "{values}");
        assert_eq!(
            env(c, "POD_NAMESPACE").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.namespace"
        );
        assert_eq!(
            env(c, "POD_NAME").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.name"
        );

        // Environment variables the operator reads, or the log filter.
        let known: BTreeSet<String> = OperatorArgs::command()
            .get_arguments()
            .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
            .chain(["RUST_LOG".to_string()])
            .collect();
        for e in c["env"].as_array().unwrap() {
            let var = e["name"].as_str().unwrap();
            assert!(known.contains(var), "{values}: the operator ignores {var}");
        }

        // Probes reach /healthz on the metrics port the operator listens on.
        let listen_port = parsed.listen.port();
        let metrics = c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "metrics")
            .unwrap();
        assert_eq!(metrics["containerPort"], json!(listen_port));
        for probe in ["livenessProbe", "readinessProbe"] {
            assert_eq!(c[probe]["httpGet"]["path"], "/healthz", "{probe}");
            assert_eq!(c[probe]["httpGet"]["port"], "metrics", "{probe}");
        }
    }
}

/// A volume of a workload's Pod template.
pub fn volume<'a>(workload: &'a Value, volume: &str) -> &'a Value {
    workload["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["name"] == volume))
        .unwrap_or_else(|| panic!("no volume {volume} in {}", name(workload)))
}

/// The agent's token volume.
pub fn token_volume(agent: &Value) -> &Value {
    volume(agent, "token")
}

/// Where a container mounts a volume.
pub fn mount_of<'a>(container: &'a Value, volume: &str) -> &'a str {
    container["volumeMounts"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["name"] == volume))
        .and_then(|m| m["mountPath"].as_str())
        .unwrap_or_else(|| panic!("volume {volume} is not mounted"))
}

#[test]
fn the_agent_binary_accepts_the_rendered_flags() {
    for values in VALUES {
        let r = render(values);
        let agent = r.agent();
        let c = container(agent, "agent");
        let argv = args(c);
        // clap checks each flag and value as it parses, and stops at --version.
        let out = Command::new(agent_bin())
            .args(&argv)
            .arg("--version")
            .output()
            .expect("run vramkeeper-agent");
        assert!(
            out.status.success(),
            "{values}: vramkeeper-agent refuses {argv:?}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );

        // Every path flag points into the volume that holds it.
        let catalog = flag(&argv, "--catalog").unwrap();
        let catalog_dir = mount_of(c, "catalog");
        let key = catalog
            .strip_prefix(&format!("{catalog_dir}/"))
            .expect("--catalog inside the catalog mount");
        let cm_name = volume(agent, "catalog")["configMap"]["name"]
            .as_str()
            .unwrap();
        let cm = r.get("ConfigMap", cm_name);
        assert!(cm["data"][key].is_string(), "{values}: catalog key {key}");

        let token = flag(&argv, "--token-file").unwrap();
        let key = token
            .strip_prefix(&format!("{}/", mount_of(c, "token")))
            .expect("--token-file inside the token mount");
        assert_eq!(token_volume(agent)["secret"]["items"][0]["path"], key);

        for (flag_name, volume_name) in [("--state-dir", "state"), ("--cache-dir", "cache")] {
            assert_eq!(flag(&argv, flag_name), Some(mount_of(c, volume_name)));
            let host = &volume(agent, volume_name)["hostPath"];
            assert_eq!(host["type"], "DirectoryOrCreate", "{volume_name}");
        }
        assert!(mount_of(c, "tmp") == "/tmp");

        // Listening on every address, on the port named http.
        let listen = flag(&argv, "--listen").unwrap();
        let http = &c["ports"][0];
        assert_eq!(http["name"], "http");
        assert_eq!(listen, format!("0.0.0.0:{}", http["containerPort"]));

        // The agent frees zombie memory itself only when no operator runs the ladder.
        let auto_free = flag(&argv, "--auto-free").unwrap();
        assert_eq!(auto_free == "true", r.operator().is_none(), "{values}");

        // Its node, for the GpuModels it reports into.
        assert_eq!(
            env(c, "NODE_NAME").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
            "spec.nodeName"
        );
        // NVIDIA's runtime injects GPUs in GPU mode only.
        let device = flag(&argv, "--device").unwrap();
        assert_eq!(
            env(c, "NVIDIA_DRIVER_CAPABILITIES").is_some(),
            device != "cpu",
            "{values}"
        );
        let visible = env(c, "NVIDIA_VISIBLE_DEVICES").map(|e| e["value"].clone());
        if device == "cpu" {
            assert_eq!(visible, Some(json!("void")), "{values}");
        }
    }
}

fn no_capabilities(security: &Value) {
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
}

#[test]
fn secure_by_default() {
    let r = render("values-default.yaml");
    let agent = r.agent();
    let pod = &agent["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], false);
    assert!(pod["hostNetwork"].is_null() && pod["hostIPC"].is_null());
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = container(agent, "agent");
    no_capabilities(&c["securityContext"]);
    assert!(c["securityContext"]["capabilities"]["add"].is_null());
    assert!(c["securityContext"]["privileged"].is_null());
    // The init container: root for one chown, CAP_CHOWN only, the agent's user as the owner.
    let init = init_container(agent, "prepare-host-dirs").unwrap();
    assert_eq!(init["command"][0], "chown");
    assert_eq!(init["command"][2], "65532:65532");
    no_capabilities(&init["securityContext"]);
    assert_eq!(
        init["securityContext"]["capabilities"]["add"],
        json!(["CHOWN"])
    );

    let operator = r.operator().unwrap();
    let pod = &operator["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = container(operator, "operator");
    no_capabilities(&c["securityContext"]);
    assert!(c["securityContext"]["capabilities"]["add"].is_null());
    // No NetworkPolicy, monitor or dashboard unless asked for.
    for kind in ["NetworkPolicy", "ServiceMonitor", "PodMonitor"] {
        assert!(r.of_kind(kind).is_empty(), "{kind}");
    }
    assert!(r.find("ConfigMap", "-dashboard").is_none());
}

#[test]
fn gpu_options_reach_the_agent_pod() {
    let r = render("values-gpu.yaml");
    let agent = r.agent();
    let pod = &agent["spec"]["template"]["spec"];
    assert_eq!(pod["runtimeClassName"], "nvidia");
    assert_eq!(pod["hostPID"], true);
    let c = container(agent, "agent");
    assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], 2);
    // Requested GPUs come from the device plugin, not NVIDIA_VISIBLE_DEVICES.
    assert!(env(c, "NVIDIA_VISIBLE_DEVICES").is_none());
    // Killing foreign processes: root, with CAP_KILL as the one capability.
    let security = &c["securityContext"];
    no_capabilities(security);
    assert_eq!(security["capabilities"]["add"], json!(["KILL"]));
    assert_eq!(security["runAsUser"], 0);
    assert!(args(c).contains(&"--kill-foreign-processes".to_string()));
    assert_eq!(
        init_container(agent, "prepare-host-dirs").unwrap()["command"][2],
        "0:0"
    );
    // Not ready while fewer than the requested GPUs can be read.
    assert_eq!(flag(&args(c), "--min-gpus"), Some("2"));

    let defaults = render("values-default.yaml");
    let c = container(defaults.agent(), "agent");
    assert_eq!(env(c, "NVIDIA_VISIBLE_DEVICES").unwrap()["value"], "all");
    assert_eq!(
        flag(&args(c), "--device"),
        Some("cuda"),
        "GPU mode by default"
    );
    assert_eq!(
        flag(&args(c), "--min-gpus"),
        None,
        "--device cuda implies one"
    );
    // On the CPU the base image's NVIDIA_VISIBLE_DEVICES=all is overridden: no GPU injected.
    let cpu = render("values-cpu.yaml");
    let c = container(cpu.agent(), "agent");
    assert_eq!(env(c, "NVIDIA_VISIBLE_DEVICES").unwrap()["value"], "void");
    assert!(env(c, "NVIDIA_DRIVER_CAPABILITIES").is_none());
    let pod = &cpu.agent()["spec"]["template"]["spec"];
    assert!(pod["nodeSelector"].is_null() && pod["affinity"].is_null());
}

/// Whether every label of a non-empty selector is in `labels`.
pub fn labels_match(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| &labels[k] == v))
}

#[test]
fn services_select_their_pods() {
    for values in VALUES {
        let r = render(values);
        for service in r.of_kind("Service") {
            let workload = if name(service).ends_with("-agent") {
                r.agent()
            } else {
                r.operator().unwrap()
            };
            let template = &workload["spec"]["template"];
            assert!(labels_match(
                &service["spec"]["selector"],
                &template["metadata"]["labels"]
            ));
            for port in service["spec"]["ports"].as_array().unwrap() {
                let target = port["targetPort"].as_str().unwrap();
                let ports: Vec<&Value> = template["spec"]["containers"][0]["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .collect();
                let p = ports.iter().find(|p| p["name"] == target).unwrap();
                assert_eq!(p["containerPort"], port["port"], "{values}");
            }
        }
    }
}

#[test]
fn monitors_select_the_agents_and_the_operator() {
    let r = render("values-gpu.yaml");
    let monitors = r.of_kind("ServiceMonitor");
    assert_eq!(monitors.len(), 2);
    for m in monitors {
        assert_eq!(m["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(m["metadata"]["labels"]["release"], "kube-prometheus-stack");
        let service = r.get("Service", name(m));
        assert!(labels_match(
            &m["spec"]["selector"]["matchLabels"],
            &service["metadata"]["labels"]
        ));
        assert_eq!(
            m["spec"]["namespaceSelector"]["matchNames"],
            json!([NAMESPACE])
        );
        let endpoint = &m["spec"]["endpoints"][0];
        assert_eq!(endpoint["port"], service["spec"]["ports"][0]["name"]);
        assert_eq!(endpoint["path"], "/metrics");
        let keys: BTreeSet<&str> = endpoint
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert!(keys.is_subset(&BTreeSet::from(["port", "path", "interval", "relabelings"])));
    }
    assert!(r.of_kind("PodMonitor").is_empty(), "one kind of monitor");
    let service_monitors = r;
    // PodMonitors instead: the agents and the operator, by their Pods' labels and ports.
    let r = render_with(
        "values-gpu.yaml",
        &[
            "monitoring.serviceMonitor.enabled=false",
            "monitoring.podMonitor.enabled=true",
        ],
    );
    assert!(r.of_kind("ServiceMonitor").is_empty());
    assert_eq!(r.of_kind("PodMonitor").len(), 2);
    let op = r.get("PodMonitor", "-operator");
    assert!(labels_match(
        &op["spec"]["selector"]["matchLabels"],
        &r.operator().unwrap()["spec"]["template"]["metadata"]["labels"]
    ));
    assert_eq!(op["spec"]["podMetricsEndpoints"][0]["port"], "metrics");
    let pm = r.get("PodMonitor", "-agent");
    assert_eq!(pm["apiVersion"], "monitoring.coreos.com/v1");
    assert!(labels_match(
        &pm["spec"]["selector"]["matchLabels"],
        &r.agent()["spec"]["template"]["metadata"]["labels"]
    ));
    let endpoint = &pm["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], "http");
    // The dashboard groups by node: both agent monitors add it.
    let node =
        json!([{"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"}]);
    assert_eq!(endpoint["relabelings"], node);
    for m in service_monitors.of_kind("ServiceMonitor") {
        assert_eq!(
            m["spec"]["endpoints"][0]["relabelings"],
            node,
            "{}",
            name(m)
        );
    }
}

#[test]
fn network_policies_admit_the_operator_and_the_listed_peers_only() {
    let r = render("values-gpu.yaml");
    let agent_np = r.get("NetworkPolicy", "-agent");
    assert!(labels_match(
        &agent_np["spec"]["podSelector"]["matchLabels"],
        &r.agent()["spec"]["template"]["metadata"]["labels"]
    ));
    let rule = &agent_np["spec"]["ingress"][0];
    assert_eq!(rule["ports"], json!([{"port": "http", "protocol": "TCP"}]));
    let from = rule["from"].as_array().unwrap();
    assert_eq!(from.len(), 2);
    assert!(labels_match(
        &from[0]["podSelector"]["matchLabels"],
        &r.operator().unwrap()["spec"]["template"]["metadata"]["labels"]
    ));
    assert_eq!(from[1], r.value("networkPolicy.agentFrom")[0]);
    // With a monitor rendered, the scraper too, on the same port.
    let scraper = &agent_np["spec"]["ingress"][1];
    assert_eq!(scraper["ports"], rule["ports"]);
    assert_eq!(scraper["from"], crate::monitoring::default_scraper_from());
    let op_np = r.get("NetworkPolicy", "-operator");
    assert_eq!(op_np["spec"]["ingress"][0]["ports"][0]["port"], "metrics");

    // Without the operator, only the listed peers; never an empty `from` (it admits everyone).
    let cpu = render("values-cpu.yaml");
    let np = cpu.get("NetworkPolicy", "-agent");
    assert_eq!(
        np["spec"]["ingress"][0]["from"],
        cpu.value("networkPolicy.agentFrom").clone()
    );
    let lone = template("values-cpu.yaml", &["networkPolicy.agentFrom=null"]);
    assert!(lone.ok, "{}", lone.stderr);
    let objects = crate::helm::parse_yaml_stream(&lone.stdout);
    let np = objects
        .iter()
        .find(|o| o["kind"] == "NetworkPolicy")
        .unwrap();
    assert_eq!(np["spec"]["ingress"], json!([]));
}

#[test]
fn the_token_secret_is_generated_given_or_existing() {
    let default = render("values-default.yaml");
    let generated = default.get("Secret", "-token")["data"]["token"]
        .as_str()
        .unwrap();
    assert_eq!(generated.len(), 64, "48 random characters, base64");
    let cpu = render("values-cpu.yaml");
    assert_eq!(
        cpu.get("Secret", "-token")["data"]["token"],
        "YS1maXhlZC10b2tlbi1mb3ItdGVzdHM=",
        "auth.token, base64"
    );
    let existing = render("values-existing-secret.yaml");
    assert!(existing.of_kind("Secret").is_empty());
    let agent = existing.agent();
    assert_eq!(
        token_volume(agent)["secret"]["secretName"],
        "gpu-agents-token"
    );
    assert_eq!(
        flag(&args(container(agent, "agent")), "--token-file"),
        Some("/var/run/secrets/vramkeeper/api-token")
    );
    let image = container(agent, "agent")["image"].as_str().unwrap();
    assert!(image.starts_with("registry.example.com/ml/vramkeeper-agent@sha256:"));
    assert!(name(agent).starts_with("gpu-memory-"));
}

#[test]
fn values_that_cannot_work_are_refused() {
    for (sets, expect) in [
        (
            &["operator.replicas=2", "operator.leaderElect=false"][..],
            "needs operator.leaderElect",
        ),
        (
            &["agent.killForeignProcesses=true", "agent.hostPID=false"],
            "needs agent.hostPID",
        ),
        (&["agent.device=gpu"], "agent.device"),
        (
            &[
                "monitoring.serviceMonitor.enabled=true",
                "monitoring.podMonitor.enabled=true",
            ],
            "enable one",
        ),
        (
            &["agent.waitForNvidia.validationFile=relative"],
            "validationFile",
        ),
        (&["agent.hostPaht=/x"], "hostPaht"),
        (&["catalog.models[0].name=Big_Model"], "catalog.models.0"),
        (&["catalog.models[1].params=null"], "params"),
        (&["catalog.models[1].flavour=x"], "catalog.models.1"),
        (&["agent.autoFree=sometimes"], "agent.autoFree"),
    ] {
        let out = template("values-default.yaml", sets);
        assert!(!out.ok, "{sets:?} should be refused");
        assert!(
            out.stderr.contains(expect),
            "{sets:?}: expected `{expect}` in:\n{}",
            out.stderr
        );
    }
}

/// The rendered values of a render, for the other modules.
pub fn catalog_toml(r: &Rendered) -> String {
    r.get("ConfigMap", "-agent-catalog")["data"]["catalog.toml"]
        .as_str()
        .unwrap()
        .to_string()
}
