//! The generated CRD: up to date in the chart, defaults that match serde's, and every fixture
//! accepted or rejected for the reason it was written for (openAPIV3Schema through the
//! `jsonschema` crate, CEL rules through kube's client-side CEL evaluation).

use std::path::{Path, PathBuf};

use kube::CustomResourceExt;
use serde_json::Value;
use vramkeeper_crds::{GpuModel, ZombiePolicy};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn open_api_schema() -> Value {
    let crd = GpuModel::crd();
    let version = &crd.spec.versions[0];
    serde_json::to_value(
        version
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn chart_crd_matches_the_code() {
    let path = repo_root().join(vramkeeper_crds::CRD_PATH);
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == vramkeeper_crds::crd_yaml(),
        "{} is stale: run `cargo run -p vramkeeper-crds --bin crdgen`",
        path.display()
    );
}

#[test]
fn crd_names_scope_and_columns() {
    let crd = GpuModel::crd();
    assert_eq!(crd.spec.group, "vramkeeper.dev");
    assert_eq!(crd.spec.scope, "Cluster");
    assert_eq!(crd.spec.names.short_names, Some(vec!["gpm".to_string()]));
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.subresources.as_ref().unwrap().status.is_some());
    let columns: Vec<_> = version
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        columns,
        [
            "Node",
            "GPU",
            "Desired",
            "Active",
            "VRAM-MiB",
            "Ghost-MiB",
            "Phase",
            "Age"
        ]
    );
}

/// Every property of the schema has a description: `///` docs become the CRD's documentation.
#[test]
fn every_schema_property_is_documented() {
    fn walk(path: &str, schema: &Value, missing: &mut Vec<String>) {
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (name, prop) in props {
                let here = format!("{path}.{name}");
                let builtin = matches!(here.as_str(), ".apiVersion" | ".kind" | ".metadata");
                if !builtin && prop.get("description").is_none() {
                    missing.push(here.clone());
                }
                walk(&here, prop, missing);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
    }
    let mut missing = vec![];
    walk("", &open_api_schema(), &mut missing);
    assert!(missing.is_empty(), "undocumented fields: {missing:?}");
}

#[test]
fn schema_defaults_equal_serde_defaults() {
    let schema = open_api_schema();
    let zombie = &schema["properties"]["spec"]["properties"]["zombie"];
    let serde_default = serde_json::to_value(ZombiePolicy::default()).unwrap();
    assert_eq!(zombie["default"], serde_default, "zombie object default");
    let props = zombie["properties"].as_object().unwrap();
    for (name, prop) in props {
        if name == "killForeignProcesses" {
            // A plain `#[serde(default)]` bool: false, which schemars leaves implicit.
            assert!(prop.get("default").is_none_or(|d| d == &Value::Bool(false)));
            continue;
        }
        assert_eq!(
            prop["default"], serde_default[name],
            "default of zombie.{name}"
        );
    }
    // And serde fills exactly those defaults into an empty policy.
    let empty: ZombiePolicy = serde_json::from_value(serde_json::json!({})).unwrap();
    assert_eq!(empty, ZombiePolicy::default());
    assert_eq!(empty.threshold_mib, 1536);
}

#[test]
fn conditions_and_models_are_map_lists() {
    let schema = open_api_schema();
    let status = &schema["properties"]["status"]["properties"];
    for (field, key) in [("conditions", "type"), ("models", "name")] {
        assert_eq!(status[field]["x-kubernetes-list-type"], "map", "{field}");
        assert_eq!(
            status[field]["x-kubernetes-list-map-keys"],
            serde_json::json!([key])
        );
    }
}

/// A fixture: one object, or an update (the stored object, then the change).
struct Fixture {
    name: String,
    expect: Option<String>,
    old: Option<Value>,
    new: Value,
}

fn fixtures(kind: &str) -> Vec<Fixture> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(kind);
    let mut out = vec![];
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .map(str::to_string);
        let mut docs: Vec<Value> = text
            .split("\n---\n")
            .map(|doc| serde_yaml_ng::from_str(doc).unwrap())
            .collect();
        let new = docs.pop().unwrap();
        out.push(Fixture {
            name: path.file_name().unwrap().to_string_lossy().into_owned(),
            expect,
            old: docs.pop(),
            new,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(!out.is_empty(), "no fixtures in {}", dir.display());
    out
}

/// Every problem the apiserver would find: schema violations, then CEL rules.
fn problems(fixture: &Fixture) -> Vec<String> {
    let schema = open_api_schema();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let mut out: Vec<String> = validator
        .iter_errors(&fixture.new)
        .map(|e| {
            format!(
                "{}: {}",
                e.instance_path().as_str().trim_start_matches('/'),
                e
            )
        })
        .collect();
    if out.is_empty() {
        let object: GpuModel = serde_json::from_value(fixture.new.clone()).unwrap();
        let result = match &fixture.old {
            Some(old) => {
                let old: GpuModel = serde_json::from_value(old.clone()).unwrap();
                object.validate_cel_update(&old)
            }
            None => object.validate_cel(),
        };
        if let Err(errors) = result {
            out.extend(
                errors
                    .as_slice()
                    .iter()
                    .map(|e| format!("{}: {}", e.field_path, e.message)),
            );
        }
    }
    out
}

#[test]
fn good_fixtures_are_accepted() {
    for fixture in fixtures("good") {
        let problems = problems(&fixture);
        assert!(problems.is_empty(), "{}: {problems:?}", fixture.name);
        serde_json::from_value::<GpuModel>(fixture.new).unwrap();
    }
}

#[test]
fn bad_fixtures_are_rejected_for_their_reason() {
    for fixture in fixtures("bad") {
        let expect = fixture
            .expect
            .clone()
            .unwrap_or_else(|| panic!("{} has no '# expect:' line", fixture.name));
        let problems = problems(&fixture);
        assert_eq!(
            problems.len(),
            1,
            "{}: exactly one problem, got {problems:?}",
            fixture.name
        );
        assert!(
            problems[0].starts_with(&expect),
            "{}: expected `{expect}`, got `{}`",
            fixture.name,
            problems[0]
        );
    }
}

#[test]
fn a_ladder_written_before_degraded_existed_parses_without_it() {
    let old = serde_json::json!({
        "episodeSince": "2026-11-26T20:00:00Z", "attempts": 1, "lastFree": "2026-11-26T20:00:30Z"
    });
    let l: vramkeeper_crds::LadderStatus = serde_json::from_value(old).unwrap();
    assert_eq!((l.degraded, l.lifted_at, l.attempts), (None, None, 1));
}

#[test]
fn degraded_reasons_are_the_condition_reasons() {
    use vramkeeper_crds::DegradedReason::*;
    for r in [ResetDidNotClear, ResetBudgetSpent, NoResetAllowed] {
        assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
    }
}
