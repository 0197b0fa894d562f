//! The double's state: objects by resource, namespace and name; a resourceVersion counter; and
//! the log of every change, which watches replay and follow.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// A resource the double serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resource {
    /// API group (`""` for core).
    pub group: &'static str,
    /// Version.
    pub version: &'static str,
    /// Plural name.
    pub plural: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Whether `status` is a subresource (writes to the object leave it alone, and the other way
    /// round).
    pub status_subresource: bool,
}

/// Every resource the double knows.
pub const RESOURCES: &[Resource] = &[
    Resource {
        group: "",
        version: "v1",
        plural: "pods",
        kind: "Pod",
        namespaced: true,
        status_subresource: true,
    },
    Resource {
        group: "",
        version: "v1",
        plural: "secrets",
        kind: "Secret",
        namespaced: true,
        status_subresource: false,
    },
    Resource {
        group: "vramkeeper.dev",
        version: "v1alpha1",
        plural: "gpumodels",
        kind: "GpuModel",
        namespaced: false,
        status_subresource: true,
    },
    Resource {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        kind: "Event",
        namespaced: true,
        status_subresource: false,
    },
    Resource {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        kind: "Lease",
        namespaced: true,
        status_subresource: false,
    },
];

impl Resource {
    /// The resource of `group`/`plural`.
    pub fn find(group: &str, plural: &str) -> Option<&'static Resource> {
        RESOURCES
            .iter()
            .find(|r| r.group == group && r.plural == plural)
    }

    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// Where an object lives.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// `group/plural`.
    pub resource: (String, String),
    /// Namespace (none for cluster-scoped objects).
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl Key {
    /// A key.
    pub fn new(r: &Resource, namespace: Option<&str>, name: &str) -> Self {
        Self {
            resource: (r.group.into(), r.plural.into()),
            namespace: if r.namespaced {
                namespace.map(str::to_string)
            } else {
                None
            },
            name: name.into(),
        }
    }
}

/// One change, as a watch sends it.
#[derive(Clone, Debug)]
pub struct Change {
    /// The resourceVersion it made.
    pub rv: u64,
    /// The object's key.
    pub key: Key,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub type_: &'static str,
    /// The object after the change (before it, for `DELETED`).
    pub object: Value,
}

/// A stored object (its `metadata.managedFields` say who owns which fields).
#[derive(Clone, Debug)]
pub struct Stored {
    /// The object.
    pub object: Value,
}

/// The objects and their history.
#[derive(Default)]
pub struct Store {
    /// The last resourceVersion handed out.
    pub rv: u64,
    /// Objects.
    pub objects: BTreeMap<Key, Stored>,
    /// Every change since the last compaction, oldest first.
    pub log: Vec<Change>,
    /// The version of the last compaction: a watch from an older one gets `410 Gone`.
    pub compacted: u64,
    uid: u64,
}

/// Now, as the API writes times (RFC 3339, whole seconds).
pub fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .to_string()
}

impl Store {
    /// Compacts the change log, as etcd does: watches from any version up to now must list
    /// again.
    pub fn compact(&mut self) {
        self.log.clear();
        self.compacted = self.rv;
    }

    fn record(&mut self, key: Key, type_: &'static str, object: Value) -> Change {
        let change = Change {
            rv: self.rv,
            key,
            type_,
            object,
        };
        self.log.push(change.clone());
        change
    }

    /// Creates an object; `Err(409)` when it exists.
    pub fn create(
        &mut self,
        r: &Resource,
        namespace: Option<&str>,
        mut object: Value,
    ) -> Result<Change, (u16, String)> {
        let name = object["metadata"]["name"]
            .as_str()
            .map(str::to_string)
            .or_else(|| {
                object["metadata"]["generateName"]
                    .as_str()
                    .map(|p| format!("{p}{:05}", self.uid + 1))
            })
            .ok_or((422, "metadata.name is required".to_string()))?;
        let key = Key::new(r, namespace, &name);
        if self.objects.contains_key(&key) {
            return Err((409, format!("{} {name:?} already exists", r.plural)));
        }
        self.rv += 1;
        self.uid += 1;
        object["apiVersion"] = json!(r.api_version());
        object["kind"] = json!(r.kind);
        let meta = &mut object["metadata"];
        meta["name"] = json!(name);
        if let Some(ns) = &key.namespace {
            meta["namespace"] = json!(ns);
        }
        meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012}", self.uid));
        meta["resourceVersion"] = json!(self.rv.to_string());
        meta["generation"] = json!(1);
        meta["creationTimestamp"] = json!(now());
        self.objects.insert(
            key.clone(),
            Stored {
                object: object.clone(),
            },
        );
        Ok(self.record(key, "ADDED", object))
    }

    /// Replaces an object with `next` (already patched); keeps what clients cannot set, bumps
    /// the generation when the spec changed, and deletes an object whose deletion waited only
    /// for finalizers now gone. `None` when nothing changed.
    pub fn write(&mut self, key: &Key, mut next: Value) -> Option<Change> {
        let stored = self.objects.get(key)?;
        let old = stored.object.clone();
        for keep in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "name",
            "namespace",
        ] {
            match old["metadata"].get(keep) {
                Some(v) => next["metadata"][keep] = v.clone(),
                None => {
                    if let Some(m) = next["metadata"].as_object_mut() {
                        m.remove(keep);
                    }
                }
            }
        }
        next["apiVersion"] = old["apiVersion"].clone();
        next["kind"] = old["kind"].clone();
        next["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
        next["metadata"]["generation"] = json!(generation);
        if next == old {
            return None;
        }
        if next.get("spec") != old.get("spec") {
            next["metadata"]["generation"] = json!(generation + 1);
        }
        self.rv += 1;
        next["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let deleting = next["metadata"].get("deletionTimestamp").is_some();
        let finalizers = next["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if deleting && !finalizers {
            self.objects.remove(key);
            return Some(self.record(key.clone(), "DELETED", next));
        }
        self.objects.get_mut(key).expect("checked above").object = next.clone();
        Some(self.record(key.clone(), "MODIFIED", next))
    }

    /// Deletes an object: at once without finalizers, else marks it.
    pub fn delete(&mut self, key: &Key) -> Option<(Value, Option<Change>)> {
        let stored = self.objects.get(key)?;
        let mut object = stored.object.clone();
        let finalizers = object["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if !finalizers {
            self.rv += 1;
            self.objects.remove(key);
            let change = self.record(key.clone(), "DELETED", object.clone());
            return Some((object, Some(change)));
        }
        if object["metadata"].get("deletionTimestamp").is_some() {
            return Some((object, None));
        }
        object["metadata"]["deletionTimestamp"] = json!(now());
        let generation = object["metadata"]["generation"].as_i64().unwrap_or(1);
        object["metadata"]["generation"] = json!(generation + 1);
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.objects.get_mut(key).expect("exists").object = object.clone();
        let change = self.record(key.clone(), "MODIFIED", object.clone());
        Some((object, Some(change)))
    }
}

/// Whether `object`'s labels match a label selector (`a=b`, `a!=b`, `a`, `!a`, comma-joined).
pub fn labels_match(object: &Value, selector: Option<&str>) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    let labels = &object["metadata"]["labels"];
    selector.split(',').all(|term| {
        let term = term.trim();
        if let Some((k, v)) = term.split_once("!=") {
            labels[k.trim()].as_str() != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            labels[k.trim()].as_str() == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            labels.get(k).is_none()
        } else {
            labels.get(term).is_some()
        }
    })
}

/// Whether `object` matches a field selector (only `metadata.name` and `metadata.namespace`;
/// others match everything, as this double indexes no other field).
pub fn fields_match(object: &Value, selector: Option<&str>) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    selector.split(',').all(|term| {
        let Some((field, negate, want)) = field_term(term) else {
            return false;
        };
        let got = field
            .split('.')
            .fold(object, |v, k| &v[k])
            .as_str()
            .unwrap_or_default();
        (got == want) != negate
    })
}

/// `field=value`, `field==value` or `field!=value`: the field, whether negated, the value.
fn field_term(term: &str) -> Option<(&str, bool, &str)> {
    if let Some((f, v)) = term.split_once("!=") {
        return Some((f, true, v));
    }
    let (f, v) = term.split_once('=')?;
    Some((f, false, v.strip_prefix('=').unwrap_or(v)))
}

/// The field labels the API server supports in field selectors for `r`: `metadata.name` and
/// `metadata.namespace` everywhere, and a few more for Pods; any other is refused with `400`.
/// <https://kubernetes.io/docs/concepts/overview/working-with-objects/field-selectors/>
pub fn check_field_selector(r: &Resource, selector: Option<&str>) -> Result<(), (u16, String)> {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return Ok(());
    };
    for term in selector.split(',') {
        let (field, _, _) =
            field_term(term).ok_or((400, format!("invalid field selector term {term:?}")))?;
        let supported = matches!(field, "metadata.name" | "metadata.namespace")
            || (r.plural == "pods" && matches!(field, "spec.nodeName" | "status.phase"));
        if !supported {
            return Err((
                400,
                format!("field label not supported: {field} (on {})", r.plural),
            ));
        }
    }
    Ok(())
}
