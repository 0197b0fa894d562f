//! What the agent observes, as both sides read it: how the status's remediation list takes in
//! the device's latest one, and which observed fields count as a change of state (written by
//! the agent at once, worth a reconcile to the operator). One definition here, so that the
//! agent's report and the operator's view of it never disagree.

use crate::{GpuModelStatus, ModelState, RemediationStatus, api::RemediationReport};

/// How many remediations a status keeps (the newest).
pub const REMEDIATIONS_KEPT: usize = 20;

/// `known` (oldest first) with the device's `last` remediation appended unless it is already
/// there (the same `at`), cut to the newest [`REMEDIATIONS_KEPT`].
pub fn merge_remediations(
    known: impl IntoIterator<Item = RemediationStatus>,
    last: Option<&RemediationReport>,
) -> Vec<RemediationStatus> {
    let mut all: Vec<RemediationStatus> = known.into_iter().collect();
    if let Some(last) = last
        && !all.iter().any(|r| r.at == last.at)
    {
        all.push(RemediationStatus::from(last));
    }
    let skip = all.len().saturating_sub(REMEDIATIONS_KEPT);
    all.split_off(skip)
}

/// The observed fields whose change is a change of state: the active model, a switch under
/// way, zombie memory since when, the last switch and remediation (by time), and each model's
/// state. Figures (memory, ghost size) and the heartbeat are not.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StateKey {
    active_model: Option<String>,
    switching: bool,
    zombie_since: Option<String>,
    last_switch: Option<String>,
    last_remediation: Option<String>,
    models: Vec<(String, ModelState)>,
}

impl GpuModelStatus {
    /// The key of this status's observed state (see [`StateKey`]).
    pub fn state_key(&self) -> StateKey {
        StateKey {
            active_model: self.active_model.clone(),
            switching: self.switching,
            zombie_since: self.zombie_since.clone(),
            last_switch: self.last_switch.as_ref().map(|s| s.at.clone()),
            last_remediation: self.remediations.last().map(|r| r.at.clone()),
            models: self
                .models
                .iter()
                .map(|m| (m.name.clone(), m.state))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{RemediationAction, RemediationTrigger};

    fn report(at: &str) -> RemediationReport {
        serde_json::from_value(serde_json::json!({
            "action": "free", "trigger": "auto", "at": at,
            "used_before_mb": 10.0, "used_after_mb": 5.0, "ghost_before_mb": 5.0,
            "ghost_after_mb": 0.0, "cleaned_mb": 5.0, "killed": [], "spared": [],
            "reloaded": null, "duration_ms": 1.0, "at_baseline": null,
        }))
        .unwrap()
    }

    #[test]
    fn the_last_remediation_is_added_once_and_the_newest_are_kept() {
        let one = merge_remediations(vec![], Some(&report("t1")));
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].action, RemediationAction::Free);
        assert_eq!(one[0].trigger, RemediationTrigger::Auto);
        assert_eq!(merge_remediations(one.clone(), Some(&report("t1"))), one);
        let many: Vec<RemediationStatus> = (0..REMEDIATIONS_KEPT + 5)
            .map(|i| RemediationStatus::from(&report(&format!("t{i:03}"))))
            .collect();
        let kept = merge_remediations(many, Some(&report("newest")));
        assert_eq!(kept.len(), REMEDIATIONS_KEPT);
        assert_eq!(kept.last().unwrap().at, "newest");
        assert_eq!(kept[0].at, "t006");
    }

    #[test]
    fn figures_are_not_a_change_of_state_but_a_new_remediation_is() {
        let mut s = GpuModelStatus {
            active_model: Some("a".into()),
            ..Default::default()
        };
        let key = s.state_key();
        s.reported_at = Some("later".into());
        s.device = Some(Default::default());
        assert_eq!(s.state_key(), key);
        s.remediations = merge_remediations(vec![], Some(&report("t1")));
        assert_ne!(s.state_key(), key);
    }
}
