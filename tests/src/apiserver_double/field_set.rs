//! Sets of field paths, as server-side apply tracks ownership: what an object's (or an applied
//! configuration's) fields are, how two objects differ, and the `FieldsV1` encoding of
//! `metadata.managedFields` (`{"f:status":{"f:conditions":{"k:{\"type\":\"Ready\"}":{".":{},
//! "f:status":{}}}}}`).
//! <https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/object-meta/#System>

use std::{collections::BTreeSet, fmt};

use serde_json::{Map, Value};

use super::topology::{ListType, Topology};

/// One step of a path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathElement {
    /// `f:name`: a field of an object.
    Field(String),
    /// `k:{"type":"Ready"}`: the item of a list map with these key values (JSON, keys sorted).
    Key(String),
    /// `v:"x"`: the item of a set with this value (JSON).
    Value(String),
    /// `i:3`: an item by position (never produced here; kept when decoding).
    Index(usize),
}

/// A path from the object's root.
pub type Path = Vec<PathElement>;

/// The fields of `metadata` (and the type's) that no manager ever owns.
const STRIPPED: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "selfLink",
    "managedFields",
];

/// A set of field paths.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSet(pub BTreeSet<Path>);

/// A pretty path, as conflict messages print it: `.status.conditions[type="Ready"].status`.
pub struct Display<'a>(pub &'a [PathElement]);

impl fmt::Display for Display<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for pe in self.0 {
            match pe {
                PathElement::Field(name) => write!(f, ".{name}")?,
                PathElement::Key(json) => {
                    let keys: Map<String, Value> = serde_json::from_str(json).unwrap_or_default();
                    let parts: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    write!(f, "[{}]", parts.join(","))?
                }
                PathElement::Value(json) => write!(f, "[={json}]")?,
                PathElement::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

impl PathElement {
    fn encode(&self) -> String {
        match self {
            PathElement::Field(name) => format!("f:{name}"),
            PathElement::Key(json) => format!("k:{json}"),
            PathElement::Value(json) => format!("v:{json}"),
            PathElement::Index(i) => format!("i:{i}"),
        }
    }

    fn decode(s: &str) -> Option<Self> {
        let (kind, rest) = s.split_once(':')?;
        Some(match kind {
            "f" => PathElement::Field(rest.into()),
            "k" => PathElement::Key(canonical(&serde_json::from_str(rest).ok()?)),
            "v" => PathElement::Value(canonical(&serde_json::from_str(rest).ok()?)),
            "i" => PathElement::Index(rest.parse().ok()?),
            _ => return None,
        })
    }
}

/// JSON text with object keys sorted, so equal values name the same path.
fn canonical(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .iter()
                .map(|k| format!("{}:{}", Value::from(k.as_str()), canonical(&m[*k])))
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        other => other.to_string(),
    }
}

/// The path element of a list item: `None` for an atomic list.
pub fn item_element(list: &ListType, item: &Value) -> Option<PathElement> {
    match list {
        ListType::Atomic => None,
        ListType::Set => Some(PathElement::Value(canonical(item))),
        ListType::Map(keys) => {
            let key: Map<String, Value> = keys
                .iter()
                .map(|k| (k.clone(), item.get(k).cloned().unwrap_or(Value::Null)))
                .collect();
            Some(PathElement::Key(canonical(&Value::Object(key))))
        }
    }
}

/// What each member path of `value` holds: the value of a leaf (a scalar, an atomic list or
/// map), `None` for a list item (its identity is its path). Parents that are objects or
/// mergeable lists are not members themselves, as in structured-merge-diff.
pub fn leaves<'v>(value: &'v Value, topology: Topology<'_>) -> Vec<(Path, Option<&'v Value>)> {
    let mut out = vec![];
    walk(value, topology, &mut vec![], &mut out);
    out
}

fn walk<'v>(
    value: &'v Value,
    t: Topology<'_>,
    path: &mut Path,
    out: &mut Vec<(Path, Option<&'v Value>)>,
) {
    let root = path.is_empty();
    match value {
        Value::Object(m) if !t.atomic_map() || root => {
            for (k, v) in m {
                if root && matches!(k.as_str(), "apiVersion" | "kind") {
                    continue;
                }
                if path.len() == 1
                    && path[0] == PathElement::Field("metadata".into())
                    && STRIPPED.contains(&k.as_str())
                {
                    continue;
                }
                path.push(PathElement::Field(k.clone()));
                walk(v, t.field(k), path, out);
                path.pop();
            }
        }
        Value::Array(items) if t.list_type() != ListType::Atomic => {
            let list = t.list_type();
            for item in items {
                let Some(pe) = item_element(&list, item) else {
                    continue;
                };
                path.push(pe);
                out.push((path.clone(), None));
                if list != ListType::Set {
                    walk(item, t.items(), path, out);
                }
                path.pop();
            }
        }
        _ => out.push((path.clone(), Some(value))),
    }
}

/// How one object differs from another, path by path.
#[derive(Debug, Default)]
pub struct Comparison {
    /// Members only the new object has.
    pub added: FieldSet,
    /// Members only the old object has.
    pub removed: FieldSet,
    /// Leaves both have, with different values.
    pub modified: FieldSet,
}

/// Compares `old` with `new`.
pub fn compare(old: &Value, new: &Value, topology: Topology<'_>) -> Comparison {
    let before: std::collections::BTreeMap<Path, Option<&Value>> =
        leaves(old, topology).into_iter().collect();
    let after: std::collections::BTreeMap<Path, Option<&Value>> =
        leaves(new, topology).into_iter().collect();
    let mut c = Comparison::default();
    for (p, v) in &after {
        match before.get(p) {
            None => {
                c.added.0.insert(p.clone());
            }
            Some(old) if old != v => {
                c.modified.0.insert(p.clone());
            }
            Some(_) => {}
        }
    }
    for p in before.keys().filter(|p| !after.contains_key(*p)) {
        c.removed.0.insert(p.clone());
    }
    c
}

impl FieldSet {
    /// The member paths of `value`.
    pub fn of(value: &Value, topology: Topology<'_>) -> Self {
        FieldSet(
            leaves(value, topology)
                .into_iter()
                .map(|(p, _)| p)
                .collect(),
        )
    }

    /// Whether it has no member.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The members of either.
    pub fn union(&self, other: &FieldSet) -> FieldSet {
        FieldSet(self.0.union(&other.0).cloned().collect())
    }

    /// The members of `self` that `other` lacks.
    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        FieldSet(self.0.difference(&other.0).cloned().collect())
    }

    /// The members of both.
    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        FieldSet(self.0.intersection(&other.0).cloned().collect())
    }

    /// The set with every ancestor that is a named field of a struct added (structured-merge-
    /// diff's `EnsureNamedFieldsAreMembers`): owning `.status.device.name` holds up
    /// `.status.device` and `.status`, not a map's key or a list's item.
    pub fn with_named_parents(&self, root: Topology<'_>) -> FieldSet {
        let mut out = self.0.clone();
        for path in &self.0 {
            let mut t = root;
            for (i, pe) in path.iter().enumerate() {
                let parent_is_struct = t.is_struct();
                t = match pe {
                    PathElement::Field(name) => t.field(name),
                    _ => t.items(),
                };
                if i + 1 < path.len() && parent_is_struct && matches!(pe, PathElement::Field(_)) {
                    out.insert(path[..=i].to_vec());
                }
            }
        }
        FieldSet(out)
    }

    /// The `FieldsV1` encoding.
    pub fn to_fields_v1(&self) -> Value {
        fn node<'m>(
            root: &'m mut Map<String, Value>,
            path: &[PathElement],
        ) -> &'m mut Map<String, Value> {
            path.iter().fold(root, |node, pe| {
                node.entry(pe.encode())
                    .or_insert_with(|| Value::Object(Map::new()))
                    .as_object_mut()
                    .expect("FieldsV1 nodes are objects")
            })
        }
        let mut root = Map::new();
        for path in &self.0 {
            node(&mut root, path);
        }
        // A member with members under it says so with ".".
        for path in &self.0 {
            let n = node(&mut root, path);
            if !n.is_empty() {
                n.insert(".".into(), Value::Object(Map::new()));
            }
        }
        sort(Value::Object(root))
    }

    /// Decodes `FieldsV1`; `None` when it is not.
    pub fn from_fields_v1(v: &Value) -> Option<FieldSet> {
        fn read(
            node: &Map<String, Value>,
            path: &mut Path,
            out: &mut BTreeSet<Path>,
        ) -> Option<()> {
            for (key, child) in node {
                let child = child.as_object()?;
                if key == "." {
                    if !path.is_empty() {
                        out.insert(path.clone());
                    }
                    continue;
                }
                path.push(PathElement::decode(key)?);
                if child.is_empty() {
                    out.insert(path.clone());
                } else {
                    read(child, path, out)?;
                }
                path.pop();
            }
            Some(())
        }
        let mut out = BTreeSet::new();
        read(v.as_object()?, &mut vec![], &mut out)?;
        Some(FieldSet(out))
    }
}

/// Keys in the order the real server writes them ("." first, then by name); matters only
/// where `serde_json` keeps insertion order.
fn sort(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sort(v))).collect())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::apiserver_double::{store::RESOURCES, topology::Topology};

    fn gpumodels() -> Topology<'static> {
        Topology::of(RESOURCES.iter().find(|r| r.plural == "gpumodels").unwrap())
    }

    /// The `FieldsV1` format: `f:` fields, `k:` list-map keys, `.` for an item that has
    /// members under it. <https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/object-meta/#System>
    #[test]
    fn fields_v1_round_trips_in_the_real_format() {
        let status = json!({"status": {
            "phase": "Ready",
            "conditions": [{"type": "Ready", "status": "True"}],
            "ladder": {"resets": ["a", "b"]},
        }, "metadata": {"name": "x", "finalizers": ["f"], "labels": {"a": "b"}}});
        let set = FieldSet::of(&status, gpumodels());
        let v1 = set.to_fields_v1();
        assert_eq!(
            v1,
            json!({
                "f:metadata": {"f:finalizers": {"v:\"f\"": {}}, "f:labels": {"f:a": {}}},
                "f:status": {
                    "f:phase": {},
                    "f:conditions": {"k:{\"type\":\"Ready\"}": {".": {}, "f:type": {}, "f:status": {}}},
                    "f:ladder": {"f:resets": {}},
                },
            })
        );
        assert_eq!(FieldSet::from_fields_v1(&v1), Some(set));
        let path: Path = vec![
            PathElement::Field("status".into()),
            PathElement::Field("conditions".into()),
            PathElement::Key(r#"{"type":"Ready"}"#.into()),
            PathElement::Field("status".into()),
        ];
        assert_eq!(
            Display(&path).to_string(),
            r#".status.conditions[type="Ready"].status"#
        );
        assert!(FieldSet::from_fields_v1(&json!({"x:y": {}})).is_none());
    }
}
