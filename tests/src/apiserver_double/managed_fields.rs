//! `metadata.managedFields`: who owns which fields, and how applies and other writes change
//! that. Each rule cites the section of
//! <https://kubernetes.io/docs/reference/using-api/server-side-apply/> it follows.
//!
//! - An apply (`operation: Apply`) makes its manager own exactly the fields it sent; fields it
//!   owned before and no longer sends are removed unless another manager owns them (or a field
//!   under them). `#field-management`, `#merge-strategy`
//! - Changing a field another manager owns is, for an apply, a `409` conflict naming manager
//!   and path, unless `force=true`, which takes the field from it; the same value makes the
//!   ownership shared. `#conflicts`
//! - Any other write (create, update, merge or JSON patch: `operation: Update`) takes the
//!   fields it changes from whoever owned them, without conflicts. `#apply-and-update`
//! - Managers are keyed by name, operation, subresource and, for updates, `apiVersion`; a
//!   manager left owning nothing disappears. The acting manager's `time` changes when it
//!   changed something; a write that changes nothing else is no write at all.

use serde_json::{Value, json};

use super::{
    field_set::{Comparison, Display, FieldSet, Path, compare},
    merge::{merge, remove},
    topology::Topology,
};

/// `Apply` or `Update`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    /// A server-side apply.
    Apply,
    /// Any other write.
    Update,
}

/// One `managedFields` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// `manager`.
    pub manager: String,
    /// `operation`.
    pub operation: Operation,
    /// `apiVersion`.
    pub api_version: String,
    /// `time` (RFC 3339, seconds).
    pub time: String,
    /// `subresource` (`status`), if the write went through one.
    pub subresource: Option<String>,
    /// `fieldsV1`.
    pub fields: FieldSet,
}

/// Who is writing: the entry a write updates.
#[derive(Clone, Debug)]
pub struct Writer {
    /// The field manager.
    pub manager: String,
    /// How.
    pub operation: Operation,
    /// The `apiVersion` written.
    pub api_version: String,
    /// Through `status`, or the object itself.
    pub subresource: Option<String>,
}

impl Entry {
    fn is(&self, w: &Writer) -> bool {
        self.manager == w.manager
            && self.operation == w.operation
            && self.subresource == w.subresource
            && (w.operation == Operation::Apply || self.api_version == w.api_version)
    }

    /// The entry as the API returns it.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "manager": self.manager,
            "operation": match self.operation {
                Operation::Apply => "Apply",
                Operation::Update => "Update",
            },
            "fieldsType": "FieldsV1",
            "fieldsV1": self.fields.to_fields_v1(),
        });
        for (key, value) in [
            ("apiVersion", Some(&self.api_version)),
            ("time", Some(&self.time)),
            ("subresource", self.subresource.as_ref()),
        ] {
            if let Some(value) = value.filter(|v| !v.is_empty()) {
                v[key] = json!(value);
            }
        }
        v
    }

    /// An entry as a request body may carry it; `None` when it is not a valid one.
    pub fn from_json(v: &Value) -> Option<Entry> {
        if v["fieldsType"] != "FieldsV1" {
            return None;
        }
        Some(Entry {
            manager: v["manager"].as_str()?.to_string(),
            operation: match v["operation"].as_str()? {
                "Apply" => Operation::Apply,
                "Update" => Operation::Update,
                _ => return None,
            },
            api_version: v["apiVersion"].as_str().unwrap_or_default().to_string(),
            time: match v.get("time") {
                None | Some(Value::Null) => String::new(),
                Some(t) => t
                    .as_str()
                    .filter(|t| t.parse::<jiff::Timestamp>().is_ok())?
                    .to_string(),
            },
            subresource: v["subresource"].as_str().map(str::to_string),
            fields: FieldSet::from_fields_v1(&v["fieldsV1"])?,
        })
    }

    /// How conflict messages name it: `"mgr"`, `"mgr" with subresource "status"`, and
    /// ` using v1` after an updater.
    fn describe(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if let Some(sub) = &self.subresource {
            s += &format!(" with subresource {sub:?}");
        }
        if self.operation == Operation::Update {
            s += &format!(" using {}", self.api_version);
        }
        s
    }
}

/// The entries `object` carries (those it stores are always valid).
pub fn entries(object: &Value) -> Vec<Entry> {
    object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Entry::from_json)
        .collect()
}

/// Writes `entries` into `object`, sorted by operation, time and manager (none: no field).
pub fn set_entries(object: &mut Value, mut entries: Vec<Entry>) {
    entries.retain(|e| !e.fields.is_empty());
    entries.sort_by(|a, b| {
        (
            a.operation,
            &a.time,
            &a.manager,
            &a.api_version,
            &a.subresource,
        )
            .cmp(&(
                b.operation,
                &b.time,
                &b.manager,
                &b.api_version,
                &b.subresource,
            ))
    });
    let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    if entries.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert(
            "managedFields".into(),
            entries.iter().map(Entry::to_json).collect(),
        );
    }
}

/// The ownership a non-apply write starts from. A request may replace `managedFields` through
/// the object itself (not a subresource): a list of only empty entries (`[{}]`) resets them;
/// an empty, absent or invalid list keeps the stored ones. An apply may not carry them at all
/// (see [`refuse_in_apply`]). `#clearing-managedfields`, `#apply-and-update`
pub fn base_for_update(live: &Value, requested: &Value, subresource: bool) -> Vec<Entry> {
    let stored = entries(live);
    if subresource {
        return stored;
    }
    let Some(list) = requested["metadata"]["managedFields"]
        .as_array()
        .filter(|l| !l.is_empty())
    else {
        return stored;
    };
    if list
        .iter()
        .all(|e| e.as_object().is_some_and(|m| m.is_empty()))
    {
        return vec![];
    }
    match list
        .iter()
        .map(Entry::from_json)
        .collect::<Option<Vec<_>>>()
    {
        Some(given) if given.iter().any(|e| !e.fields.is_empty()) => given,
        _ => stored,
    }
}

/// An apply's body may not set `metadata.managedFields`: `400`. `#apply-and-update`
pub fn refuse_in_apply(body: &Value) -> Result<(), (u16, String)> {
    match body["metadata"].get("managedFields") {
        None | Some(Value::Null) => Ok(()),
        Some(v) => Err((
            400,
            format!("metadata.managedFields must be nil but was {v}"),
        )),
    }
}

/// Ownership after a non-apply write by `writer` changed `live` into `new`.
pub fn update(
    live: &Value,
    new: &Value,
    mut managed: Vec<Entry>,
    writer: &Writer,
    t: Topology<'_>,
    now: &str,
) -> Vec<Entry> {
    let Comparison {
        added,
        removed,
        modified,
    } = compare(live, new, t);
    let changed = added.union(&modified);
    for e in managed.iter_mut() {
        if !e.is(writer) {
            e.fields = e.fields.difference(&changed);
        }
        e.fields = e.fields.difference(&removed);
    }
    if !changed.is_empty() {
        let e = entry_of(&mut managed, writer);
        e.fields = e.fields.union(&changed);
        e.time = now.to_string();
    }
    managed.retain(|e| !e.fields.is_empty());
    managed
}

fn entry_of<'m>(managed: &'m mut Vec<Entry>, writer: &Writer) -> &'m mut Entry {
    match managed.iter().position(|e| e.is(writer)) {
        Some(i) => &mut managed[i],
        None => {
            managed.push(Entry {
                manager: writer.manager.clone(),
                operation: writer.operation,
                api_version: writer.api_version.clone(),
                time: String::new(),
                subresource: writer.subresource.clone(),
                fields: FieldSet::default(),
            });
            managed.last_mut().expect("pushed")
        }
    }
}

/// An apply of `config` (already limited to what the endpoint may change) by `writer` to
/// `live`: the new object (not yet defaulted) and ownership, or a `409` conflict.
pub fn apply(
    live: &Value,
    config: &Value,
    mut managed: Vec<Entry>,
    writer: &Writer,
    force: bool,
    t: Topology<'_>,
    now: &str,
) -> Result<(Value, Vec<Entry>), (u16, String)> {
    let mut object = merge(Some(live), config, t).map_err(|m| (422, m))?;
    let applied = FieldSet::of(config, t);
    let before = managed
        .iter()
        .find(|e| e.is(writer))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let owned_after = managed
        .iter()
        .filter(|e| !e.is(writer))
        .fold(applied.clone(), |all, e| all.union(&e.fields));
    // What this manager gave up and nobody else holds up goes (with what is under it).
    let dropped = before
        .with_named_parents(t)
        .difference(&owned_after.with_named_parents(t));
    for path in &dropped.0 {
        remove(&mut object, path, t);
    }
    let Comparison {
        added,
        removed,
        modified,
    } = compare(live, &object, t);
    let changed = added.union(&modified);
    let conflicts: Vec<(String, FieldSet)> = managed
        .iter()
        .filter(|e| !e.is(writer))
        .map(|e| (e.describe(), e.fields.intersection(&changed)))
        .filter(|(_, c)| !c.is_empty())
        .collect();
    if !conflicts.is_empty() && !force {
        return Err((409, conflict_message(&conflicts)));
    }
    for e in managed.iter_mut() {
        e.fields = e.fields.difference(&changed).difference(&removed);
    }
    let e = entry_of(&mut managed, writer);
    e.fields = applied.difference(&removed);
    e.api_version = writer.api_version.clone();
    e.time = now.to_string();
    managed.retain(|e| !e.fields.is_empty());
    Ok((object, managed))
}

/// The real server's message: `Apply failed with 1 conflict: conflict with "mgr": .status.phase`,
/// or one line per path, managers sorted, for several.
fn conflict_message(conflicts: &[(String, FieldSet)]) -> String {
    let count: usize = conflicts.iter().map(|(_, c)| c.0.len()).sum();
    if count == 1 {
        let (manager, set) = &conflicts[0];
        let path = set.0.iter().next().expect("one");
        return format!(
            "Apply failed with 1 conflict: conflict with {manager}: {}",
            Display(path)
        );
    }
    let mut sorted: Vec<&(String, FieldSet)> = conflicts.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut lines = vec![];
    for (manager, set) in sorted {
        lines.push(format!("conflicts with {manager}:"));
        let mut paths: Vec<&Path> = set.0.iter().collect();
        paths.sort_by(|a, b| iteration_order(a, b));
        lines.extend(paths.iter().map(|p| format!("- {}", Display(p))));
    }
    format!("Apply failed with {count} conflicts: {}", lines.join("\n"))
}

/// The order structured-merge-diff lists a set in: at each level the paths that end there
/// first, then the deeper ones.
fn iteration_order(a: &Path, b: &Path) -> std::cmp::Ordering {
    let common = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let ends = |p: &Path| p.len() <= common + 1;
    match (ends(a), ends(b)) {
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.get(common).cmp(&b.get(common)),
    }
}

/// Whether `new` (with `entries`) differs from `old` in more than the entries' times: if not,
/// the write is a no-op and keeps the stored times. Else writes the entries into `new`.
pub fn finish(old: &Value, new: &mut Value, entries_after: Vec<Entry>) {
    let before = entries(old);
    let same_fields = |a: &[Entry], b: &[Entry]| {
        a.len() == b.len()
            && a.iter().all(|x| {
                b.iter().any(|y| {
                    x.manager == y.manager
                        && x.operation == y.operation
                        && x.api_version == y.api_version
                        && x.subresource == y.subresource
                        && x.fields == y.fields
                })
            })
    };
    let mut without = new.clone();
    without["metadata"]["managedFields"] = old["metadata"]["managedFields"].clone();
    if let Some(m) = without["metadata"].as_object_mut()
        && old["metadata"].get("managedFields").is_none()
    {
        m.remove("managedFields");
    }
    if without == *old && same_fields(&before, &entries_after) {
        *new = without;
        return;
    }
    set_entries(new, entries_after);
}
