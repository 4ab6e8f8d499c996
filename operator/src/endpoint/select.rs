//! Which model version an endpoint may serve: only one whose Evaluation passed its gates.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use sapllm_crds::common::Verdict;
use sapllm_crds::endpoint::RoutingEndpoint;
use sapllm_crds::evaluation::{Evaluation, EvaluationPhase, ModelArtifacts};

use crate::evaluation::decide::failing_gates;
use crate::names::{ANNOTATION_RUN_GENERATION, LABEL_LINEAGE};

/// A servable version.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// The content digest.
    pub version: String,
    /// The Evaluation that passed it.
    pub evaluation: String,
    /// Its files (relative to the claim's root).
    pub artifacts: ModelArtifacts,
    /// The claim holding them.
    pub claim: Option<String>,
    /// The abstention threshold the Evaluation scored with (the endpoint's default).
    pub abstain_threshold: f64,
}

/// The outcome of selecting.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selection {
    /// The version the endpoint should serve, if any may.
    pub serve: Option<Candidate>,
    /// Why the version asked for may not be served: (reason, message).
    pub blocked: Option<(String, String)>,
}

fn completed(ev: &Evaluation) -> bool {
    ev.status
        .as_ref()
        .is_some_and(|s| s.phase == Some(EvaluationPhase::Completed) && s.model_version.is_some())
}

fn passed(ev: &Evaluation) -> bool {
    completed(ev) && ev.status.as_ref().is_some_and(|s| s.verdict == Some(Verdict::Passed))
}

fn candidate(ev: &Evaluation) -> Option<Candidate> {
    let s = ev.status.as_ref()?;
    Some(Candidate {
        version: s.model_version.clone()?,
        evaluation: ev.name_any(),
        artifacts: s.artifacts.clone()?,
        claim: ev.spec.storage.as_ref().map(|st| st.claim_name.clone()),
        abstain_threshold: ev.spec.abstain_threshold,
    })
}

/// Newest first by verdict time; times have second precision, so ties go to the later
/// generation of the same run, then to the later-created object.
fn completion(ev: &Evaluation) -> (Option<Time>, i64, Option<Time>, String) {
    let generation =
        ev.annotations().get(ANNOTATION_RUN_GENERATION).and_then(|g| g.parse().ok()).unwrap_or(0);
    (
        ev.status.as_ref().and_then(|s| s.completion_time.clone()),
        generation,
        ev.metadata.creation_timestamp.clone(),
        ev.name_any(),
    )
}

/// A passing candidate for `version` (e.g. the active version, the target of a rollback).
pub fn find_passing(version: &str, evaluations: &[Evaluation]) -> Option<Candidate> {
    evaluations
        .iter()
        .filter(|e| passed(e) && e.status.as_ref().and_then(|s| s.model_version.as_deref()) == Some(version))
        .max_by_key(|e| completion(e))
        .and_then(candidate)
}

/// Whether a change of `ev` can change what `rep` serves or says: only completed Evaluations
/// count, and only those of its lineage, its pinned version, or the versions it serves or rolls
/// out. The endpoint controller wakes an endpoint for these alone (a running Evaluation's
/// progress, or another lineage's verdict, would otherwise reconcile every endpoint of the
/// namespace).
pub fn concerns(rep: &RoutingEndpoint, ev: &Evaluation) -> bool {
    if !completed(ev) {
        return false;
    }
    let version = ev.status.as_ref().and_then(|s| s.model_version.as_deref());
    let model = &rep.spec.model;
    let lineage = model.latest_passing.as_ref().is_some_and(|l| {
        ev.labels().get(LABEL_LINEAGE) == Some(&l.lineage)
            || ev.spec.model.training_run.as_deref() == Some(l.lineage.as_str())
    });
    let status = rep.status.as_ref();
    let named = [
        model.pinned.as_ref().map(|p| p.version.as_str()),
        status.and_then(|s| s.active_version.as_deref()),
        status.and_then(|s| s.rollout_version.as_deref()),
    ];
    lineage || version.is_some_and(|v| named.contains(&Some(v)))
}

/// Selects what `rep` should serve from the Evaluations of its namespace.
pub fn select(rep: &RoutingEndpoint, evaluations: &[Evaluation]) -> Selection {
    let model = &rep.spec.model;
    if let Some(p) = &model.pinned {
        if let Some(c) = find_passing(&p.version, evaluations) {
            return Selection { serve: Some(c), blocked: None };
        }
        let failed = evaluations
            .iter()
            .filter(|e| {
                completed(e)
                    && e.status.as_ref().and_then(|s| s.model_version.as_deref()) == Some(p.version.as_str())
            })
            .max_by_key(|e| completion(e));
        let blocked = match failed {
            Some(e) => (
                "GatesFailed".to_string(),
                format!(
                    "pinned version {} failed its gates in Evaluation {} ({})",
                    p.version,
                    e.name_any(),
                    failing_gates(&e.status.clone().unwrap_or_default().gates)
                ),
            ),
            None => {
                ("NoVerdict".to_string(), format!("no completed Evaluation of pinned version {}", p.version))
            }
        };
        return Selection { serve: None, blocked: Some(blocked) };
    }
    let Some(l) = &model.latest_passing else {
        return Selection {
            serve: None,
            blocked: Some(("InvalidSpec".into(), "spec.model: set pinned or latestPassing".into())),
        };
    };
    let lineage: Vec<&Evaluation> = evaluations
        .iter()
        .filter(|e| {
            e.labels().get(LABEL_LINEAGE) == Some(&l.lineage)
                || e.spec.model.training_run.as_deref() == Some(l.lineage.as_str())
        })
        .filter(|e| completed(e))
        .collect();
    let newest_passing = lineage.iter().copied().filter(|e| passed(e)).max_by_key(|e| completion(e));
    let newest = lineage.iter().copied().max_by_key(|e| completion(e));
    let serve = newest_passing.and_then(candidate);
    let blocked = match (newest, newest_passing) {
        (None, _) => Some((
            "NoPassingVersion".to_string(),
            format!("lineage {} has no completed Evaluation yet", l.lineage),
        )),
        (Some(n), None) => Some((
            "GatesFailed".to_string(),
            format!(
                "no version of lineage {} passed its gates; newest: Evaluation {} ({})",
                l.lineage,
                n.name_any(),
                failing_gates(&n.status.clone().unwrap_or_default().gates)
            ),
        )),
        (Some(n), Some(p)) if n.name_any() != p.name_any() => {
            // What is served is said once, by the caller ("; serving X").
            let s = n.status.clone().unwrap_or_default();
            let failed = s.model_version.unwrap_or_default();
            let passed_version = p.status.as_ref().and_then(|s| s.model_version.clone()).unwrap_or_default();
            let m = if failed == passed_version {
                format!(
                    "version {failed} failed its gates in Evaluation {} ({}) after passing in Evaluation {}",
                    n.name_any(),
                    failing_gates(&s.gates),
                    p.name_any()
                )
            } else {
                format!(
                    "version {failed} (Evaluation {}) failed its gates ({})",
                    n.name_any(),
                    failing_gates(&s.gates)
                )
            };
            Some(("GatesFailed".to_string(), m))
        }
        _ => None,
    };
    Selection { serve, blocked }
}
