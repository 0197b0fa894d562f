//! Standard Kubernetes conditions, as `metav1.Condition` defines them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition type: the desired model is active and serving.
pub const READY: &str = "Ready";
/// Condition type: a switch is under way.
pub const SWITCHING: &str = "Switching";
/// Condition type: ghost memory has been over the threshold for the persist time.
pub const ZOMBIE_MEMORY: &str = "ZombieMemory";
/// Condition type: automatic remediation gave up.
pub const DEGRADED: &str = "Degraded";
/// Condition type: the object is being deleted and the deletion cannot finish yet (the
/// model could not be unloaded); the reason and message say why.
pub const TERMINATING: &str = "Terminating";

/// One aspect of the object's state, in the shape of `metav1.Condition`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Type of the condition: Ready, Switching, ZombieMemory, Degraded or Terminating.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    #[schemars(extend("enum" = ["True", "False", "Unknown"]))]
    pub status: String,
    /// A CamelCase word saying why the condition is as it is.
    pub reason: String,
    /// A sentence for people.
    #[serde(default)]
    pub message: String,
    /// When the status last changed (RFC 3339).
    #[schemars(extend("format" = "date-time"))]
    pub last_transition_time: String,
    /// The `metadata.generation` the condition was set against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
