//! Server-side apply and field ownership, as the operator (`vramkeeper-operator`: phase,
//! observedGeneration, conditions, ladder) and the agent (`vramkeeper-agent`: the rest of
//! status) use them; each test cites the section of
//! <https://kubernetes.io/docs/reference/using-api/server-side-apply/> it checks.

use serde_json::{Value, json};

use super::{
    managed_fields::Operation,
    patch::{self, PatchKind},
    store::{RESOURCES, Resource},
};

const OPERATOR: &str = "vramkeeper-operator";
const AGENT: &str = "vramkeeper-agent";

fn resource(plural: &str) -> &'static Resource {
    RESOURCES.iter().find(|r| r.plural == plural).unwrap()
}

/// One object, written as the HTTP handlers write it (without the store).
struct Object {
    r: &'static Resource,
    v: Value,
}

impl Object {
    fn gpumodel() -> Self {
        let r = resource("gpumodels");
        let writer = patch::writer_of(r, "kubectl-create", Operation::Update, false);
        let v = patch::finish_create(
            r,
            json!({
                "apiVersion": "vramkeeper.dev/v1alpha1",
                "kind": "GpuModel",
                "metadata": {"name": "g", "resourceVersion": "1"},
                "spec": {"nodeName": "n"},
            }),
            &writer,
        )
        .unwrap();
        Object { r, v }
    }

    fn write(
        &mut self,
        kind: PatchKind,
        manager: &str,
        status: bool,
        body: Value,
    ) -> Result<(), (u16, String)> {
        let operation = match kind {
            PatchKind::Apply { .. } => Operation::Apply,
            _ => Operation::Update,
        };
        let writer = patch::writer_of(self.r, manager, operation, status);
        let (next, managed) = patch::apply_patch(&kind, &self.v, &body, &writer, self.r)?;
        self.v = match kind {
            PatchKind::Apply { .. } => patch::finish_apply(self.r, &self.v, next, managed)?,
            _ => patch::finish_update(self.r, &self.v, next, managed, &writer)?,
        };
        Ok(())
    }

    /// A status apply, without `force` unless asked.
    fn apply(&mut self, manager: &str, force: bool, status: Value) -> Result<(), (u16, String)> {
        let body =
            json!({"apiVersion": "vramkeeper.dev/v1alpha1", "kind": "GpuModel", "status": status});
        self.write(PatchKind::Apply { force }, manager, true, body)
    }

    /// The `managedFields` entry of `manager` (`operation`).
    fn entry(&self, manager: &str, operation: &str) -> Option<&Value> {
        self.v["metadata"]["managedFields"]
            .as_array()?
            .iter()
            .find(|e| e["manager"] == manager && e["operation"] == operation)
    }

    fn fields(&self, manager: &str, operation: &str) -> Value {
        self.entry(manager, operation)
            .map_or(Value::Null, |e| e["fieldsV1"].clone())
    }
}

fn condition(type_: &str, status: &str) -> Value {
    json!({"type": type_, "status": status, "reason": "R", "message": "",
           "lastTransitionTime": "2026-01-01T00:00:00Z"})
}

fn condition_fields() -> Value {
    json!({".": {}, "f:type": {}, "f:status": {}, "f:reason": {}, "f:message": {},
           "f:lastTransitionTime": {}})
}

fn types(o: &Object) -> Vec<String> {
    o.v["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["type"].as_str().unwrap().to_string())
        .collect()
}

/// Two managers own different fields; each one's re-apply keeps the other's, and
/// `managedFields` lists both. `#field-management`, `#merge-strategy`
#[test]
fn each_managers_reapply_keeps_the_others_fields_and_both_are_listed() {
    let mut o = Object::gpumodel();
    let agent = |active: &str, used: u64| {
        json!({"activeModel": active, "switching": false,
               "device": {"name": "cpu", "totalMiB": 100, "usedMiB": used, "baselineMiB": 1, "ghostMiB": 0},
               "models": [{"name": active, "state": "Loaded"}]})
    };
    let operator = |phase: &str, generation: i64| {
        json!({"phase": phase, "observedGeneration": generation,
               "conditions": [condition("Ready", "True")], "ladder": {"attempts": 1}})
    };
    o.apply(AGENT, true, agent("a", 10)).unwrap();
    o.apply(OPERATOR, true, operator("Ready", 1)).unwrap();
    o.apply(AGENT, true, agent("b", 20)).unwrap();
    o.apply(OPERATOR, true, operator("Switching", 2)).unwrap();
    let s = &o.v["status"];
    assert_eq!(
        (
            &s["activeModel"],
            &s["device"]["usedMiB"],
            &s["models"][0]["name"]
        ),
        (&json!("b"), &json!(20), &json!("b"))
    );
    assert_eq!(
        (
            &s["phase"],
            &s["observedGeneration"],
            &s["ladder"]["attempts"]
        ),
        (&json!("Switching"), &json!(2), &json!(1))
    );
    assert_eq!(types(&o), ["Ready"]);
    let op = o.entry(OPERATOR, "Apply").unwrap();
    assert_eq!(
        (&op["apiVersion"], &op["subresource"], &op["fieldsType"]),
        (
            &json!("vramkeeper.dev/v1alpha1"),
            &json!("status"),
            &json!("FieldsV1")
        )
    );
    assert!(op["time"].as_str().unwrap().ends_with('Z'), "{op}");
    assert_eq!(
        op["fieldsV1"],
        json!({"f:status": {
            "f:phase": {}, "f:observedGeneration": {}, "f:ladder": {"f:attempts": {}},
            "f:conditions": {"k:{\"type\":\"Ready\"}": condition_fields()},
        }})
    );
    assert_eq!(
        o.fields(AGENT, "Apply"),
        json!({"f:status": {
            "f:activeModel": {}, "f:switching": {},
            "f:device": {"f:name": {}, "f:totalMiB": {}, "f:usedMiB": {}, "f:baselineMiB": {}, "f:ghostMiB": {}},
            "f:models": {"k:{\"name\":\"b\"}": {".": {}, "f:name": {}, "f:state": {}}},
        }})
    );
    // The creator owns the spec it set (and its defaults, as on a real server), through the
    // object, as an Update.
    let created = o.fields("kubectl-create", "Update");
    assert_eq!(created["f:spec"]["f:nodeName"], json!({}));
    assert_eq!(created["f:spec"]["f:gpu"], json!({}));
    assert!(created.get("f:status").is_none());
    // The agent stops sending `device`: it goes (nobody else owns it); the operator's stay.
    o.apply(AGENT, true, json!({"activeModel": "b", "switching": true}))
        .unwrap();
    assert!(o.v["status"].get("device").is_none(), "{}", o.v["status"]);
    assert!(o.v["status"].get("models").is_none(), "{}", o.v["status"]);
    assert_eq!(o.v["status"]["phase"], "Switching");
    assert_eq!(types(&o), ["Ready"]);
}

/// Lists marked `x-kubernetes-list-type: map` merge by key: each manager owns its entries and
/// removes only those it stops applying. `#merge-strategy`
#[test]
fn list_map_entries_merge_by_key_and_belong_to_their_manager() {
    let mut o = Object::gpumodel();
    o.apply(
        OPERATOR,
        true,
        json!({"conditions": [condition("Ready", "True")]}),
    )
    .unwrap();
    o.apply(
        "other",
        false,
        json!({"conditions": [condition("Degraded", "False")]}),
    )
    .unwrap();
    assert_eq!(types(&o), ["Ready", "Degraded"]);
    assert_eq!(
        o.fields(OPERATOR, "Apply"),
        json!({"f:status": {"f:conditions": {"k:{\"type\":\"Ready\"}": condition_fields()}}})
    );
    assert_eq!(
        o.fields("other", "Apply"),
        json!({"f:status": {"f:conditions": {"k:{\"type\":\"Degraded\"}": condition_fields()}}})
    );
    // The operator's re-apply changes its entry and keeps the other's.
    o.apply(
        OPERATOR,
        false,
        json!({"conditions": [condition("Ready", "False")]}),
    )
    .unwrap();
    assert_eq!(o.v["status"]["conditions"][0]["status"], "False");
    assert_eq!(types(&o), ["Ready", "Degraded"]);
    // The other manager stops applying its entry: it goes, the operator's stays.
    o.apply("other", false, json!({"conditions": []})).unwrap();
    assert_eq!(types(&o), ["Ready"]);
    assert!(
        o.entry("other", "Apply").is_none(),
        "owns nothing: no entry"
    );
    // An agent apply (no conditions) leaves the operator's entry alone.
    o.apply(AGENT, true, json!({"switching": false})).unwrap();
    assert_eq!(types(&o), ["Ready"]);
}

/// A different value on a field another manager owns is a conflict naming manager and path;
/// `force` takes it over; the same value makes the ownership shared. `#conflicts`
#[test]
fn a_different_value_on_anothers_field_conflicts_unless_forced() {
    let mut o = Object::gpumodel();
    o.apply(
        OPERATOR,
        true,
        json!({"phase": "Ready", "conditions": [condition("Ready", "True")]}),
    )
    .unwrap();
    let (code, message) = o
        .apply(AGENT, false, json!({"phase": "Failed"}))
        .unwrap_err();
    assert_eq!(code, 409);
    assert_eq!(
        message,
        r#"Apply failed with 1 conflict: conflict with "vramkeeper-operator" with subresource "status": .status.phase"#
    );
    let (_, message) = o
        .apply(
            AGENT,
            false,
            json!({"phase": "Failed", "conditions": [condition("Ready", "False")]}),
        )
        .unwrap_err();
    assert_eq!(
        message,
        "Apply failed with 2 conflicts: conflicts with \"vramkeeper-operator\" with subresource \"status\":\n\
         - .status.phase\n- .status.conditions[type=\"Ready\"].status"
    );
    assert_eq!(o.v["status"]["phase"], "Ready", "nothing changed");
    // The same value: no conflict, both own it.
    o.apply(AGENT, false, json!({"phase": "Ready"})).unwrap();
    assert_eq!(
        o.fields(AGENT, "Apply"),
        json!({"f:status": {"f:phase": {}}})
    );
    assert!(
        o.fields(OPERATOR, "Apply")["f:status"]
            .get("f:phase")
            .is_some()
    );
    // Shared: now a change by either one conflicts with the other.
    let (code, _) = o
        .apply(
            OPERATOR,
            false,
            json!({"phase": "Failed", "conditions": [condition("Ready", "True")]}),
        )
        .unwrap_err();
    assert_eq!(code, 409);
    // Forced: the value changes and the field is the forcing manager's alone.
    o.apply(AGENT, true, json!({"phase": "Failed"})).unwrap();
    assert_eq!(o.v["status"]["phase"], "Failed");
    assert!(
        o.fields(OPERATOR, "Apply")["f:status"]
            .get("f:phase")
            .is_none()
    );
    // A field given up while another manager owns it too stays (and is that one's).
    o.apply(
        OPERATOR,
        false,
        json!({"phase": "Failed", "conditions": [condition("Ready", "True")]}),
    )
    .unwrap();
    o.apply(AGENT, false, json!({})).unwrap();
    assert_eq!(o.v["status"]["phase"], "Failed");
    assert!(o.entry(AGENT, "Apply").is_none());
}

/// Atomic lists are owned whole; `set` lists merge by value. `#merge-strategy`
#[test]
fn atomic_lists_are_owned_whole_and_sets_merge_by_value() {
    let mut o = Object::gpumodel();
    let ghosts = |mib: u64| json!({"ghostSources": [{"kind": "unattributed", "mib": mib}]});
    o.apply(AGENT, true, ghosts(5)).unwrap();
    assert_eq!(
        o.fields(AGENT, "Apply"),
        json!({"f:status": {"f:ghostSources": {}}})
    );
    let (code, message) = o.apply("other", false, ghosts(6)).unwrap_err();
    assert_eq!(code, 409);
    assert!(message.ends_with(": .status.ghostSources"), "{message}");
    // metadata.finalizers is a set: two managers' finalizers live side by side.
    let mut secret = Object {
        r: resource("secrets"),
        v: json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}),
    };
    let finalizers =
        |f: &[&str]| json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"finalizers": f}});
    secret
        .write(
            PatchKind::Apply { force: false },
            "a",
            false,
            finalizers(&["x", "shared"]),
        )
        .unwrap();
    secret
        .write(
            PatchKind::Apply { force: false },
            "b",
            false,
            finalizers(&["shared", "y"]),
        )
        .unwrap();
    assert_eq!(
        secret.v["metadata"]["finalizers"],
        json!(["x", "shared", "y"])
    );
    assert_eq!(
        secret.fields("a", "Apply"),
        json!({"f:metadata": {"f:finalizers": {"v:\"shared\"": {}, "v:\"x\"": {}}}})
    );
    secret
        .write(
            PatchKind::Apply { force: false },
            "a",
            false,
            finalizers(&[]),
        )
        .unwrap();
    assert_eq!(secret.v["metadata"]["finalizers"], json!(["shared", "y"]));
}

/// A non-apply write takes the fields it changes (`operation: Update`), without conflicts; a
/// later apply of a different value conflicts with it. `#apply-and-update`
#[test]
fn an_update_takes_the_fields_it_changes_and_a_later_apply_conflicts() {
    let mut o = Object::gpumodel();
    o.apply(
        OPERATOR,
        true,
        json!({"phase": "Ready", "observedGeneration": 1}),
    )
    .unwrap();
    o.write(
        PatchKind::Merge,
        "admin",
        true,
        json!({"status": {"phase": "Failed"}}),
    )
    .unwrap();
    assert_eq!(o.v["status"]["phase"], "Failed");
    let update = o.entry("admin", "Update").unwrap();
    assert_eq!(
        (
            &update["subresource"],
            &update["apiVersion"],
            &update["fieldsV1"]
        ),
        (
            &json!("status"),
            &json!("vramkeeper.dev/v1alpha1"),
            &json!({"f:status": {"f:phase": {}}})
        )
    );
    assert_eq!(
        o.fields(OPERATOR, "Apply"),
        json!({"f:status": {"f:observedGeneration": {}}})
    );
    let (code, message) = o
        .apply(
            OPERATOR,
            false,
            json!({"phase": "Ready", "observedGeneration": 1}),
        )
        .unwrap_err();
    assert_eq!(code, 409);
    assert_eq!(
        message,
        r#"Apply failed with 1 conflict: conflict with "admin" with subresource "status" using vramkeeper.dev/v1alpha1: .status.phase"#
    );
    // The operator forces, as it does: the phase is its own again.
    o.apply(
        OPERATOR,
        true,
        json!({"phase": "Ready", "observedGeneration": 1}),
    )
    .unwrap();
    assert!(o.entry("admin", "Update").is_none());
    // A JSON patch of the spec through the object is an Update without subresource.
    o.write(
        PatchKind::Json,
        "kubectl-patch",
        false,
        json!([{"op": "add", "path": "/spec/model", "value": "m"}]),
    )
    .unwrap();
    let update = o.entry("kubectl-patch", "Update").unwrap();
    assert_eq!(update["fieldsV1"], json!({"f:spec": {"f:model": {}}}));
    assert!(update.get("subresource").is_none());
}

/// `managedFields` in a request: an apply may not carry them; through the status subresource
/// they are ignored; through the object an empty list keeps them and `[{}]` resets them (the
/// writer then owns what it changed in the same request); a valid list replaces them, which
/// the docs allow and discourage. `#clearing-managedfields`, `#apply-and-update`
#[test]
fn requests_set_managed_fields_only_as_the_real_server_allows() {
    let mut o = Object::gpumodel();
    o.apply(OPERATOR, true, json!({"phase": "Ready"})).unwrap();
    let forged = json!([{"manager": "mallory", "operation": "Apply", "apiVersion": "vramkeeper.dev/v1alpha1",
                         "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:phase": {}}}}]);
    let mut body = json!({"apiVersion": "vramkeeper.dev/v1alpha1", "kind": "GpuModel",
                          "metadata": {"managedFields": forged}, "status": {"phase": "Ready"}});
    let (code, _) = o
        .write(
            PatchKind::Apply { force: true },
            OPERATOR,
            true,
            body.clone(),
        )
        .unwrap_err();
    assert_eq!(code, 400);
    let before = o.v["metadata"]["managedFields"].clone();
    body.as_object_mut().unwrap().remove("apiVersion");
    o.write(PatchKind::Merge, "mallory", true, body.clone())
        .unwrap();
    assert_eq!(
        o.v["metadata"]["managedFields"], before,
        "ignored on status"
    );
    o.write(
        PatchKind::Merge,
        "kubectl-edit",
        false,
        json!({"metadata": {"managedFields": []}}),
    )
    .unwrap();
    assert_eq!(o.v["metadata"]["managedFields"], before, "[] keeps them");
    o.write(
        PatchKind::Merge,
        "kubectl-edit",
        false,
        json!({"metadata": {"managedFields": [{}]}, "spec": {"model": "m"}}),
    )
    .unwrap();
    let managed = o.v["metadata"]["managedFields"].as_array().unwrap();
    assert_eq!(managed.len(), 1, "{managed:?}");
    assert_eq!(managed[0]["manager"], "kubectl-edit");
    assert_eq!(managed[0]["fieldsV1"], json!({"f:spec": {"f:model": {}}}));
    o.write(
        PatchKind::Merge,
        "kubectl-edit",
        false,
        json!({"metadata": {"managedFields": forged}}),
    )
    .unwrap();
    assert_eq!(
        o.entry("mallory", "Apply").unwrap()["fieldsV1"],
        forged[0]["fieldsV1"]
    );
}
