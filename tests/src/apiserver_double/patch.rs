//! The three patch types the double accepts: JSON patch, merge patch, and server-side apply.
//!
//! Server-side apply is simplified, and says so: field ownership is tracked per field manager
//! at the granularity of the top-level fields of `status` (status subresource) or `spec`; a
//! manager's apply sets the fields it sends and removes the ones it sent before but no longer
//! does (unless another manager owns them too). A field another manager owns with a different
//! value is a conflict unless the apply forces. That is exactly what the operator (phase,
//! observedGeneration, conditions) and the agent (everything else in status) rely on.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::store::Stored;

/// A patch request.
#[derive(Clone, Debug)]
pub enum PatchKind {
    /// `application/json-patch+json`.
    Json,
    /// `application/merge-patch+json` (and strategic merge, treated the same).
    Merge,
    /// `application/apply-patch+yaml`: server-side apply.
    Apply {
        /// `fieldManager`.
        manager: String,
        /// `force=true`.
        force: bool,
    },
}

impl PatchKind {
    /// From the request's content type and query.
    pub fn from_request(
        content_type: &str,
        manager: Option<&str>,
        force: bool,
    ) -> Result<Self, (u16, String)> {
        match content_type.split(';').next().unwrap_or_default().trim() {
            "application/json-patch+json" => Ok(Self::Json),
            "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                Ok(Self::Merge)
            }
            "application/apply-patch+yaml" => Ok(Self::Apply {
                manager: manager
                    .ok_or((422, "server-side apply needs a fieldManager".to_string()))?
                    .to_string(),
                force,
            }),
            other => Err((415, format!("unsupported patch type {other:?}"))),
        }
    }
}

type Owners = BTreeMap<String, BTreeSet<String>>;

/// Applies `body` to `stored`; `status` selects the status subresource. Returns the new object
/// and, for an apply, the new ownership.
pub fn apply_patch(
    kind: &PatchKind,
    stored: &Stored,
    body: &Value,
    status: bool,
    status_subresource: bool,
) -> Result<(Value, Option<Owners>), (u16, String)> {
    let current = &stored.object;
    let (mut next, owners) = match kind {
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
            (doc, None)
        }
        PatchKind::Merge => {
            let mut doc = current.clone();
            json_patch::merge(&mut doc, body);
            (doc, None)
        }
        PatchKind::Apply { manager, force } => {
            let root = if status { "status" } else { "spec" };
            let (doc, owners) =
                server_side_apply(current, &stored.owners, body, root, manager, *force)?;
            (doc, Some(owners))
        }
    };
    if status_subresource {
        if status {
            // Only status changes through the subresource.
            let mut only_status = current.clone();
            match next.get("status") {
                Some(s) => only_status["status"] = s.clone(),
                None => {
                    if let Some(m) = only_status.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            next = only_status;
        } else {
            match current.get("status") {
                Some(s) => next["status"] = s.clone(),
                None => {
                    if let Some(m) = next.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
    }
    Ok((next, owners))
}

fn server_side_apply(
    current: &Value,
    owners: &Owners,
    body: &Value,
    root: &str,
    manager: &str,
    force: bool,
) -> Result<(Value, Owners), (u16, String)> {
    let applied = body
        .get(root)
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut doc = current.clone();
    let mut fields: Map<String, Value> = doc
        .get(root)
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut owners = owners.clone();
    for (field, value) in &applied {
        for (other, keys) in &owners {
            if other != manager
                && keys.contains(field)
                && fields.get(field) != Some(value)
                && !force
            {
                return Err((
                    409,
                    format!(
                        "Apply failed with 1 conflict: conflict with {other:?}: .{root}.{field}"
                    ),
                ));
            }
        }
    }
    let before = owners.get(manager).cloned().unwrap_or_default();
    for field in before.iter().filter(|f| !applied.contains_key(*f)) {
        let shared = owners
            .iter()
            .any(|(other, keys)| other != manager && keys.contains(field));
        if !shared {
            fields.remove(field);
        }
    }
    for (field, value) in &applied {
        let changes = fields.get(field) != Some(value);
        fields.insert(field.clone(), value.clone());
        if changes {
            // The value is this manager's now; others lose the field.
            for (other, keys) in owners.iter_mut() {
                if other != manager {
                    keys.remove(field);
                }
            }
        }
    }
    owners.insert(manager.to_string(), applied.keys().cloned().collect());
    owners.retain(|_, keys| !keys.is_empty());
    doc[root] = Value::Object(fields);
    if let Some(labels) = body["metadata"].get("labels").and_then(Value::as_object) {
        for (k, v) in labels {
            doc["metadata"]["labels"][k] = v.clone();
        }
    }
    Ok((doc, owners))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn stored(object: Value) -> Stored {
        Stored {
            object,
            owners: BTreeMap::new(),
        }
    }

    #[test]
    fn two_managers_share_the_status_without_erasing_each_other() {
        let agent = PatchKind::Apply {
            manager: "vramkeeper-agent".into(),
            force: true,
        };
        let operator = PatchKind::Apply {
            manager: "vramkeeper-operator".into(),
            force: true,
        };
        let mut s = stored(json!({"metadata": {"name": "a"}, "spec": {"gpu": 0}}));
        let (o, w) = apply_patch(
            &agent,
            &s,
            &json!({"status": {"activeModel": "x", "switching": false}}),
            true,
            true,
        )
        .unwrap();
        s = Stored {
            object: o,
            owners: w.unwrap(),
        };
        let (o, w) = apply_patch(
            &operator,
            &s,
            &json!({"status": {"phase": "Ready"}}),
            true,
            true,
        )
        .unwrap();
        s = Stored {
            object: o,
            owners: w.unwrap(),
        };
        assert_eq!(
            s.object["status"],
            json!({"activeModel": "x", "switching": false, "phase": "Ready"})
        );
        // The agent no longer sends activeModel: it goes; phase stays.
        let (o, _) = apply_patch(
            &agent,
            &s,
            &json!({"status": {"switching": true}}),
            true,
            true,
        )
        .unwrap();
        assert_eq!(o["status"], json!({"switching": true, "phase": "Ready"}));
        // Without force, changing another manager's field conflicts.
        let shy = PatchKind::Apply {
            manager: "vramkeeper-agent".into(),
            force: false,
        };
        let err = apply_patch(
            &shy,
            &s,
            &json!({"status": {"phase": "Failed"}}),
            true,
            true,
        )
        .unwrap_err();
        assert_eq!(err.0, 409);
        // A write to the object leaves the status alone.
        let (o, _) = apply_patch(
            &PatchKind::Merge,
            &s,
            &json!({"spec": {"gpu": 1}, "status": {"phase": "x"}}),
            false,
            true,
        )
        .unwrap();
        assert_eq!(
            (o["spec"]["gpu"].clone(), o["status"]["phase"].clone()),
            (json!(1), json!("Ready"))
        );
    }
}
