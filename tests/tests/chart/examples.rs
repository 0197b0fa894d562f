//! `examples/`: every GpuModel passes the CRD's openAPIV3Schema (through the `jsonschema`
//! crate) and its CEL rules (kube's client-side evaluation), names a model of the chart's
//! default catalog, and each update example is a valid change of the object it updates.

use std::path::PathBuf;

use kube::CustomResourceExt;
use serde_json::Value;
use vramkeeper_crds::GpuModel;

use crate::helm::{chart_dir, parse_yaml_stream, workspace};

fn examples() -> Vec<(String, Vec<Value>)> {
    let dir = workspace().join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, parse_yaml_stream(&text))
        })
        .collect()
}

fn schema() -> Value {
    let crd = GpuModel::crd();
    let version = &crd.spec.versions[0];
    serde_json::to_value(
        version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("the CRD has a schema"),
    )
    .unwrap()
}

fn default_catalog() -> Vec<String> {
    let text = std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap();
    let values: Value = serde_yaml_ng::from_str(&text).unwrap();
    values["catalog"]["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn examples_pass_the_crd_schema_and_cel_rules() {
    let examples = examples();
    let names: Vec<&str> = examples.iter().map(|(n, _)| n.as_str()).collect();
    for wanted in [
        "one-model-per-gpu.yaml",
        "switch-model.yaml",
        "strict-zombie-policy.yaml",
        "two-gpu-node.yaml",
    ] {
        assert!(
            names.contains(&wanted),
            "examples/{wanted} is missing: {names:?}"
        );
    }
    let schema = schema();
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    let catalog = default_catalog();
    for (file, docs) in &examples {
        assert!(!docs.is_empty(), "{file}: empty");
        for doc in docs {
            assert_eq!(doc["apiVersion"], "vramkeeper.dev/v1alpha1", "{file}");
            assert_eq!(doc["kind"], "GpuModel", "{file}");
            assert!(doc["metadata"]["name"].is_string(), "{file}: a name");
            assert!(doc.get("status").is_none(), "{file}: status is the agent's");
            let errors: Vec<String> = validator
                .iter_errors(doc)
                .map(|e| format!("{}: {e}", e.instance_path().as_str()))
                .collect();
            assert!(errors.is_empty(), "{file}: {errors:?}");
            let object: GpuModel =
                serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
            if let Err(errors) = object.validate_cel() {
                panic!("{file}: CEL rules: {errors:?}");
            }
            if let Some(model) = &object.spec.model {
                assert!(
                    catalog.contains(model),
                    "{file}: {model} is not in the chart's default catalog {catalog:?}"
                );
            }
        }
    }
}

/// `switch-model.yaml` changes the object `one-model-per-gpu.yaml` created: the same name and
/// node (nodeName is immutable), another model.
#[test]
fn the_switch_example_is_a_valid_update() {
    let all = examples();
    let find = |file: &str| -> GpuModel {
        let (_, docs) = all.iter().find(|(n, _)| n == file).unwrap();
        serde_json::from_value(docs[0].clone()).unwrap()
    };
    let old = find("one-model-per-gpu.yaml");
    let new = find("switch-model.yaml");
    assert_eq!(old.metadata.name, new.metadata.name);
    assert_ne!(old.spec.model, new.spec.model);
    if let Err(errors) = new.validate_cel_update(&old) {
        panic!("switch-model.yaml as an update: {errors:?}");
    }
}
