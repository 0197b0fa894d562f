//! Where the double is as strict as a real API server, because the operator's correctness
//! depends on it. Each rule names the Kubernetes documentation it follows.
//!
//! - GpuModel writes are defaulted, then validated against the CRD's `openAPIV3Schema` (the
//!   `jsonschema` crate) and its CEL rules, transition rules included (kube's client-side CEL
//!   evaluation of the same rules): a rejected write is `422 Invalid`, and nothing is stored.
//!   <https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#validation>
//!   <https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#defaulting>
//!   <https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#validation-rules>
//! - A write that carries `metadata.resourceVersion` (update, merge patch, apply) or a delete
//!   with `preconditions` succeeds only against that version: else `409 Conflict`.
//!   <https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-versions>
//!   <https://kubernetes.io/docs/reference/using-api/api-concepts/#conflicts>
//! - Watches from a version older than the last compaction get one `ERROR` event with a
//!   `410 Gone` Status (the client lists again); watches that ask for bookmarks get `BOOKMARK`
//!   events carrying the version they are up to.
//!   <https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes>
//!   <https://kubernetes.io/docs/reference/using-api/api-concepts/#watch-bookmarks>

use std::sync::OnceLock;

use kube::CustomResourceExt;
use serde_json::{Value, json};
use vramkeeper_crds::GpuModel;

use super::store::Resource;

/// The GpuModel schema as JSON Schema: OpenAPI's `nullable: true` becomes a `null` type.
pub fn gpumodel_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let crd = GpuModel::crd();
        let schema = crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("the CRD has a schema");
        let mut v = serde_json::to_value(schema).expect("the schema serializes");
        nullable_to_null_type(&mut v);
        v
    })
}

fn validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| jsonschema::validator_for(gpumodel_schema()).expect("a valid schema"))
}

fn nullable_to_null_type(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if m.remove("nullable") == Some(Value::Bool(true))
                && let Some(Value::String(t)) = m.get("type").cloned()
            {
                m.insert("type".into(), json!([t, "null"]));
            }
            m.values_mut().for_each(nullable_to_null_type);
        }
        Value::Array(a) => a.iter_mut().for_each(nullable_to_null_type),
        _ => {}
    }
}

/// Fills in the schema's defaults where `object` lacks the field (as the API server does on
/// every write and read of a custom resource).
pub fn apply_defaults(schema: &Value, object: &mut Value) {
    let Some(obj) = object.as_object_mut() else {
        if let (Some(items), Some(a)) = (schema.get("items"), object.as_array_mut()) {
            a.iter_mut().for_each(|i| apply_defaults(items, i));
        }
        return;
    };
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (name, prop) in props {
        match obj.get_mut(name) {
            Some(child) if !child.is_null() => apply_defaults(prop, child),
            Some(_) => {}
            None => {
                if let Some(d) = prop.get("default") {
                    let mut d = d.clone();
                    apply_defaults(prop, &mut d);
                    obj.insert(name.clone(), d);
                }
            }
        }
    }
}

/// Defaults and validates a write of `resource`: `new` is what would be stored, `old` what is
/// stored now (absent on create). `Err((422, message))` when the API server would refuse it.
pub fn admit(
    resource: &Resource,
    old: Option<&Value>,
    new: &mut Value,
) -> Result<(), (u16, String)> {
    if resource.plural != "gpumodels" {
        return Ok(());
    }
    apply_defaults(gpumodel_schema(), new);
    let name = new["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let invalid = |problems: Vec<String>| {
        (
            422,
            format!(
                "GpuModel.vramkeeper.dev {name:?} is invalid: {}",
                problems.join(", ")
            ),
        )
    };
    let problems: Vec<String> = validator()
        .iter_errors(new)
        .map(|e| {
            format!(
                "{}: {e}",
                e.instance_path()
                    .as_str()
                    .trim_start_matches('/')
                    .replace('/', ".")
            )
        })
        .collect();
    if !problems.is_empty() {
        return Err(invalid(problems));
    }
    let typed: GpuModel =
        serde_json::from_value(new.clone()).map_err(|e| invalid(vec![e.to_string()]))?;
    let cel = match old {
        Some(old) => match serde_json::from_value::<GpuModel>(old.clone()) {
            Ok(old) => typed.validate_cel_update(&old),
            Err(_) => typed.validate_cel(),
        },
        None => typed.validate_cel(),
    };
    cel.map_err(|errors| {
        invalid(
            errors
                .as_slice()
                .iter()
                .map(|e| format!("{}: {}", e.field_path, e.message))
                .collect(),
        )
    })
}

/// The `resourceVersion` precondition of a write: `Err(409)` when `body` names a version and
/// it is not the stored one.
pub fn precondition(stored: &Value, body: &Value, what: &str) -> Result<(), (u16, String)> {
    let wanted = body["metadata"]["resourceVersion"]
        .as_str()
        .or_else(|| body["preconditions"]["resourceVersion"].as_str());
    let current = stored["metadata"]["resourceVersion"].as_str();
    match wanted {
        Some(w) if Some(w) != current => Err((
            409,
            format!(
                "Operation cannot be fulfilled on {what}: the object has been modified; please apply your changes to the latest version and try again"
            ),
        )),
        _ => Ok(()),
    }
}

/// The `ERROR` event a watch from a compacted version gets.
pub fn gone(since: u64, compacted: u64) -> Value {
    json!({
        "type": "ERROR",
        "object": {
            "apiVersion": "v1",
            "kind": "Status",
            "status": "Failure",
            "message": format!("too old resource version: {since} ({compacted})"),
            "reason": "Expired",
            "code": 410,
        },
    })
}

/// A `BOOKMARK` event: the watch is up to `rv`.
pub fn bookmark(resource: &Resource, rv: u64) -> Value {
    json!({
        "type": "BOOKMARK",
        "object": {
            "apiVersion": resource.api_version(),
            "kind": resource.kind,
            "metadata": {"resourceVersion": rv.to_string()},
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver_double::store::RESOURCES;

    fn gpumodels() -> &'static Resource {
        RESOURCES.iter().find(|r| r.plural == "gpumodels").unwrap()
    }

    fn object(spec: Value) -> Value {
        json!({
            "apiVersion": "vramkeeper.dev/v1alpha1",
            "kind": "GpuModel",
            "metadata": {"name": "a", "resourceVersion": "7"},
            "spec": spec,
        })
    }

    /// Defaulting and schema validation, as for every CRD write:
    /// <https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#defaulting>
    #[test]
    fn writes_are_defaulted_and_checked_against_the_schema() {
        let mut ok = object(json!({"nodeName": "n", "model": null}));
        admit(gpumodels(), None, &mut ok).unwrap();
        assert_eq!(ok["spec"]["gpu"], 0);
        assert_eq!(ok["spec"]["zombie"]["thresholdMiB"], 1536);
        let mut bad = object(json!({"nodeName": "n", "gpu": "zero"}));
        let (code, message) = admit(gpumodels(), None, &mut bad).unwrap_err();
        assert_eq!(code, 422);
        assert!(message.contains("spec.gpu"), "{message}");
        let mut no_node = object(json!({"model": "m"}));
        assert_eq!(admit(gpumodels(), None, &mut no_node).unwrap_err().0, 422);
    }

    /// CEL rules, transition rules included:
    /// <https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#transition-rules>
    #[test]
    fn cel_rules_are_enforced_on_updates() {
        let old = object(json!({"nodeName": "n", "gpu": 0}));
        let mut moved = object(json!({"nodeName": "n", "gpu": 1}));
        let (code, message) = admit(gpumodels(), Some(&old), &mut moved).unwrap_err();
        assert_eq!(code, 422);
        assert!(message.contains("gpu is immutable"), "{message}");
        let mut renamed = object(json!({"nodeName": "m", "gpu": 0}));
        assert!(admit(gpumodels(), Some(&old), &mut renamed).is_err());
        let mut same = object(json!({"nodeName": "n", "gpu": 0, "model": "x"}));
        admit(gpumodels(), Some(&old), &mut same).unwrap();
        let mut zero = object(json!({"nodeName": "n", "zombie": {"persistSeconds": 0}}));
        assert!(admit(gpumodels(), None, &mut zero).is_err());
    }

    /// Optimistic concurrency:
    /// <https://kubernetes.io/docs/reference/using-api/api-concepts/#conflicts>
    #[test]
    fn a_stale_resource_version_is_a_conflict() {
        let stored = object(json!({"nodeName": "n"}));
        assert!(precondition(&stored, &json!({"spec": {}}), "x").is_ok());
        assert!(precondition(&stored, &json!({"metadata": {"resourceVersion": "7"}}), "x").is_ok());
        let e = precondition(&stored, &json!({"metadata": {"resourceVersion": "6"}}), "x");
        assert_eq!(e.unwrap_err().0, 409);
        let e = precondition(
            &stored,
            &json!({"preconditions": {"resourceVersion": "6"}}),
            "x",
        );
        assert_eq!(e.unwrap_err().0, 409);
    }
}
