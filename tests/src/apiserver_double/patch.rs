//! The writes that change an object: JSON patch, merge patch, server-side apply and update,
//! and the ownership (`metadata.managedFields`) each leaves, as [`managed_fields`] says.
//!
//! [`managed_fields`]: super::managed_fields

use serde_json::{Value, json};

use super::{
    managed_fields::{self, Entry, Operation, Writer},
    store::{Resource, now},
    strict,
    topology::Topology,
};

/// A patch request.
#[derive(Clone, Debug)]
pub enum PatchKind {
    /// `application/json-patch+json`.
    Json,
    /// `application/merge-patch+json` (and strategic merge, treated the same).
    Merge,
    /// `application/apply-patch+yaml`: server-side apply.
    Apply {
        /// `force=true`.
        force: bool,
    },
}

/// The longest `fieldManager` the real server accepts.
const MAX_MANAGER: usize = 128;

impl PatchKind {
    /// From the request's content type and query.
    pub fn from_request(content_type: &str, force: bool) -> Result<Self, (u16, String)> {
        match content_type.split(';').next().unwrap_or_default().trim() {
            "application/json-patch+json" => Ok(Self::Json),
            "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                Ok(Self::Merge)
            }
            "application/apply-patch+yaml" => Ok(Self::Apply { force }),
            other => Err((415, format!("unsupported patch type {other:?}"))),
        }
    }
}

/// The field manager of a write: the `fieldManager` parameter (required for an apply), else,
/// as the real server does, the `User-Agent` up to its first `/`; else `unknown` (the real
/// server would leave it empty).
/// <https://kubernetes.io/docs/reference/using-api/server-side-apply/#managers>
pub fn field_manager(
    query: Option<&str>,
    user_agent: Option<&str>,
    apply: bool,
) -> Result<String, (u16, String)> {
    let invalid = |m: &str| {
        (
            422,
            format!("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: {m}"),
        )
    };
    match query {
        Some(m) if m.len() > MAX_MANAGER => Err(invalid(&format!(
            "Too long: may not be more than {MAX_MANAGER} bytes"
        ))),
        Some(m) if !m.is_empty() => Ok(m.to_string()),
        _ if apply => Err(invalid("Required value: is required for apply patch")),
        _ => {
            let prefix: String = user_agent
                .unwrap_or_default()
                .split('/')
                .next()
                .unwrap_or_default()
                .chars()
                .filter(|c| !c.is_control())
                .take(MAX_MANAGER)
                .collect();
            Ok(if prefix.is_empty() {
                "unknown".into()
            } else {
                prefix
            })
        }
    }
}

/// Who writes `r` through which endpoint (`status`: its status subresource).
pub fn writer_of(r: &Resource, manager: &str, operation: Operation, status: bool) -> Writer {
    Writer {
        manager: manager.to_string(),
        operation,
        api_version: r.api_version(),
        subresource: status.then(|| "status".to_string()),
    }
}

/// Applies `body` to `current` (`status`: through the status subresource). Returns the new
/// object and, for an apply, the new ownership; for any other patch, the ownership the write
/// starts from (see [`finish_update`]).
pub fn apply_patch(
    kind: &PatchKind,
    current: &Value,
    body: &Value,
    writer: &Writer,
    r: &Resource,
) -> Result<(Value, Vec<Entry>), (u16, String)> {
    let status = writer.subresource.is_some();
    let (mut next, managed) = match kind {
        PatchKind::Json => {
            // As the apiserver's JSON patch does: testing a missing path for null succeeds.
            let ops: Vec<Value> = body
                .as_array()
                .ok_or((400, "a JSON patch is an array".to_string()))?
                .iter()
                .filter(|op| {
                    let missing_null = op["op"] == "test"
                        && op["value"].is_null()
                        && op["path"]
                            .as_str()
                            .is_some_and(|p| current.pointer(p).is_none());
                    !missing_null
                })
                .cloned()
                .collect();
            let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops))
                .map_err(|e| (400, format!("malformed JSON patch: {e}")))?;
            let mut doc = current.clone();
            json_patch::patch(&mut doc, &patch)
                .map_err(|e| (422, format!("the JSON patch failed: {e}")))?;
            let base = managed_fields::base_for_update(current, &doc, status);
            (doc, base)
        }
        PatchKind::Merge => {
            let mut doc = current.clone();
            json_patch::merge(&mut doc, body);
            let base = managed_fields::base_for_update(current, &doc, status);
            (doc, base)
        }
        PatchKind::Apply { force } => {
            managed_fields::refuse_in_apply(body)?;
            let mut writer = writer.clone();
            if let Some(v) = body["apiVersion"].as_str() {
                writer.api_version = v.to_string();
            }
            managed_fields::apply(
                current,
                &scoped(body, status, r.status_subresource),
                managed_fields::entries(current),
                &writer,
                *force,
                Topology::of(r),
                &now(),
            )?
        }
    };
    next = only_what_the_endpoint_changes(current, next, status, r.status_subresource);
    Ok((next, managed))
}

/// The part of an applied configuration an endpoint takes: `status` only through the status
/// subresource, all but `status` through the object when it has one.
fn scoped(body: &Value, status: bool, status_subresource: bool) -> Value {
    if status {
        return match body.get("status") {
            Some(s) => json!({"status": s}),
            None => json!({}),
        };
    }
    let mut config = body.clone();
    if status_subresource && let Some(m) = config.as_object_mut() {
        m.remove("status");
    }
    config
}

/// `next`, where a status subresource splits the object: writes to it change only the status,
/// writes to the object everything else.
pub fn only_what_the_endpoint_changes(
    current: &Value,
    next: Value,
    status: bool,
    status_subresource: bool,
) -> Value {
    if !status_subresource {
        return next;
    }
    let (mut out, from) = if status {
        (current.clone(), &next)
    } else {
        (next.clone(), current)
    };
    match from.get("status") {
        Some(s) => out["status"] = s.clone(),
        None => {
            if let Some(m) = out.as_object_mut() {
                m.remove("status");
            }
        }
    }
    out
}

/// Admits `next`, a non-apply write of `old` by `writer` starting from ownership `base`, and
/// records what it changed as `writer`'s (`operation: Update`).
pub fn finish_update(
    r: &Resource,
    old: &Value,
    mut next: Value,
    base: Vec<Entry>,
    writer: &Writer,
) -> Result<Value, (u16, String)> {
    strict::admit(r, Some(old), &mut next)?;
    let managed = managed_fields::update(old, &next, base, writer, Topology::of(r), &now());
    managed_fields::finish(old, &mut next, managed);
    Ok(next)
}

/// Admits `next`, an apply to `old` whose ownership is `managed`.
pub fn finish_apply(
    r: &Resource,
    old: &Value,
    mut next: Value,
    managed: Vec<Entry>,
) -> Result<Value, (u16, String)> {
    strict::admit(r, Some(old), &mut next)?;
    managed_fields::finish(old, &mut next, managed);
    Ok(next)
}

/// Admits a new object created by `writer`: it owns every field it set.
pub fn finish_create(
    r: &Resource,
    mut object: Value,
    writer: &Writer,
) -> Result<Value, (u16, String)> {
    strict::admit(r, None, &mut object)?;
    let empty = json!({"metadata": {}});
    let base = managed_fields::base_for_update(&empty, &object, false);
    let managed = managed_fields::update(&empty, &object, base, writer, Topology::of(r), &now());
    managed_fields::set_entries(&mut object, managed);
    Ok(object)
}
