//! One owner per (node, GPU): when several GpuModels name the same GPU, the oldest owns it
//! (earliest `creationTimestamp`; within one second, the incumbent: the one the operator has
//! reconciled and not found in conflict, by the typed `status.phase` and `status.conflictWith`;
//! then the smallest name), so that every operator replica, every reconcile and the node agent
//! pick the same one. The others get `status.conflictWith` naming the owner and `Ready=False`
//! reason [`CONFLICT`], and act on nothing.

use std::cmp::Ordering;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::GpuModel;

/// The `Ready` reason of a GpuModel that does not own its GPU.
pub const CONFLICT: &str = "Conflict";

/// The sort key that decides ownership: older first (an object without a creation time, not
/// yet stored, is the youngest); within the same second (creation times have whole seconds),
/// the incumbent; then by name.
fn seniority(gm: &GpuModel) -> (Option<&Time>, bool, &str) {
    (
        gm.metadata.creation_timestamp.as_ref(),
        !incumbent(gm),
        gm.metadata.name.as_deref().unwrap_or_default(),
    )
}

/// Whether `gm` already acts on its GPU: the operator has written its status (`phase`, which
/// the operator always writes and the agent never does) and did not find it in conflict
/// (`conflictWith` absent). Read from typed fields only, never from `Ready`'s reason.
///
/// A status written before `conflictWith` existed says a conflict only in `Ready`'s reason, so
/// such an object counts as incumbent here: against an owner created in the same second, the
/// name then decides, and may hand the GPU over once. This does not fall back to the reason:
/// that form never shipped (`conflictWith` came with the same unreleased v1alpha1 CRD, before
/// any release of the chart), and a typed contract is worth more than that one case.
fn incumbent(gm: &GpuModel) -> bool {
    gm.status
        .as_ref()
        .is_some_and(|s| s.phase.is_some() && s.conflict_with.is_none())
}

/// Orders by seniority, the most senior first.
fn senior_first(a: &GpuModel, b: &GpuModel) -> Ordering {
    let (a, b) = (seniority(a), seniority(b));
    match (a.0, b.0) {
        (Some(x), Some(y)) => x.cmp(y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
    .then((a.1, a.2).cmp(&(b.1, b.2)))
}

/// The owner of GPU `gpu` of node `node` among `gpumodels`: the most senior GpuModel naming
/// it, or `None` when none does.
pub fn owner_of<'a>(
    gpumodels: impl IntoIterator<Item = &'a GpuModel>,
    node: &str,
    gpu: u32,
) -> Option<&'a GpuModel> {
    gpumodels
        .into_iter()
        .filter(|g| g.spec.node_name == node && g.spec.gpu == gpu)
        .min_by(|a, b| senior_first(a, b))
}

/// The owner of `gm`'s (node, GPU) among `others` (which may or may not include `gm`
/// itself): `None` when `gm` owns it, else the owner's name.
pub fn owner_other_than<'a>(
    gm: &'a GpuModel,
    others: impl IntoIterator<Item = &'a GpuModel>,
) -> Option<String> {
    let name = gm.metadata.name.as_deref();
    let owner = owner_of(
        others
            .into_iter()
            .filter(|o| o.metadata.name.as_deref() != name)
            .chain(std::iter::once(gm)),
        &gm.spec.node_name,
        gm.spec.gpu,
    )?;
    (owner.metadata.name.as_deref() != name)
        .then(|| owner.metadata.name.clone().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::{Condition, GpuModelSpec, GpuModelStatus, Phase};

    fn gm(name: &str, node: &str, gpu: u32, created: Option<i64>) -> GpuModel {
        let mut g = GpuModel::new(
            name,
            GpuModelSpec {
                node_name: node.into(),
                gpu,
                model: None,
                zombie: Default::default(),
                idle_unload_seconds: None,
            },
        );
        g.metadata.creation_timestamp = created
            .map(|s| Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000 + s).unwrap()));
        g
    }

    #[test]
    fn the_oldest_owns_and_names_break_ties() {
        let a = gm("a", "n", 0, Some(10));
        let b = gm("b", "n", 0, Some(5));
        let c = gm("c", "n", 0, Some(5));
        let other_gpu = gm("d", "n", 1, Some(0));
        let other_node = gm("e", "m", 0, Some(0));
        let all = [&a, &b, &c, &other_gpu, &other_node];
        assert_eq!(owner_other_than(&a, all), Some("b".into()));
        assert_eq!(owner_other_than(&b, all), None);
        assert_eq!(owner_other_than(&c, all), Some("b".into()));
        assert_eq!(owner_other_than(&other_gpu, all), None);
        assert_eq!(owner_other_than(&other_node, all), None);
        assert_eq!(owner_of(all, "n", 0).map(|g| g.spec.gpu), Some(0));
        assert_eq!(
            owner_of(all, "n", 0).and_then(|g| g.metadata.name.clone()),
            Some("b".into())
        );
        assert!(owner_of(all, "n", 7).is_none());
        // Not yet stored: the youngest.
        let fresh = gm("0", "n", 0, None);
        assert_eq!(owner_other_than(&fresh, all), Some("b".into()));
        assert_eq!(owner_other_than(&b, [&fresh, &a]), None);
    }

    fn ready(reason: &str) -> Condition {
        Condition {
            type_: "Ready".into(),
            status: if reason == CONFLICT { "False" } else { "True" }.into(),
            reason: reason.into(),
            message: String::new(),
            last_transition_time: "2027-01-01T00:00:00Z".into(),
            observed_generation: Some(1),
        }
    }

    fn with_status(
        mut g: GpuModel,
        phase: Option<Phase>,
        conflict_with: Option<&str>,
        ready_reason: &str,
    ) -> GpuModel {
        g.status = Some(GpuModelStatus {
            phase,
            conflict_with: conflict_with.map(Into::into),
            conditions: vec![ready(ready_reason)],
            ..Default::default()
        });
        g
    }

    #[test]
    fn within_one_second_the_incumbent_owns() {
        let old = with_status(
            gm("zz-old", "n", 0, Some(1)),
            Some(Phase::Ready),
            None,
            "ModelActive",
        );
        let new = gm("aa-new", "n", 0, Some(1));
        assert_eq!(owner_other_than(&new, [&old, &new]), Some("zz-old".into()));
        assert_eq!(owner_other_than(&old, [&old, &new]), None);
    }

    #[test]
    fn incumbency_is_read_from_typed_fields_not_from_ready() {
        let new = || gm("aa-new", "n", 0, Some(1));
        let old = |phase, conflict_with, reason| {
            with_status(gm("zz-old", "n", 0, Some(1)), phase, conflict_with, reason)
        };
        let owner = |old: &GpuModel| {
            owner_of([old, &new()], "n", 0)
                .and_then(|g| g.metadata.name.clone())
                .unwrap()
        };
        // conflictWith set: not the incumbent, whatever Ready says.
        let o = old(Some(Phase::Ready), Some("aa-new"), "ModelActive");
        assert_eq!(owner(&o), "aa-new");
        // Ready says Conflict but conflictWith is absent: the incumbent.
        let o = old(Some(Phase::Failed), None, CONFLICT);
        assert_eq!(owner(&o), "zz-old");
        // Never written by the operator (no phase; the agent's fields only): not incumbent.
        let o = old(None, None, "ModelActive");
        assert_eq!(owner(&o), "aa-new");
    }
}
