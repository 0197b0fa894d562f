//! The operator's fields of the GpuModel status, and how they are written: one server-side
//! apply under the operator's field manager, skipped when the stored status already holds
//! them. What the fields say is derived in `conditions`; the agent owns every other field.

use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde::Serialize;
use vramkeeper_crds::{
    Condition, GpuModel, GpuModelStatus, LadderStatus, Phase, UnknownModelStatus,
};

use crate::{context::Context, error::Result};

/// The field manager of the operator's status writes.
pub const FIELD_MANAGER: &str = "vramkeeper-operator";

/// The fields the operator owns.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OperatorStatus {
    /// Summary.
    pub phase: Phase,
    /// The generation acted on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Switching, ZombieMemory, Degraded (and Terminating while deletion is blocked).
    pub conditions: Vec<Condition>,
    /// The zombie ladder's memory; absent when there is nothing to remember.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ladder: Option<LadderStatus>,
    /// The load the agent refused for not knowing the model, while a retry waits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown_model: Option<UnknownModelStatus>,
    /// The last unload or load's words, while `Switching` shows them (reason `Done`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub switch_summary: Option<String>,
    /// The GpuModel that owns this one's (node, GPU), while another one does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conflict_with: Option<String>,
}

impl OperatorStatus {
    /// The operator's fields as `status` holds them (defaults where it holds none).
    pub fn of(status: &GpuModelStatus) -> Self {
        Self {
            phase: status.phase.unwrap_or_default(),
            observed_generation: status.observed_generation,
            conditions: status.conditions.clone(),
            ladder: status.ladder.clone(),
            unknown_model: status.unknown_model.clone(),
            switch_summary: status.switch_summary.clone(),
            conflict_with: status.conflict_with.clone(),
        }
    }

    /// Whether `status` already holds exactly these fields (then nothing is written).
    pub fn is_in(&self, status: Option<&GpuModelStatus>) -> bool {
        status.is_some_and(|s| s.phase == Some(self.phase) && Self::of(s) == *self)
    }

    /// `status` with these fields in place of its own.
    pub fn over(&self, status: &GpuModelStatus) -> GpuModelStatus {
        GpuModelStatus {
            phase: Some(self.phase),
            observed_generation: self.observed_generation,
            conditions: self.conditions.clone(),
            ladder: self.ladder.clone(),
            unknown_model: self.unknown_model.clone(),
            switch_summary: self.switch_summary.clone(),
            conflict_with: self.conflict_with.clone(),
            ..status.clone()
        }
    }

    /// The server-side apply body of these fields.
    pub fn patch(&self) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": GpuModel::api_version(&()),
            "kind": GpuModel::kind(&()),
            "status": self,
        })
    }
}

/// Writes the operator's fields by server-side apply, unless they are already so.
pub async fn write(
    api: &Api<GpuModel>,
    ctx: &Context,
    gm: &GpuModel,
    op: &OperatorStatus,
) -> Result<()> {
    write_over(api, ctx, gm, gm.status.as_ref(), op).await
}

/// Writes the operator's fields unless `current` (the status as last written) holds them.
pub async fn write_over(
    api: &Api<GpuModel>,
    ctx: &Context,
    gm: &GpuModel,
    current: Option<&GpuModelStatus>,
    op: &OperatorStatus,
) -> Result<()> {
    if op.is_in(current) {
        return Ok(());
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(&gm.name_any(), &params, &Patch::Apply(op.patch()))
        .await?;
    ctx.metrics.status_written();
    Ok(())
}
