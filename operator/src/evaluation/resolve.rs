//! Which files an Evaluation scores: a TrainingRun's final adapter, or explicit artifacts.

use kube::ResourceExt;
use sapllm_crds::common::ArtifactStorage;
use sapllm_crds::contract::ARTIFACTS_MOUNT;
use sapllm_crds::evaluation::Evaluation;
use sapllm_crds::training_run::{StageName, StagePhase, TrainingRun};

use crate::invalid::{Invalid, check_object_name, check_relative_path};
use crate::pod::volume_path;

/// The inputs of the evaluate Job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The artifact claim (mounted at `/artifacts`).
    pub claim: String,
    /// Base model directory, relative to the claim's root.
    pub base_model: String,
    /// Adapter directory, relative to the claim's root.
    pub adapter: Option<String>,
    /// The examples file as the worker sees it.
    pub examples: String,
    /// Further claims to mount (a dataset on another claim).
    pub extra_claims: Vec<String>,
    /// The version digest when already known.
    pub version: Option<String>,
    /// Output folder relative to the claim's root.
    pub out: String,
}

/// The outcome of resolving.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Everything is known.
    Ready(Resolved),
    /// The model does not exist yet (e.g. its run still trains); the message says what is missing.
    Waiting(String),
}

/// The test split the data-prep stage writes into the dataset folder.
pub const TEST_SPLIT: &str = "test_routing_examples.jsonl";

/// Resolves `ev`; `run` is the TrainingRun it names (when it names one and it exists).
pub fn resolve(ev: &Evaluation, run: Option<&TrainingRun>) -> Result<Resolution, Invalid> {
    let spec = &ev.spec;
    if let Some(s) = &spec.storage {
        check_storage(s)?;
    }
    let out_base = |s: &ArtifactStorage| {
        format!("{}/evaluation/{}", s.sub_path.clone().unwrap_or_else(|| ev.name_any()), ev.name_any())
    };
    match (&spec.model.training_run, &spec.model.artifacts) {
        (Some(name), None) => {
            check_object_name("spec.model.trainingRun", name)?;
            let Some(run) = run else {
                return Ok(Resolution::Waiting(format!("TrainingRun {name} does not exist")));
            };
            let storage = spec.storage.clone().unwrap_or_else(|| {
                let mut s = run.spec.storage.clone();
                s.sub_path = Some(s.sub_path.clone().unwrap_or_else(|| run.name_any()));
                s
            });
            if storage.claim_name != run.spec.storage.claim_name {
                return Err(Invalid::new(
                    "spec.storage.claimName",
                    format!(
                        "must be {:?}, the claim holding TrainingRun {name}'s artifacts",
                        run.spec.storage.claim_name
                    ),
                ));
            }
            let st = run.status.clone().unwrap_or_default();
            let unfinished: Vec<&str> = run
                .spec
                .planned_stages()
                .into_iter()
                .filter(|s| *s != StageName::Evaluation)
                .filter(|s| !st.stages.iter().any(|x| x.name == *s && x.phase == StagePhase::Succeeded))
                .map(|s| s.as_str())
                .collect();
            if !unfinished.is_empty() {
                return Ok(Resolution::Waiting(format!(
                    "TrainingRun {name} has not finished stage(s) {}",
                    unfinished.join(", ")
                )));
            }
            let a = st.artifacts.unwrap_or_default();
            let Some(base) = a.base_model.clone() else {
                return Ok(Resolution::Waiting(format!("TrainingRun {name} reports no base model artifact")));
            };
            let adapter = a.ppo_adapter.clone().or(a.sft_adapter.clone());
            let (examples, extra) = match &spec.dataset {
                Some(d) => dataset(d, &storage.claim_name)?,
                None => match &a.dataset {
                    Some(ds) => {
                        (format!("{ARTIFACTS_MOUNT}/{}/{TEST_SPLIT}", ds.trim_end_matches('/')), vec![])
                    }
                    None => return Ok(Resolution::Waiting(format!("TrainingRun {name} reports no dataset"))),
                },
            };
            Ok(Resolution::Ready(Resolved {
                claim: storage.claim_name.clone(),
                base_model: base,
                adapter,
                examples,
                extra_claims: extra,
                version: a.model_version,
                out: out_base(&storage),
            }))
        }
        (None, Some(arts)) => {
            let Some(storage) = &spec.storage else {
                return Err(Invalid::new("spec.storage", "is required when spec.model.artifacts is used"));
            };
            check_relative_path("spec.model.artifacts.baseModel", &arts.base_model)?;
            if let Some(a) = &arts.adapter {
                check_relative_path("spec.model.artifacts.adapter", a)?;
            }
            if let Some(v) = &arts.version
                && !is_digest(v)
            {
                return Err(Invalid::new(
                    "spec.model.artifacts.version",
                    format!("{v:?} is not \"sha256:<64 hex>\""),
                ));
            }
            let Some(d) = &spec.dataset else {
                return Err(Invalid::new("spec.dataset", "is required when spec.model.artifacts is used"));
            };
            let (examples, extra) = dataset(d, &storage.claim_name)?;
            Ok(Resolution::Ready(Resolved {
                claim: storage.claim_name.clone(),
                base_model: arts.base_model.clone(),
                adapter: arts.adapter.clone(),
                examples,
                extra_claims: extra,
                version: arts.version.clone(),
                out: out_base(storage),
            }))
        }
        _ => Err(Invalid::new("spec.model", "set exactly one of trainingRun and artifacts")),
    }
}

fn check_storage(s: &ArtifactStorage) -> Result<(), Invalid> {
    check_object_name("spec.storage.claimName", &s.claim_name)?;
    if let Some(sub) = &s.sub_path {
        check_relative_path("spec.storage.subPath", sub)?;
    }
    Ok(())
}

fn dataset(d: &sapllm_crds::training_run::VolumePath, claim: &str) -> Result<(String, Vec<String>), Invalid> {
    match &d.claim_name {
        Some(c) => {
            check_object_name("spec.dataset.claimName", c)?;
            check_relative_path("spec.dataset.path", &d.path)?;
        }
        None if !d.path.starts_with('/') => {
            return Err(Invalid::new("spec.dataset.path", "must be absolute when no claimName is given"));
        }
        None => {}
    }
    Ok((volume_path(d, claim), d.claim_name.iter().filter(|c| c.as_str() != claim).cloned().collect()))
}

/// Whether `v` is a `sha256:` content digest.
pub fn is_digest(v: &str) -> bool {
    v.strip_prefix("sha256:").is_some_and(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
}
