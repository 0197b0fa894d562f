//! How server-side apply sees an object's shape: which lists merge by key (`map`), by value
//! (`set`) or whole (`atomic`), which objects are structs (named fields) and which are maps.
//! It comes from the CRD schema's `x-kubernetes-list-type`, `x-kubernetes-list-map-keys` and
//! `x-kubernetes-map-type`; objects the double has no schema for are unstructured: every key is
//! a struct field and every list is atomic, as for a custom resource without those markers.
//! `metadata` is `ObjectMeta` everywhere: `finalizers` a set, `ownerReferences` a map keyed by
//! `uid`, `labels` and `annotations` maps.
//! <https://kubernetes.io/docs/reference/using-api/server-side-apply/#merge-strategy>
//! <https://kubernetes.io/docs/reference/using-api/server-side-apply/#custom-resources-and-server-side-apply>

use std::sync::OnceLock;

use serde_json::{Value, json};

use super::{store::Resource, strict};

/// How a list merges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListType {
    /// Replaced whole; one manager owns it (the default).
    Atomic,
    /// Scalars merged by value.
    Set,
    /// Objects merged by the values of these key fields.
    Map(Vec<String>),
}

/// A place in an object's schema (`None`: no schema there, unstructured).
#[derive(Clone, Copy, Debug)]
pub struct Topology<'a> {
    schema: Option<&'a Value>,
    /// Whether this is the object's root, where `metadata` is `ObjectMeta`.
    root: bool,
}

fn object_meta() -> &'static Value {
    static META: OnceLock<Value> = OnceLock::new();
    META.get_or_init(|| {
        let string_map = json!({"type": "object", "additionalProperties": {"type": "string"}});
        json!({
            "type": "object",
            "properties": {
                "labels": string_map,
                "annotations": string_map,
                "finalizers": {
                    "type": "array",
                    "items": {"type": "string"},
                    "x-kubernetes-list-type": "set",
                },
                "ownerReferences": {
                    "type": "array",
                    "items": {"type": "object", "x-kubernetes-map-type": "atomic"},
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["uid"],
                },
            },
        })
    })
}

impl<'a> Topology<'a> {
    /// The root of `resource`'s objects.
    pub fn of(resource: &Resource) -> Topology<'static> {
        let schema = (resource.plural == "gpumodels").then(strict::gpumodel_schema);
        Topology { schema, root: true }
    }

    /// The root of an object with this schema (`None`: unstructured).
    pub fn with_schema(schema: Option<&'a Value>) -> Self {
        Topology { schema, root: true }
    }

    /// The field `name` of this object.
    pub fn field(&self, name: &str) -> Topology<'a> {
        if self.root && name == "metadata" {
            return Topology {
                schema: Some(object_meta()),
                root: false,
            };
        }
        let schema = self.schema.and_then(|s| {
            s.get("properties")
                .and_then(|p| p.get(name))
                .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()))
        });
        Topology {
            schema,
            root: false,
        }
    }

    /// The items of this list.
    pub fn items(&self) -> Topology<'a> {
        Topology {
            schema: self.schema.and_then(|s| s.get("items")),
            root: false,
        }
    }

    /// How this list merges.
    pub fn list_type(&self) -> ListType {
        let Some(s) = self.schema else {
            return ListType::Atomic;
        };
        match s.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("set") => ListType::Set,
            Some("map") => ListType::Map(
                s["x-kubernetes-list-map-keys"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|k| k.as_str().map(str::to_string))
                    .collect(),
            ),
            _ => ListType::Atomic,
        }
    }

    /// Whether this object is replaced whole (`x-kubernetes-map-type: atomic`).
    pub fn atomic_map(&self) -> bool {
        self.schema
            .and_then(|s| s.get("x-kubernetes-map-type"))
            .and_then(Value::as_str)
            == Some("atomic")
    }

    /// Whether this object's keys are named fields of a struct (not keys of a map):
    /// unstructured objects count as structs.
    pub fn is_struct(&self) -> bool {
        match self.schema {
            None => true,
            Some(s) => s.get("properties").is_some() || s.get("additionalProperties").is_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver_double::store::RESOURCES;

    /// The markers come from the CRD schema the double validates with.
    /// <https://kubernetes.io/docs/reference/using-api/server-side-apply/#merge-strategy>
    #[test]
    fn the_gpumodel_schema_says_which_lists_merge_by_key() {
        let gm = RESOURCES.iter().find(|r| r.plural == "gpumodels").unwrap();
        let status = Topology::of(gm).field("status");
        assert_eq!(
            status.field("conditions").list_type(),
            ListType::Map(vec!["type".into()])
        );
        assert_eq!(
            status.field("models").list_type(),
            ListType::Map(vec!["name".into()])
        );
        assert_eq!(status.field("ghostSources").list_type(), ListType::Atomic);
        assert_eq!(
            status.field("ladder").field("resets").list_type(),
            ListType::Atomic
        );
        let meta = Topology::of(gm).field("metadata");
        assert_eq!(meta.field("finalizers").list_type(), ListType::Set);
        assert!(!meta.field("labels").is_struct());
        assert!(status.field("device").is_struct());
        let secret = RESOURCES.iter().find(|r| r.plural == "secrets").unwrap();
        assert_eq!(
            Topology::of(secret).field("data").field("x").list_type(),
            ListType::Atomic
        );
    }
}
