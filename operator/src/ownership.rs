//! One owner per (node, GPU): when several GpuModels name the same GPU, the oldest owns it
//! (earliest `creationTimestamp`; within one second, the one already acting on the GPU; then
//! the smallest name, so that every replica and every reconcile picks the same one). The others get `Ready=False`, reason `Conflict`, naming the
//! owner; they act on nothing, and deleting them never touches the GPU.

use kube::ResourceExt;
use vramkeeper_crds::{GpuModel, conditions::READY};

use crate::conditions::reason::CONFLICT;

/// The sort key that decides ownership: older first; within the same second (creation times
/// have whole seconds), the one that already acts on the GPU (its status shows no conflict);
/// then by name.
fn seniority(gm: &GpuModel) -> (Option<jiff::Timestamp>, String) {
    let incumbent = gm.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == READY && c.reason != CONFLICT)
    });
    (
        gm.metadata.creation_timestamp.as_ref().map(|t| t.0),
        format!("{}{}", if incumbent { 0 } else { 1 }, gm.name_any()),
    )
}

/// The owner of `gm`'s (node, GPU) among `others` (the known GpuModels, which may or may not
/// include `gm` itself): `None` when `gm` owns it, else the owner's name.
pub fn owner_other_than<'a>(
    gm: &GpuModel,
    others: impl IntoIterator<Item = &'a GpuModel>,
) -> Option<String> {
    let mine = seniority(gm);
    others
        .into_iter()
        .filter(|o| {
            o.spec.node_name == gm.spec.node_name
                && o.spec.gpu == gm.spec.gpu
                && o.name_any() != gm.name_any()
        })
        .map(seniority)
        .filter(|theirs| {
            // An object without a creation time (not yet stored) is the youngest.
            match (&theirs.0, &mine.0) {
                (Some(t), Some(m)) => (t, &theirs.1) < (m, &mine.1),
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => theirs.1 < mine.1,
            }
        })
        .min_by(|a, b| match (&a.0, &b.0) {
            (Some(x), Some(y)) => (x, &a.1).cmp(&(y, &b.1)),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.1.cmp(&b.1),
        })
        .map(|(_, key)| key[1..].to_string())
}

/// The `Ready=False` message of a GpuModel that does not own its GPU.
pub fn conflict_message(gm: &GpuModel, owner: &str) -> String {
    format!(
        "GPU {} of node {} is owned by GpuModel {owner} (the oldest GpuModel naming it); this one acts on nothing until {owner} is deleted or this one is",
        gm.spec.gpu, gm.spec.node_name
    )
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use vramkeeper_crds::GpuModelSpec;

    use super::*;

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
        g.metadata.creation_timestamp =
            created.map(|s| Time(jiff::Timestamp::from_second(1_800_000_000 + s).unwrap()));
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
        // Not yet stored: the youngest.
        let fresh = gm("0", "n", 0, None);
        assert_eq!(owner_other_than(&fresh, all), Some("b".into()));
        assert_eq!(owner_other_than(&b, [&fresh, &a]), None);
    }

    #[test]
    fn within_one_second_the_incumbent_owns() {
        let mut old = gm("zz-old", "n", 0, Some(1));
        old.status = Some(vramkeeper_crds::GpuModelStatus {
            conditions: vec![vramkeeper_crds::Condition {
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
