//! The Helm chart (`charts/vramkeeper`) checked with the real tools and the real binaries:
//!
//! - Helm v3 lints (`--strict`) and renders it with every values file of `tests/chart/`;
//!   kubernetes-validate checks the output against the Kubernetes API schemas (`--strict`).
//! - The operator's RBAC equals `vramkeeper_operator::rbac::RBAC_RULES`; the agent's equals
//!   what its status reporting calls (`vramkeeper_crds::rbac::AGENT_RBAC_RULES`).
//! - The rendered flags parse: the operator's through its own clap `Args`, the agent's
//!   through the `vramkeeper-agent` binary; a real agent started with the chart's flags and
//!   catalog serves every metric the Grafana dashboard queries.
//! - The CRD in the chart is crdgen's output; `examples/` pass the CRD's schema and CEL rules.
//! - Production: Pod templates unchanged by chart bumps and re-renders, the operator's rollout
//!   and disruption budget (`rollouts`); monitors, alerts and NetworkPolicies together
//!   (`monitoring`); placement and the wait for NVIDIA's driver (`scheduling`); the token
//!   across two `helm template` renders with a real agent following its file (`gitops`).
//!
//! Needs Helm and kubernetes-validate under `.tools/` (`scripts/install-test-tools` installs
//! them; `scripts/test` runs that first) and the agent binary (`cargo build -p
//! vramkeeper-node-agent`). Without them the tests fail, saying what is missing.

mod crd;
mod dashboard;
mod examples;
mod gitops;
mod helm;
mod manifests;
mod monitoring;
mod rbac;
mod rollouts;
mod scheduling;
