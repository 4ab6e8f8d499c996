//! RoutingEndpoint: select a gate-passing version -> decide the rollout -> build the serving
//! children (Deployment, Service, HPA, PDB).

pub mod build;
pub mod decide;
pub mod select;

pub use build::{autoscaler, deployment, disruption_budget, service};
pub use decide::{DeploymentObs, EndpointDecision, decide, invalid_status, observe_deployment};
pub use select::{Candidate, Selection, find_passing, select};
