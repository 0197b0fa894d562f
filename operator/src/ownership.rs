//! One owner per (node, GPU): the rule itself lives in [`vramkeeper_crds::ownership`], shared
//! with the node agent (which refuses auto-switches its GPU's owner does not want). A GpuModel
//! that does not own its GPU gets `Ready=False`, reason `Conflict`, naming the owner; it acts
//! on nothing, and deleting it never touches the GPU.

use vramkeeper_crds::GpuModel;
pub use vramkeeper_crds::ownership::owner_other_than;

/// The `Ready=False` message of a GpuModel that does not own its GPU.
pub fn conflict_message(gm: &GpuModel, owner: &str) -> String {
    format!(
        "GPU {} of node {} is owned by GpuModel {owner} (the oldest GpuModel naming it); this one acts on nothing until {owner} is deleted or this one is",
        gm.spec.gpu, gm.spec.node_name
    )
}
