//! One owner per (node, GPU): when several GpuModels name the same GPU, the oldest owns it
//! (earliest `creationTimestamp`; within one second, the one already acting on the GPU, whose
//! `Ready` condition shows no conflict; then the smallest name), so that every operator
//! replica, every reconcile and the node agent pick the same one. The others get `Ready=False`
//! reason [`CONFLICT`] and act on nothing.

use std::cmp::Ordering;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::{GpuModel, conditions::READY};

/// The `Ready` reason of a GpuModel that does not own its GPU.
pub const CONFLICT: &str = "Conflict";

/// The sort key that decides ownership: older first (an object without a creation time, not
/// yet stored, is the youngest); within the same second (creation times have whole seconds),
/// the incumbent; then by name.
fn seniority(gm: &GpuModel) -> (Option<&Time>, bool, &str) {
    let incumbent = gm.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == READY && c.reason != CONFLICT)
    });
    (
        gm.metadata.creation_timestamp.as_ref(),
        !incumbent,
        gm.metadata.name.as_deref().unwrap_or_default(),
    )
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
    use crate::{Condition, GpuModelSpec, GpuModelStatus};

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

    #[test]
    fn within_one_second_the_incumbent_owns() {
        let mut old = gm("zz-old", "n", 0, Some(1));
        old.status = Some(GpuModelStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "ModelActive".into(),
                message: String::new(),
                last_transition_time: "2027-01-01T00:00:00Z".into(),
                observed_generation: Some(1),
            }],
            ..Default::default()
        });
        let new = gm("aa-new", "n", 0, Some(1));
        assert_eq!(owner_other_than(&new, [&old, &new]), Some("zz-old".into()));
        assert_eq!(owner_other_than(&old, [&old, &new]), None);
    }
}
