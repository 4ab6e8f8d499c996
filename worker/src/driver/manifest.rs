//! Reading a TrainingRun manifest for a local run, with the checks the API server's schema and
//! CEL rules would make, so a local run fails the same way `kubectl apply` would.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use sapllm_crds::{GROUP, TrainingRun, VERSION, VolumePath};

use sapllm_crds::contract::{VOLUMES_ROOT, VOLUMES_ROOT_ENV};

/// Loads and checks a TrainingRun manifest.
pub fn load(path: &Path) -> Result<TrainingRun> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: serde_yaml::Value =
        serde_yaml::from_str(&text).with_context(|| format!("{} is not YAML", path.display()))?;
    let api_version = value.get("apiVersion").and_then(|v| v.as_str()).unwrap_or_default();
    let kind = value.get("kind").and_then(|v| v.as_str()).unwrap_or_default();
    if api_version != format!("{GROUP}/{VERSION}") || kind != "TrainingRun" {
        bail!(
            "{}: expected apiVersion {GROUP}/{VERSION} and kind TrainingRun, found {api_version:?} / {kind:?}",
            path.display()
        );
    }
    let run: TrainingRun =
        serde_yaml::from_value(value).with_context(|| format!("{}: invalid TrainingRun", path.display()))?;
    check(&run).with_context(|| format!("{}: invalid TrainingRun", path.display()))?;
    Ok(run)
}

/// The checks the CRD's schema and CEL rules make at apply time, as errors naming the field.
pub fn check(run: &TrainingRun) -> Result<()> {
    let s = &run.spec;
    if s.base_model.preset.is_some() == s.base_model.hugging_face.is_some() {
        bail!("spec.baseModel: set exactly one of preset and huggingFace");
    }
    if s.data.synthetic.is_some() && s.data.transaction_logs.is_some() {
        bail!("spec.data: set at most one of synthetic and transactionLogs");
    }
    let sp = &s.stages.data_prep.splits;
    if (sp.train + sp.validation + sp.test - 1.0).abs() > 1e-3 {
        bail!("spec.stages.dataPrep.splits: train + validation + test must equal 1");
    }
    let lora = &s.stages.sft.lora;
    if !(1..=256).contains(&lora.r) {
        bail!("spec.stages.sft.lora.r must be in 1..256, got {}", lora.r);
    }
    if !(0.0..1.0).contains(&lora.dropout) {
        bail!("spec.stages.sft.lora.dropout must be in [0, 1), got {}", lora.dropout);
    }
    let ppo = &s.stages.ppo;
    if ppo.mini_batch_size == 0 || !ppo.batch_size.is_multiple_of(ppo.mini_batch_size) {
        bail!(
            "spec.stages.ppo.miniBatchSize ({}) must divide batchSize ({})",
            ppo.mini_batch_size,
            ppo.batch_size
        );
    }
    let g = &s.stages.evaluation.gates;
    for (name, v) in [
        ("routingAccuracy", g.routing_accuracy),
        ("apiSelectionAccuracy", g.api_selection_accuracy),
        ("payloadAccuracy", g.payload_accuracy),
    ] {
        if !(0.0..=1.0).contains(&v) {
            bail!("spec.stages.evaluation.gates.{name} must be in [0, 1], got {v}");
        }
    }
    Ok(())
}

/// Where a [`VolumePath`] is on this machine: a path in a mounted claim, or a plain path
/// (relative paths are taken from `base`, the manifest's folder, for local runs).
pub fn resolve(vp: &VolumePath, base: &Path) -> PathBuf {
    match &vp.claim_name {
        Some(claim) => {
            let root = std::env::var(VOLUMES_ROOT_ENV).unwrap_or_else(|_| VOLUMES_ROOT.into());
            Path::new(&root).join(claim).join(&vp.path)
        }
        None if Path::new(&vp.path).is_absolute() => PathBuf::from(&vp.path),
        None => base.join(&vp.path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(yaml: &str) -> TrainingRun {
        serde_yaml::from_str(yaml).unwrap()
    }

    const BASE: &str = "apiVersion: sapllm.io/v1alpha1\nkind: TrainingRun\nmetadata: {name: t}\nspec:\n  storage: {claimName: a}\n";

    #[test]
    fn model_source_must_be_given_exactly_once() {
        let both = run(&format!("{BASE}  baseModel: {{preset: tiny, huggingFace: {{path: /m}}}}\n"));
        assert!(check(&both).unwrap_err().to_string().contains("spec.baseModel"));
        let none = run(&format!("{BASE}  baseModel: {{}}\n"));
        assert!(check(&none).is_err());
        assert!(check(&run(&format!("{BASE}  baseModel: {{preset: tiny}}\n"))).is_ok());
    }

    #[test]
    fn ppo_minibatch_must_divide_batch() {
        let bad = run(&format!(
            "{BASE}  baseModel: {{preset: tiny}}\n  stages: {{ppo: {{batchSize: 8, miniBatchSize: 3}}}}\n"
        ));
        assert!(check(&bad).unwrap_err().to_string().contains("miniBatchSize"));
    }

    #[test]
    fn claim_paths_resolve_under_the_volumes_root() {
        let vp = VolumePath { claim_name: Some("logs".into()), path: "x/tx.jsonl".into() };
        assert!(resolve(&vp, Path::new("/here")).ends_with("logs/x/tx.jsonl"));
        let local = VolumePath { claim_name: None, path: "tx.jsonl".into() };
        assert_eq!(resolve(&local, Path::new("/here")), PathBuf::from("/here/tx.jsonl"));
    }
}
