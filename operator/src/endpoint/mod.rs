//! RoutingEndpoint: select a gate-passing version -> decide the rollout (with a canary when
//! `spec.rollout` asks) -> build the serving children (Deployment, Service, HPA, PDB, and the
//! canary's Deployment and Service).

pub mod build;
pub mod canary;
pub mod canary_step;
pub mod decide;
pub mod select;
pub mod signals;

pub use build::{autoscaler, canary_deployment, canary_service, deployment, disruption_budget, service};
pub use decide::{
    CanaryObs, DeploymentObs, EndpointDecision, decide, decide_with_canary, invalid_status,
    observe_deployment,
};
pub use select::{Candidate, Selection, find_passing, select};
