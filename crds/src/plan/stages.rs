//! What each stage holds on the device, from the settings in a TrainingRun or RoutingEndpoint.
//!
//! - pretrain: full-parameter training of a preset, f32 weights, gradients and AdamW's two
//!   moments (16 bytes per parameter), f32 activations without checkpointing (the stage has no
//!   such setting and the worker does not checkpoint it), at `batchSize x sequenceLength`.
//! - sft (QLoRA): the frozen base at `quantization`, f32 LoRA adapters with f32 gradients and
//!   AdamW moments, one decoder layer's linear weights dequantized to bf16 at a time, bf16
//!   activations of one micro-batch (`batchSize x maxSequenceLength`) with or without
//!   `gradientCheckpointing`, and the f32 logits of the loss.
//! - ppo: the SFT stage's base and settings (RL continues from it at its sequence length), the
//!   policy adapter trained as in SFT plus the frozen reference adapter (and PPO's value head),
//!   the KV cache of one iteration's rollouts, and the activations of one gradient step
//!   (`miniBatchSize` problems; GRPO samples [`GRPO_GROUP_SIZE`] answers per problem, DPO a
//!   chosen and a rejected sequence). Rollout cache and training activations are counted
//!   together: the plan does not rely on the worker freeing one before the other.
//! - evaluation: int8 weights (what the worker's evaluation stage loads), one decision at a time,
//!   a context of `maxSequenceLength` + [`EVAL_ANSWER_TOKENS`].
//! - serve: the endpoint's `precision`, `maxBatch` sequences per model thread (unset: 1 on a CPU,
//!   [`GPU_DEFAULT_MAX_BATCH`] on a GPU) times the model threads, each with a KV cache of
//!   [`SERVE_CONTEXT_TOKENS`] and a prefill over the whole context.
//!
//! A quantized base is loaded layer by layer (an adapter merged before quantizing), so the
//! weights' steady state is what is planned, not a full-precision copy.

use crate::common::Precision;
use crate::endpoint::RoutingEndpointSpec;
use crate::plan::activations::{
    LoraShape, inference_activation_bytes, kv_cache_bytes, lora_params, training_activation_bytes,
    training_logits_bytes,
};
use crate::plan::dims::ModelDims;
use crate::plan::weights::{WeightStorage, base_weight_bytes};
use crate::plan::{Plan, StagePlan, gib};
use crate::training_run::{PpoStage, PretrainStage, RlAlgorithm, SftStage, TrainingRunSpec};

/// Answer tokens the decoder allows after a prompt (the worker's `max_new_tokens` default).
pub const EVAL_ANSWER_TOKENS: u64 = 1024;
/// Context a serving pod is planned for: a routing prompt of up to 1024 tokens and an answer
/// of up to [`EVAL_ANSWER_TOKENS`]. The endpoint has no setting for it (the model's trained
/// sequence length is not known to the endpoint).
pub const SERVE_CONTEXT_TOKENS: u64 = 2048;
/// Requests decoded together on a GPU when `batching.maxBatch` is unset (a batch of 8 costs
/// about one step there); the worker's GPU default must match.
pub const GPU_DEFAULT_MAX_BATCH: u64 = 8;
/// Answers GRPO samples per problem (the worker's `RlConfig::group_size`; not a spec field).
pub const GRPO_GROUP_SIZE: u64 = 8;

/// Bytes of a bf16 element (activations and dequantized weights of the QLoRA path).
const BF16: u64 = 2;
/// Bytes of an f32 element.
const F32: u64 = 4;

fn part(name: impl Into<String>, bytes: u64) -> (String, u64) {
    (name.into(), bytes)
}

fn base_part(d: &ModelDims, storage: WeightStorage) -> (String, u64) {
    part(format!("base weights ({})", storage.name()), base_weight_bytes(d, storage))
}

/// One layer's linear weights expanded to bf16 for its matmuls (quantized bases only).
fn dequant_part(d: &ModelDims, storage: WeightStorage) -> Option<(String, u64)> {
    storage.is_quantized().then(|| part("dequantized layer (bf16)", d.layer_linear_params() * BF16))
}

/// Full-parameter pretraining of a preset.
pub fn pretrain(d: &ModelDims, p: &PretrainStage) -> StagePlan {
    let params = d.total_params();
    let (b, s) = (u64::from(p.batch_size), u64::from(p.sequence_length));
    StagePlan::new(
        "pretrain",
        vec![
            base_part(d, WeightStorage::F32),
            part("gradients (f32)", params * F32),
            part("adamw states (2 x f32)", 2 * params * F32),
            part("activations (f32)", training_activation_bytes(d, b, s, None, false, F32)),
            part("logits (f32)", training_logits_bytes(d, b * s)),
        ],
    )
}

/// The parts every QLoRA training step holds for `sequences` sequences of `seq` tokens.
fn qlora_parts(
    d: &ModelDims,
    sft: &SftStage,
    adapters: u64,
    trainable: u64,
    sequences: u64,
    checkpointing: bool,
) -> Vec<(String, u64)> {
    let storage = WeightStorage::training(&sft.quantization);
    let lora = LoraShape::from(&sft.lora);
    let seq = u64::from(sft.max_sequence_length);
    let act = training_activation_bytes(d, sequences, seq, Some(&lora), checkpointing, BF16);
    let ckpt = if checkpointing { "checkpointed" } else { "no checkpointing" };
    let mut parts = vec![base_part(d, storage), part("lora adapters (f32)", adapters * F32)];
    parts.push(part("gradients (f32)", trainable * F32));
    parts.push(part("adamw states (2 x f32)", 2 * trainable * F32));
    parts.extend(dequant_part(d, storage));
    parts.push(part(format!("activations ({sequences} x {seq}, {ckpt})"), act));
    parts.push(part("logits (f32)", training_logits_bytes(d, sequences * seq)));
    parts
}

/// What the stage would need with the other checkpointing choice (`other` are its parts then),
/// as a note for the table: the activations and the total.
fn checkpointing_note(stage: &str, other: Vec<(String, u64)>, checkpointing: bool) -> String {
    let alt = StagePlan::new(stage, other);
    let act = alt.part("activations").unwrap_or(0);
    let what = if checkpointing { "without gradient checkpointing" } else { "with gradient checkpointing" };
    format!("{what}: activations {}, total {}", gib(act), gib(alt.device_bytes))
}

/// QLoRA supervised fine-tuning.
pub fn sft(d: &ModelDims, s: &SftStage) -> StagePlan {
    let lora = lora_params(d, &LoraShape::from(&s.lora));
    let b = u64::from(s.batch_size);
    let ckpt = s.gradient_checkpointing;
    let mut plan = StagePlan::new("sft", qlora_parts(d, s, lora, lora, b, ckpt));
    plan.notes.push(checkpointing_note("sft", qlora_parts(d, s, lora, lora, b, !ckpt), ckpt));
    plan
}

/// Reinforcement learning after SFT (PPO, GRPO or DPO).
pub fn rl(d: &ModelDims, s: &SftStage, p: &PpoStage) -> StagePlan {
    let lora = lora_params(d, &LoraShape::from(&s.lora));
    // The value head is one linear layer `hidden -> 1`.
    let value_head = if p.algorithm == RlAlgorithm::Ppo { d.hidden + 1 } else { 0 };
    let (batch, mini) = (u64::from(p.batch_size), u64::from(p.mini_batch_size));
    let (rollouts, trained) = match p.algorithm {
        RlAlgorithm::Ppo => (batch, mini),
        RlAlgorithm::Grpo => (batch * GRPO_GROUP_SIZE, mini * GRPO_GROUP_SIZE),
        RlAlgorithm::Dpo => (0, 2 * mini),
    };
    let seq = u64::from(s.max_sequence_length);
    let build = |ckpt: bool| {
        let mut parts = qlora_parts(d, s, 2 * lora + value_head, lora + value_head, trained, ckpt);
        if rollouts > 0 {
            parts.push(part(
                format!("rollout kv cache ({rollouts} x {seq})"),
                kv_cache_bytes(d, rollouts, seq),
            ));
        }
        parts
    };
    let ckpt = s.gradient_checkpointing;
    let mut plan = StagePlan::new("ppo", build(ckpt));
    plan.notes.push(checkpointing_note("ppo", build(!ckpt), ckpt));
    plan
}

/// Decoding `sequences` sequences of up to `context` tokens with the weights in `storage`.
pub fn decode(stage: &str, d: &ModelDims, storage: WeightStorage, sequences: u64, context: u64) -> StagePlan {
    let mut parts = vec![base_part(d, storage)];
    parts.extend(dequant_part(d, storage));
    parts.push(part(format!("kv cache ({sequences} x {context})"), kv_cache_bytes(d, sequences, context)));
    parts.push(part(
        format!("prefill activations ({sequences} x {context})"),
        inference_activation_bytes(d, sequences * context, context, BF16),
    ));
    StagePlan::new(stage, parts)
}

/// The model dimensions of a run: its preset, or the preset named by
/// `baseModel.architecture` for a Hugging Face base. `None`: not known without reading the
/// checkpoint, so the run is not planned.
pub fn run_dims(spec: &TrainingRunSpec) -> Option<ModelDims> {
    spec.base_model.preset.or(spec.base_model.architecture).map(ModelDims::preset)
}

/// The plan of a TrainingRun: every stage that loads the model (data-prep does not).
pub fn training_run(spec: &TrainingRunSpec, d: &ModelDims) -> Plan {
    let st = &spec.stages;
    let mut stages = Vec::new();
    for stage in spec.planned_stages() {
        use crate::training_run::StageName as S;
        match stage {
            S::DataPrep => {}
            S::Pretrain => stages.push(pretrain(d, &st.pretrain)),
            S::Sft => stages.push(sft(d, &st.sft)),
            S::Ppo => stages.push(rl(d, &st.sft, &st.ppo)),
            S::Evaluation => stages.push(decode(
                "evaluation",
                d,
                WeightStorage::serving(Precision::Int8),
                1,
                u64::from(st.sft.max_sequence_length) + EVAL_ANSWER_TOKENS,
            )),
        }
    }
    Plan { stages }
}

/// The plan of a RoutingEndpoint whose pods run `workers` model threads, on a GPU or not.
pub fn endpoint(spec: &RoutingEndpointSpec, d: &ModelDims, on_gpu: bool, workers: u32) -> Plan {
    let default = if on_gpu { GPU_DEFAULT_MAX_BATCH } else { 1 };
    let batch = spec.batching.max_batch.map(u64::from).unwrap_or(default);
    let sequences = batch * u64::from(workers.max(1));
    let storage = WeightStorage::serving(spec.precision);
    Plan { stages: vec![decode("serve", d, storage, sequences, SERVE_CONTEXT_TOKENS)] }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::GIB;
    use crate::training_run::ModelPreset;

    /// One "80 GB" GPU in the strict reading: 80 x 10^9 bytes = 74.5 GiB (an H100 80GB reports
    /// 81559 MiB = 79.6 GiB, an A100 80GB 80.0 GiB: both larger).
    const GPU_80GB: u64 = 80_000_000_000;

    fn mixtral() -> ModelDims {
        ModelDims::preset(ModelPreset::Mixtral8x7b)
    }

    /// The Mixtral-8x7B example's settings: Hugging Face base, seed defaults (LoRA r16 on q, k, v,
    /// o with dropout 0.05, NF4 block 64 with double quantization, micro-batch 2, checkpointing).
    fn mixtral_run(seq: u32, checkpointing: bool) -> TrainingRunSpec {
        let yaml = format!(
            "baseModel: {{huggingFace: {{claimName: models, path: m}}, architecture: mixtral-8x7b}}\n\
             stages: {{sft: {{maxSequenceLength: {seq}, gradientCheckpointing: {checkpointing}}}}}\n\
             storage: {{claimName: a}}\n"
        );
        serde_yaml::from_str(&yaml).unwrap()
    }

    // The parts every Mixtral-8x7B QLoRA stage shares, hand-computed:
    // - base weights, NF4: 23,956,622,848 (linear) + 526,917,632 (bf16) = 24,483,540,480
    //   (22.8 GiB; see weights.rs for the per-tensor arithmetic);
    // - LoRA r16 on q, k, v, o: 13,631,488 params x 4 = 54,525,952; gradients the same; AdamW
    //   2 x 54,525,952 = 109,051,904;
    // - one layer dequantized to bf16: (41,943,040 + 1,409,286,144) x 2 = 2,902,458,368 (2.7 GiB).
    const NF4_WEIGHTS: u64 = 24_483_540_480;
    const LORA_F32: u64 = 54_525_952;
    const DEQUANT: u64 = 2_902_458_368;

    fn assert_shared_qlora_parts(s: &StagePlan) {
        assert_eq!(s.part("base weights (nf4)"), Some(NF4_WEIGHTS));
        assert_eq!(s.part("lora adapters"), Some(LORA_F32));
        assert_eq!(s.part("gradients"), Some(LORA_F32));
        assert_eq!(s.part("adamw"), Some(2 * LORA_F32));
        assert_eq!(s.part("dequantized layer"), Some(DEQUANT));
    }

    #[test]
    fn qlora_sft_of_mixtral_at_512_fits_one_80gb_gpu() {
        let spec = mixtral_run(512, true);
        let plan = training_run(&spec, &run_dims(&spec).unwrap());
        let names: Vec<&str> = plan.stages.iter().map(|s| s.stage.as_str()).collect();
        assert_eq!(names, ["sft", "ppo", "evaluation"], "no pretrain for a Hugging Face base");
        let s = plan.stage("sft").unwrap();
        assert_shared_qlora_parts(s);
        // Logits: 2 x 512 tokens x 32000 x 4 bytes x 2 (logits + gradient) = 262,144,000.
        assert_eq!(s.part("logits"), Some(262_144_000));
        // Activations, 2 x 512 tokens, bf16: layer inputs 32 x 4096 x 1024 x 2 = 268,435,456,
        // plus one layer twice, 2 x 182,352 x 1024 x 2 = 746,913,792: 1,015,349,248 (0.95 GiB).
        // Korthikanti et al.'s per-layer estimate for a dense layer with recomputation keeps
        // 2 x s x b x h bytes per layer (268 MB here) plus one layer in full: the same order.
        let act = s.part("activations (2 x 512, checkpointed)").unwrap();
        assert!((GIB / 2..2 * GIB).contains(&act), "{act}");
        // Named parts 28,881,595,904 + overhead 1 GiB + 5 % (2,517,821,619) = 31,399,417,523 (29.2 GiB).
        assert_eq!(s.device_bytes, 31_399_417_523);
        assert!(plan.fits(GPU_80GB), "{plan}");
    }

    #[test]
    fn qlora_sft_of_mixtral_at_2048_fits_only_with_checkpointing() {
        let spec = mixtral_run(2048, true);
        let d = run_dims(&spec).unwrap();
        let s = sft(&d, &spec.stages.sft);
        assert_shared_qlora_parts(&s);
        // Logits: 4096 tokens x 32000 x 4 x 2 = 1,048,576,000.
        assert_eq!(s.part("logits"), Some(1_048_576_000));
        // Checkpointed: inputs 32 x 4096 x 4096 x 2 = 1,073,741,824; one layer at 2048 keeps
        // 231,504 elements per token (the attention probabilities grow with the sequence),
        // 231,504 x 4096 x 2 = 1,896,480,768, twice: 4,866,703,360 (4.5 GiB).
        let act = s.part("activations").unwrap();
        assert!((3 * GIB..6 * GIB).contains(&act), "{act}");
        // Exactly 4,866,703,360 by the counting model (checked here so a change is seen).
        assert_eq!(act, 4_866_703_360);
        // In all 36,269,092,940 bytes (33.8 GiB): well inside 74.5 GiB.
        assert_eq!(s.device_bytes, 36_269_092_940);
        assert!(s.device_bytes <= GPU_80GB);
        // Without checkpointing all 32 layers keep their activations (+1 for the backward):
        // 33 x 1,896,480,768 = 62,583,865,344 (58.3 GiB): about 90 GiB in all, no 80 GB GPU.
        let off = sft(&d, &mixtral_run(2048, false).stages.sft);
        let act = off.part("activations").unwrap();
        assert!((50 * GIB..65 * GIB).contains(&act), "{act}");
        assert!(off.device_bytes > GPU_80GB);
        assert!(s.notes[0].starts_with("without gradient checkpointing: activations 58."), "{:?}", s.notes);
    }

    #[test]
    fn int8_serving_of_mixtral_fits_80gb_and_bf16_does_not() {
        let d = mixtral();
        let rep = |precision: &str| -> RoutingEndpointSpec {
            serde_yaml::from_str(&format!(
                "model: {{latestPassing: {{lineage: l}}}}\nprecision: {precision}\narchitecture: mixtral-8x7b\n"
            ))
            .unwrap()
        };
        // On a GPU with maxBatch unset: 8 sequences of 2048 tokens, one model thread.
        let int8 = endpoint(&rep("int8"), &d, true, 1);
        let s = &int8.stages[0];
        // int8 weights: 46,474,199,040 + 526,917,632 = 47,001,116,672 (43.8 GiB).
        assert_eq!(s.part("base weights (int8)"), Some(47_001_116_672));
        assert_eq!(s.part("dequantized layer"), Some(DEQUANT));
        // KV cache: 8 x 2048 tokens x 131,072 bytes = 2 GiB exactly.
        assert_eq!(s.part("kv cache (8 x 2048)"), Some(2 * GIB));
        // Prefill of 16,384 tokens: one layer's 215,056 elements per token at 2048 in bf16
        // (7,046,955,008) + f32 logits 16,384 x 32000 x 4 (2,097,152,000) = 9,144,107,008
        // (8.5 GiB). Between 6 and 10 GiB: the attention probabilities alone are 8 x 32 x 2048^2
        // x 2 bytes = 2 GiB and the routed experts' intermediates 16,384 x 2 x 4 x 14336 x 2 =
        // 3.5 GiB; a prefill cannot need less than those.
        let pre = s.part("prefill activations").unwrap();
        assert!((6 * GIB..10 * GIB).contains(&pre), "{pre}");
        assert_eq!(pre, 9_144_107_008);
        // Named 61,195,165,696 + overhead 1 GiB + 5 % = 65,328,665,804 (60.8 GiB).
        assert_eq!(s.device_bytes, 65_328_665_804);
        assert!(int8.fits(GPU_80GB), "{int8}");

        // bf16: 46,702,792,704 x 2 = 93,405,585,408 bytes of weights alone exceed 80 GB.
        let bf16 = endpoint(&rep("bf16"), &d, true, 1);
        assert_eq!(bf16.stages[0].part("base weights (bf16)"), Some(93_405_585_408));
        assert_eq!(bf16.stages[0].part("dequantized layer"), None, "bf16 is used as stored");
        assert!(!bf16.fits(GPU_80GB));
        assert!(!bf16.fits(81559 << 20), "not on an H100 80GB either");
        assert_eq!(bf16.misfits(GPU_80GB)[0].stage, "serve");
        assert!(int8.misfits(GPU_80GB).is_empty());

        // NF4 ("int4"): the QLoRA base, 24,483,540,480 bytes.
        let nf4 = endpoint(&rep("int4"), &d, true, 1);
        assert_eq!(nf4.stages[0].part("base weights (nf4)"), Some(NF4_WEIGHTS));
        assert!(nf4.stages[0].device_bytes < int8.stages[0].device_bytes);
    }

    #[test]
    fn serving_batch_defaults_to_one_on_a_cpu_and_multiplies_by_model_threads() {
        let spec: RoutingEndpointSpec =
            serde_yaml::from_str("model: {latestPassing: {lineage: l}}\n").unwrap();
        let d = ModelDims::preset(ModelPreset::Tiny);
        let cpu = endpoint(&spec, &d, false, 2);
        assert!(cpu.stages[0].part("kv cache (2 x 2048)").is_some(), "{cpu}");
        let gpu = endpoint(&spec, &d, true, 1);
        assert!(gpu.stages[0].part("kv cache (8 x 2048)").is_some(), "{gpu}");
    }

    #[test]
    fn a_preset_run_plans_full_parameter_pretraining_at_16_bytes_per_parameter() {
        let spec: TrainingRunSpec =
            serde_yaml::from_str("baseModel: {preset: mixtral-8x7b}\nstorage: {claimName: a}\n").unwrap();
        let plan = training_run(&spec, &run_dims(&spec).unwrap());
        let p = plan.stage("pretrain").unwrap();
        let params = 46_702_792_704u64;
        assert_eq!(p.part("base weights (f32)"), Some(4 * params));
        assert_eq!(p.part("gradients"), Some(4 * params));
        assert_eq!(p.part("adamw"), Some(8 * params));
        assert!(!plan.fits(GPU_80GB), "747 GB of training state");
        let hf: TrainingRunSpec =
            serde_yaml::from_str("baseModel: {huggingFace: {path: /m}}\nstorage: {claimName: a}\n").unwrap();
        assert_eq!(run_dims(&hf), None, "an undeclared Hugging Face base is not planned");
    }

    #[test]
    fn rl_adds_the_reference_adapter_and_the_rollout_cache() {
        let mut spec = mixtral_run(512, true);
        let d = mixtral();
        let ppo = rl(&d, &spec.stages.sft, &spec.stages.ppo);
        // Policy + reference adapters: 2 x 54,525,952; PPO's value head 4097 params x 4 more.
        assert_eq!(ppo.part("lora adapters"), Some(2 * LORA_F32 + 4097 * 4));
        assert_eq!(ppo.part("gradients"), Some(LORA_F32 + 4097 * 4));
        // 8 rollouts of 512 tokens x 131,072 bytes = 536,870,912.
        assert_eq!(ppo.part("rollout kv cache (8 x 512)"), Some(512 << 20));
        spec.stages.ppo.algorithm = RlAlgorithm::Grpo;
        let grpo = rl(&d, &spec.stages.sft, &spec.stages.ppo);
        assert_eq!(grpo.part("rollout kv cache (64 x 512)"), Some(4 << 30));
        assert!(grpo.part("activations (16 x 512").is_some(), "{:?}", grpo.parts);
        spec.stages.ppo.algorithm = RlAlgorithm::Dpo;
        let dpo = rl(&d, &spec.stages.sft, &spec.stages.ppo);
        assert_eq!(dpo.part("rollout kv cache"), None);
        assert!(dpo.part("activations (4 x 512").is_some(), "{:?}", dpo.parts);
    }

    #[test]
    fn the_table_prints_every_part_in_gib_with_one_decimal() {
        let spec = mixtral_run(512, true);
        let text = training_run(&spec, &mixtral()).to_string();
        assert!(text.starts_with("stage"), "{text}");
        assert!(text.contains("base weights (nf4)"), "{text}");
        assert!(text.lines().any(|l| l.starts_with("sft ") && l.trim_end().ends_with("22.8")), "{text}");
        assert!(text.contains("total on the device"), "{text}");
        assert!(text.contains("note: without gradient checkpointing"), "{text}");
        // One total line per stage.
        assert_eq!(text.matches("total on the device").count(), 3);
    }
}
