//! The RL stage of a TrainingRun: settings from `spec.stages.ppo`, paths and shared settings
//! (base model, precision, sequence length, seed, adapter layout) from the SFT stage it continues.

use sapllm_crds::StageName;
use sapllm_crds::contract::stage_dir;

use crate::driver::stages::{RunContext, sft_config};
use crate::rl::{RlAlgorithm, RlConfig, RlSummary};

/// RL settings from the manifest: starts from `<run-dir>/sft/adapter`, writes `<run-dir>/ppo`.
pub fn config(ctx: &RunContext) -> RlConfig {
    let sft = sft_config(ctx);
    let p = &ctx.run.spec.stages.ppo;
    let mut c = RlConfig::new(
        sft.base_model.clone(),
        sft.out_dir.join("adapter"),
        sft.data_dir.clone(),
        ctx.run_dir.join(stage_dir(StageName::Ppo)),
    );
    c.algorithm = p.algorithm;
    c.iterations = p.iterations;
    c.learning_rate = p.learning_rate;
    c.kl_coef = p.kl_penalty;
    c.batch_size = p.batch_size as usize;
    c.mini_batch_size = p.mini_batch_size as usize;
    c.ppo_epochs = p.ppo_epochs as usize;
    c.clip_range = p.clip_range;
    c.reward_weights = (&p.reward_weights).into();
    c.checkpoint_interval = p.checkpoint_interval;
    c.precision = sft.precision;
    c.max_seq_len = sft.max_seq_len;
    c.seed = sft.seed;
    c.adapter_layout = sft.adapter_layout;
    c.progress = ctx.progress;
    c
}

/// One line for the stage result.
pub fn message(s: &RlSummary) -> String {
    let mut m = format!("{:?}: {} iterations", s.algorithm, s.iterations);
    if s.algorithm != RlAlgorithm::Dpo
        && let (Some(a), Some(b)) = (s.first_reward, s.final_reward)
    {
        m.push_str(&format!(", rollout reward {a:.3} -> {b:.3}"));
    }
    m.push_str(&format!(", KL {:.3}", s.final_kl));
    if let (Some(b), Some(a)) = (&s.before, &s.after) {
        m.push_str(&format!(
            ", validation reward {:.3} -> {:.3}, API accuracy {:.1} % -> {:.1} %",
            b.mean_reward,
            a.mean_reward,
            b.api_accuracy * 100.0,
            a.api_accuracy * 100.0
        ));
    }
    m
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use sapllm_model::peft::AdapterLayout;

    use super::*;
    use crate::progress::ProgressMode;

    fn ctx(sft: &str) -> RunContext {
        let yaml = format!(
            "apiVersion: sapllm.io/v1alpha1\nkind: TrainingRun\nmetadata: {{name: t}}\nspec:\n  baseModel: {{preset: tiny}}\n  storage: {{claimName: a}}\n  stages: {{sft: {sft}}}\n"
        );
        RunContext {
            run: serde_yaml::from_str(&yaml).unwrap(),
            run_dir: PathBuf::from("runs/t"),
            manifest_dir: PathBuf::new(),
            progress: ProgressMode::Quiet,
        }
    }

    /// `spec.stages.sft.adapterLayout` reaches both stages that save an adapter, as a local run
    /// and each operator Job (`stage sft|ppo -f <manifest>`) read it.
    #[test]
    fn the_manifest_adapter_layout_reaches_sft_and_ppo() {
        for (sft, want) in [
            ("{}", AdapterLayout::PerExpert),
            ("{adapterLayout: per-expert}", AdapterLayout::PerExpert),
            ("{adapterLayout: fused}", AdapterLayout::Fused),
        ] {
            let ctx = ctx(sft);
            assert_eq!(sft_config(&ctx).adapter_layout, want, "sft: {sft}");
            assert_eq!(config(&ctx).adapter_layout, want, "ppo: {sft}");
        }
    }
}
