//! `TrainingRun`: data-prep -> (pretrain) -> SFT -> PPO -> evaluation, one worker Job per stage.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{ArtifactStorage, Gates, KeyRef, PodSettings};

/// A training run: prepares data, fine-tunes a Mixtral-architecture model with QLoRA, improves it
/// with PPO on a verifiable reward and evaluates it against gates.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "sapllm.io",
    version = "v1alpha1",
    kind = "TrainingRun",
    namespaced,
    status = "TrainingRunStatus",
    shortname = "sltr",
    category = "sapllm",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Stage","type":"string","jsonPath":".status.currentStage"}"#,
    printcolumn = r#"{"name":"Progress","type":"string","jsonPath":".status.progress.summary"}"#,
    printcolumn = r#"{"name":"Loss","type":"number","jsonPath":".status.progress.loss","priority":1}"#,
    printcolumn = r#"{"name":"ETA","type":"string","jsonPath":".status.progress.eta","priority":1}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".status.artifacts.modelVersion","priority":1}"#,
    printcolumn = r#"{"name":"Verdict","type":"string","jsonPath":".status.verdict"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TrainingRunSpec {
    /// The base model to fine-tune.
    pub base_model: BaseModelSource,
    /// Where the training cases come from.
    #[serde(default)]
    pub data: DataSource,
    /// Settings of each stage.
    #[serde(default)]
    pub stages: Stages,
    /// Settings of the worker pods that run the stages.
    #[serde(default)]
    pub worker: PodSettings,
    /// The PersistentVolumeClaim that holds datasets, checkpoints, adapters and reports.
    pub storage: ArtifactStorage,
    /// Suspends the run: no new stage Job starts and running ones are suspended; resume by
    /// setting it back to false (stages resume from their last checkpoint).
    #[serde(default)]
    pub suspend: bool,
    /// Kueue LocalQueue: stage Jobs are created suspended with `kueue.x-k8s.io/queue-name` and
    /// Kueue admits them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_name: Option<String>,
    /// A RoutingEndpoint (same namespace) whose `latestPassing` lineage this run feeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// The base model: a built-in preset or a Hugging Face model directory. Exactly one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.preset) != has(self.huggingFace)").message("set exactly one of baseModel.preset and baseModel.huggingFace"))]
pub struct BaseModelSource {
    /// A built-in architecture trained from scratch by the pretrain stage: `tiny` (a few million
    /// parameters, CPU), `small` (~200M) or `mixtral-8x7b` (the real dimensions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<ModelPreset>,
    /// A Hugging Face model directory (config.json, safetensors shards, tokenizer.json).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugging_face: Option<VolumePath>,
    /// The dimensions of a Hugging Face base, named by the preset that has them (e.g.
    /// `mixtral-8x7b` for Mixtral-8x7B and its Instruct variant). Only the memory plan reads it:
    /// the operator does not read the checkpoint, so without it a Hugging Face base is not
    /// planned and never refused for GPU memory. Ignored with `preset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<ModelPreset>,
}

/// Built-in model presets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ModelPreset {
    /// A few million parameters: CPU tests and the embedded default.
    Tiny,
    /// About 200M parameters.
    Small,
    /// Mixtral-8x7B dimensions (46.7B parameters).
    #[serde(rename = "mixtral-8x7b")]
    Mixtral8x7b,
}

impl ModelPreset {
    /// The preset's name as the worker takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelPreset::Tiny => "tiny",
            ModelPreset::Small => "small",
            ModelPreset::Mixtral8x7b => "mixtral-8x7b",
        }
    }
}

/// A path, either inside a PersistentVolumeClaim (mounted by the operator) or on the worker's
/// filesystem (local runs, or baked into the image).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumePath {
    /// PersistentVolumeClaim holding the path; absent means a path in the worker's filesystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_name: Option<String>,
    /// Path inside the claim (or absolute path when no claim is given).
    #[x_kube(validation = kube::core::Rule::new("self.size() > 0").message("path must not be empty"))]
    pub path: String,
}

/// Where the training cases come from. Exactly one of `synthetic` and `transactionLogs`; when
/// neither is given the synthetic generator runs with its defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!(has(self.synthetic) && has(self.transactionLogs))").message("set at most one of data.synthetic and data.transactionLogs"))]
pub struct DataSource {
    /// The seeded synthetic generator of SAP transaction logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthetic: Option<SyntheticData>,
    /// Real transaction logs as JSONL (document_id, document_type, extracted_data,
    /// routed_endpoint, sap_payload, success, feedback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_logs: Option<VolumePath>,
    /// The SAP API catalog the router chooses from.
    #[serde(default)]
    pub catalog: CatalogSource,
}

/// Settings of the synthetic transaction-log generator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyntheticData {
    /// Relative weight of each document type (e.g. `purchase_order: 3`); absent types get 1.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub document_mix: BTreeMap<String, f64>,
    /// Share of logged calls that SAP rejected, in [0, 1].
    #[serde(default = "default_error_rate")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub error_rate: f64,
    /// Share of ambiguous documents (invoice without PO reference, credit memo vs invoice,
    /// incomplete documents), in [0, 1].
    #[serde(default = "default_ambiguous_rate")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub ambiguous_rate: f64,
}

fn default_error_rate() -> f64 {
    0.1
}
fn default_ambiguous_rate() -> f64 {
    0.15
}

impl Default for SyntheticData {
    fn default() -> Self {
        SyntheticData {
            document_mix: BTreeMap::new(),
            error_rate: default_error_rate(),
            ambiguous_rate: default_ambiguous_rate(),
        }
    }
}

/// The SAP API catalog: the built-in one, or one imported with `sapllm-worker catalog import`
/// and stored in a ConfigMap.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CatalogSource {
    /// ConfigMap key holding a catalog JSON file; absent means the built-in catalog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<KeyRef>,
}

/// Stage settings. Defaults reproduce the seed's numbers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Stages {
    /// Data preparation.
    #[serde(default)]
    pub data_prep: DataPrepStage,
    /// Causal-LM pretraining of a from-scratch preset (skipped for Hugging Face bases).
    #[serde(default)]
    pub pretrain: PretrainStage,
    /// QLoRA supervised fine-tuning.
    #[serde(default)]
    pub sft: SftStage,
    /// Reinforcement learning on the verifiable reward.
    #[serde(default)]
    pub ppo: PpoStage,
    /// Evaluation against the gates.
    #[serde(default)]
    pub evaluation: EvaluationStage,
}

/// Retry limit and deadline shared by every stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageControl {
    /// How many times a failed stage is retried (each retry resumes from the last checkpoint).
    #[serde(default = "default_retry_limit")]
    #[schemars(range(min = 0, max = 100))]
    pub retry_limit: u32,
    /// Deadline of one attempt in seconds (the Job's activeDeadlineSeconds); none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub deadline_seconds: Option<i64>,
}

fn default_retry_limit() -> u32 {
    2
}

impl Default for StageControl {
    fn default() -> Self {
        StageControl { retry_limit: default_retry_limit(), deadline_seconds: None }
    }
}

/// Data-prep settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataPrepStage {
    /// Number of examples to generate (synthetic) or the maximum to read (logs).
    #[serde(default = "default_examples")]
    #[schemars(range(min = 10))]
    pub examples: u64,
    /// Seed of the generator and of the split.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Split fractions.
    #[serde(default)]
    pub splits: Splits,
    /// How many similar past cases each example carries.
    #[serde(default = "default_similar_cases")]
    #[schemars(range(min = 0, max = 20))]
    pub similar_cases: u32,
    /// Skip malformed log lines (counted in the dataset card) instead of failing.
    #[serde(default)]
    pub skip_invalid: bool,
    /// Retry limit and deadline.
    #[serde(default, flatten)]
    pub control: StageControl,
}

fn default_examples() -> u64 {
    20_000
}
fn default_seed() -> u64 {
    42
}
fn default_similar_cases() -> u32 {
    3
}

impl Default for DataPrepStage {
    fn default() -> Self {
        DataPrepStage {
            examples: default_examples(),
            seed: default_seed(),
            splits: Splits::default(),
            similar_cases: default_similar_cases(),
            skip_invalid: false,
            control: StageControl::default(),
        }
    }
}

/// Train/validation/test fractions; they must add up to 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.train + self.validation + self.test > 0.999 && self.train + self.validation + self.test < 1.001").message("splits.train + splits.validation + splits.test must equal 1"))]
pub struct Splits {
    /// Fraction of documents in the training split.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub train: f64,
    /// Fraction in the validation split.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub validation: f64,
    /// Fraction in the test split.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub test: f64,
}

impl Default for Splits {
    fn default() -> Self {
        Splits { train: 0.8, validation: 0.1, test: 0.1 }
    }
}

/// Pretraining of a from-scratch preset (full parameters, causal LM on the prepared corpus).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PretrainStage {
    /// Optimizer steps.
    #[serde(default = "default_pretrain_steps")]
    #[schemars(range(min = 1))]
    pub steps: u64,
    /// Peak learning rate.
    #[serde(default = "default_pretrain_lr")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub learning_rate: f64,
    /// Sequences per step.
    #[serde(default = "default_pretrain_batch")]
    #[schemars(range(min = 1))]
    pub batch_size: u32,
    /// Tokens per sequence.
    #[serde(default = "default_seq_len")]
    #[schemars(range(min = 16, max = 32768))]
    pub sequence_length: u32,
    /// Save a checkpoint every this many steps.
    #[serde(default = "default_checkpoint_interval")]
    #[schemars(range(min = 1))]
    pub checkpoint_interval: u64,
    /// Retry limit and deadline.
    #[serde(default, flatten)]
    pub control: StageControl,
}

fn default_pretrain_steps() -> u64 {
    2000
}
fn default_pretrain_lr() -> f64 {
    1e-3
}
fn default_pretrain_batch() -> u32 {
    8
}
fn default_seq_len() -> u32 {
    512
}

impl Default for PretrainStage {
    fn default() -> Self {
        PretrainStage {
            steps: default_pretrain_steps(),
            learning_rate: default_pretrain_lr(),
            batch_size: default_pretrain_batch(),
            sequence_length: default_seq_len(),
            checkpoint_interval: default_checkpoint_interval(),
            control: StageControl::default(),
        }
    }
}

/// QLoRA supervised fine-tuning settings (defaults: the seed's LoRA 16/32, lr 2e-5,
/// batch 2 x accumulation 8, 3 epochs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SftStage {
    /// Passes over the training split.
    #[serde(default = "default_epochs")]
    #[schemars(range(min = 1, max = 1000))]
    pub epochs: u32,
    /// Peak learning rate (AdamW, warm-up then cosine decay).
    #[serde(default = "default_sft_lr")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub learning_rate: f64,
    /// Examples per micro-batch.
    #[serde(default = "default_sft_batch")]
    #[schemars(range(min = 1, max = 4096))]
    pub batch_size: u32,
    /// Micro-batches per optimizer step.
    #[serde(default = "default_grad_accum")]
    #[schemars(range(min = 1, max = 4096))]
    pub gradient_accumulation: u32,
    /// Stop after this many optimizer steps, whatever the epochs say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_steps: Option<u64>,
    /// Fraction of steps spent warming up the learning rate.
    #[serde(default = "default_warmup")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub warmup_ratio: f64,
    /// AdamW weight decay.
    #[serde(default = "default_weight_decay")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub weight_decay: f64,
    /// Maximum global gradient norm (clipping).
    #[serde(default = "default_grad_clip")]
    #[schemars(range(min = 0.0))]
    pub max_grad_norm: f64,
    /// Maximum tokens per example (longer prompts are truncated from the similar cases first).
    #[serde(default = "default_seq_len")]
    #[schemars(range(min = 16, max = 32768))]
    pub max_sequence_length: u32,
    /// LoRA adapter settings.
    #[serde(default)]
    pub lora: LoraSettings,
    /// Quantization of the frozen base weights.
    #[serde(default)]
    pub quantization: QuantizationSettings,
    /// Recompute each decoder layer in backward instead of keeping its activations.
    #[serde(default = "default_true")]
    pub gradient_checkpointing: bool,
    /// Show each candidate API's field schema in the prompt (default). Turn off for small presets
    /// trained from scratch whose context cannot hold them: candidates are then listed by name
    /// and the decoder's grammar still enforces the chosen API's schema. Evaluation and serving
    /// render prompts the same way (the setting is saved with the adapter).
    #[serde(default = "default_true")]
    pub candidate_schemas: bool,
    /// Layout of the adapters the run saves, SFT's and PPO's (PPO continues with the SFT
    /// stage's settings): `per-expert` (the default: one module per expert, as Hub adapters,
    /// transformers 4 and PEFT < 0.18 have them) or `fused`, the fused-expert layout
    /// (`target_parameters` on `mlp.experts.gate_up_proj`) that transformers 5 with PEFT >= 0.18
    /// loads; choose it when the adapter is used there. sapllm itself (PPO, evaluation, serving)
    /// loads both; checkpoints stay per-expert.
    // Not serialized at its default, so runs that leave it out (or write the default) keep their
    // settings digests; `fused` changes those of SFT and every stage after it.
    #[serde(default, skip_serializing_if = "AdapterLayout::is_per_expert")]
    pub adapter_layout: AdapterLayout,
    /// Save a resumable checkpoint every this many optimizer steps.
    #[serde(default = "default_checkpoint_interval")]
    #[schemars(range(min = 1))]
    pub checkpoint_interval: u64,
    /// Retry limit and deadline.
    #[serde(default, flatten)]
    pub control: StageControl,
}

fn default_epochs() -> u32 {
    3
}
fn default_sft_lr() -> f64 {
    2e-5
}
fn default_sft_batch() -> u32 {
    2
}
fn default_grad_accum() -> u32 {
    8
}
fn default_warmup() -> f64 {
    0.03
}
fn default_weight_decay() -> f64 {
    0.01
}
fn default_grad_clip() -> f64 {
    1.0
}
fn default_checkpoint_interval() -> u64 {
    100
}
fn default_true() -> bool {
    true
}

impl Default for SftStage {
    fn default() -> Self {
        SftStage {
            epochs: default_epochs(),
            learning_rate: default_sft_lr(),
            batch_size: default_sft_batch(),
            gradient_accumulation: default_grad_accum(),
            max_steps: None,
            warmup_ratio: default_warmup(),
            weight_decay: default_weight_decay(),
            max_grad_norm: default_grad_clip(),
            max_sequence_length: default_seq_len(),
            lora: LoraSettings::default(),
            quantization: QuantizationSettings::default(),
            gradient_checkpointing: true,
            candidate_schemas: true,
            adapter_layout: AdapterLayout::PerExpert,
            checkpoint_interval: default_checkpoint_interval(),
            control: StageControl::default(),
        }
    }
}

/// How a saved LoRA adapter lays out the expert weights (the worker's `--adapter-layout`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AdapterLayout {
    /// One adapter per expert matrix (`block_sparse_moe.experts.N.w1`): Hub adapters,
    /// transformers 4, PEFT < 0.18.
    #[default]
    PerExpert,
    /// transformers 5 + PEFT >= 0.18: each layer's experts fused into `mlp.experts.gate_up_proj`
    /// and `down_proj`, adapted through `target_parameters`.
    Fused,
}

impl AdapterLayout {
    /// The layout's name as the worker's `--adapter-layout` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            AdapterLayout::PerExpert => "per-expert",
            AdapterLayout::Fused => "fused",
        }
    }

    /// Whether this is the default layout (which the spec does not serialize).
    pub fn is_per_expert(&self) -> bool {
        *self == AdapterLayout::PerExpert
    }
}

/// LoRA adapter settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoraSettings {
    /// Rank of the adapter matrices.
    #[serde(default = "default_lora_r")]
    #[x_kube(validation = kube::core::Rule::new("self >= 1 && self <= 256").message("lora.r must be in 1..256"))]
    pub r: u32,
    /// Scaling numerator: the adapter branch is scaled by alpha / r.
    #[serde(default = "default_lora_alpha")]
    #[schemars(range(min = 0.0))]
    pub alpha: f64,
    /// Dropout on the adapter branch input, in [0, 1).
    #[serde(default = "default_lora_dropout")]
    #[x_kube(validation = kube::core::Rule::new("self >= 0.0 && self < 1.0").message("lora.dropout must be in [0, 1)"))]
    pub dropout: f64,
    /// Modules that get an adapter: attention projections, expert matrices and the router.
    #[serde(default = "default_target_modules")]
    #[schemars(length(min = 1, max = 8))]
    pub target_modules: Vec<LoraTarget>,
}

fn default_lora_r() -> u32 {
    16
}
fn default_lora_alpha() -> f64 {
    32.0
}
fn default_lora_dropout() -> f64 {
    0.05
}
fn default_target_modules() -> Vec<LoraTarget> {
    vec![LoraTarget::QProj, LoraTarget::KProj, LoraTarget::VProj, LoraTarget::OProj]
}

/// A module that can carry a LoRA adapter (Hugging Face Mixtral names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LoraTarget {
    /// Attention query projection.
    QProj,
    /// Attention key projection.
    KProj,
    /// Attention value projection.
    VProj,
    /// Attention output projection.
    OProj,
    /// Expert gate projection (SiLU branch).
    W1,
    /// Expert down projection.
    W2,
    /// Expert up projection.
    W3,
    /// The MoE router.
    Gate,
}

impl LoraTarget {
    /// The module name as PEFT's `target_modules` writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            LoraTarget::QProj => "q_proj",
            LoraTarget::KProj => "k_proj",
            LoraTarget::VProj => "v_proj",
            LoraTarget::OProj => "o_proj",
            LoraTarget::W1 => "w1",
            LoraTarget::W2 => "w2",
            LoraTarget::W3 => "w3",
            LoraTarget::Gate => "gate",
        }
    }
}

impl Default for LoraSettings {
    fn default() -> Self {
        LoraSettings {
            r: default_lora_r(),
            alpha: default_lora_alpha(),
            dropout: default_lora_dropout(),
            target_modules: default_target_modules(),
        }
    }
}

/// Quantization of the frozen base during fine-tuning.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuantizationSettings {
    /// Format of the frozen base weights while training.
    #[serde(default, rename = "type")]
    pub type_: WeightFormat,
    /// Quantize the per-block absmax again (8-bit, block 256): 4.127 instead of 4.5 bits/param.
    #[serde(default = "default_true")]
    pub double_quant: bool,
    /// Elements per quantization block.
    #[serde(default = "default_block_size")]
    #[x_kube(validation = kube::core::Rule::new("self in [32, 64, 128, 256, 512, 1024, 2048, 4096]").message("quantization.blockSize must be a power of two in 32..4096"))]
    pub block_size: u32,
}

/// Storage format of frozen base weights during fine-tuning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WeightFormat {
    /// 4-bit NormalFloat (QLoRA).
    #[default]
    Nf4,
    /// 8-bit absmax.
    Int8,
    /// bfloat16.
    Bf16,
    /// float32 (no quantization).
    F32,
}
fn default_block_size() -> u32 {
    64
}

impl Default for QuantizationSettings {
    fn default() -> Self {
        QuantizationSettings {
            type_: WeightFormat::Nf4,
            double_quant: true,
            block_size: default_block_size(),
        }
    }
}

/// Reinforcement learning settings (defaults: the seed's 5000 iterations, lr 1e-6, KL 0.05,
/// batch 8, mini-batch 2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.miniBatchSize <= self.batchSize && self.batchSize % self.miniBatchSize == 0").message("ppo.miniBatchSize must divide ppo.batchSize"))]
pub struct PpoStage {
    /// Run the stage at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The algorithm; see the README for when to pick which.
    #[serde(default)]
    pub algorithm: RlAlgorithm,
    /// Policy-improvement iterations.
    #[serde(default = "default_ppo_iterations")]
    #[schemars(range(min = 1))]
    pub iterations: u64,
    /// Learning rate.
    #[serde(default = "default_ppo_lr")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub learning_rate: f64,
    /// Coefficient of the per-token KL penalty to the reference (the SFT policy).
    #[serde(default = "default_kl")]
    #[schemars(range(min = 0.0))]
    pub kl_penalty: f64,
    /// Problems (documents) per iteration.
    #[serde(default = "default_ppo_batch")]
    #[schemars(range(min = 1))]
    pub batch_size: u32,
    /// Problems per gradient step.
    #[serde(default = "default_ppo_minibatch")]
    #[schemars(range(min = 1))]
    pub mini_batch_size: u32,
    /// Optimisation epochs over each batch of rollouts.
    #[serde(default = "default_ppo_epochs")]
    #[schemars(range(min = 1, max = 100))]
    pub ppo_epochs: u32,
    /// Clip range of the policy ratio.
    #[serde(default = "default_clip")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub clip_range: f64,
    /// Weights of the three reward parts.
    #[serde(default)]
    pub reward_weights: RewardWeights,
    /// Save a resumable checkpoint every this many iterations.
    #[serde(default = "default_checkpoint_interval")]
    #[schemars(range(min = 1))]
    pub checkpoint_interval: u64,
    /// Retry limit and deadline.
    #[serde(default, flatten)]
    pub control: StageControl,
}

/// Policy-improvement algorithm of the RL stage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RlAlgorithm {
    /// PPO with a value head, GAE and a KL penalty to the SFT policy.
    #[default]
    Ppo,
    /// Group-relative policy optimisation: no value head, advantages from sampled groups.
    Grpo,
    /// Direct preference optimisation on preference_pairs.jsonl (offline, no sampling).
    Dpo,
}
fn default_ppo_iterations() -> u64 {
    5000
}
fn default_ppo_lr() -> f64 {
    1e-6
}
fn default_kl() -> f64 {
    0.05
}
fn default_ppo_batch() -> u32 {
    8
}
fn default_ppo_minibatch() -> u32 {
    2
}
fn default_ppo_epochs() -> u32 {
    4
}
fn default_clip() -> f64 {
    0.2
}

impl Default for PpoStage {
    fn default() -> Self {
        PpoStage {
            enabled: true,
            algorithm: RlAlgorithm::Ppo,
            iterations: default_ppo_iterations(),
            learning_rate: default_ppo_lr(),
            kl_penalty: default_kl(),
            batch_size: default_ppo_batch(),
            mini_batch_size: default_ppo_minibatch(),
            ppo_epochs: default_ppo_epochs(),
            clip_range: default_clip(),
            reward_weights: RewardWeights::default(),
            checkpoint_interval: default_checkpoint_interval(),
            control: StageControl::default(),
        }
    }
}

/// Weights of the reward: api x (+1 right endpoint / -1 wrong) + businessRules x (rules
/// satisfied) + confidence x (calibration).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RewardWeights {
    /// Weight of the endpoint-correctness term.
    #[serde(default = "default_w_api")]
    #[schemars(range(min = 0.0))]
    pub api: f64,
    /// Weight of the business-rules term.
    #[serde(default = "default_w_rules")]
    #[schemars(range(min = 0.0))]
    pub business_rules: f64,
    /// Weight of the confidence-calibration term.
    #[serde(default = "default_w_conf")]
    #[schemars(range(min = 0.0))]
    pub confidence: f64,
}

fn default_w_api() -> f64 {
    0.7
}
fn default_w_rules() -> f64 {
    0.2
}
fn default_w_conf() -> f64 {
    0.1
}

impl Default for RewardWeights {
    fn default() -> Self {
        RewardWeights {
            api: default_w_api(),
            business_rules: default_w_rules(),
            confidence: default_w_conf(),
        }
    }
}

/// Evaluation settings of the run's final stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EvaluationStage {
    /// Test examples scored (at most the size of the test split).
    #[serde(default = "default_eval_samples")]
    #[schemars(range(min = 1))]
    pub samples: u64,
    /// Gates the model version must pass.
    #[serde(default)]
    pub gates: Gates,
    /// Decisions below this confidence abstain (route to review) instead of guessing.
    #[serde(default = "default_abstain")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub abstain_threshold: f64,
    /// Retry limit and deadline.
    #[serde(default, flatten)]
    pub control: StageControl,
}

fn default_eval_samples() -> u64 {
    1000
}
pub(crate) fn default_abstain() -> f64 {
    0.5
}

impl Default for EvaluationStage {
    fn default() -> Self {
        EvaluationStage {
            samples: default_eval_samples(),
            gates: Gates::default(),
            abstain_threshold: default_abstain(),
            control: StageControl::default(),
        }
    }
}

/// The stages of a run, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum StageName {
    /// Transaction logs (or the generator) to training examples.
    DataPrep,
    /// Causal-LM pretraining of a from-scratch preset.
    Pretrain,
    /// QLoRA supervised fine-tuning.
    Sft,
    /// Reinforcement learning.
    Ppo,
    /// Scoring against the gates.
    Evaluation,
}

impl StageName {
    /// Every stage in execution order.
    pub const ALL: [StageName; 5] =
        [StageName::DataPrep, StageName::Pretrain, StageName::Sft, StageName::Ppo, StageName::Evaluation];

    /// The worker subcommand (and Job name suffix) of the stage.
    pub fn as_str(self) -> &'static str {
        match self {
            StageName::DataPrep => "data-prep",
            StageName::Pretrain => "pretrain",
            StageName::Sft => "sft",
            StageName::Ppo => "ppo",
            StageName::Evaluation => "evaluation",
        }
    }
}

impl TrainingRunSpec {
    /// The stages this spec runs, in order: pretrain only for a from-scratch preset, PPO only
    /// when enabled.
    pub fn planned_stages(&self) -> Vec<StageName> {
        StageName::ALL
            .into_iter()
            .filter(|s| match s {
                StageName::Pretrain => self.base_model.preset.is_some(),
                StageName::Ppo => self.stages.ppo.enabled,
                _ => true,
            })
            .collect()
    }
}

/// Lifecycle phase of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RunPhase {
    /// Accepted, no stage started yet.
    Pending,
    /// A stage is running.
    Running,
    /// `spec.suspend` is true.
    Suspended,
    /// Every stage completed.
    Succeeded,
    /// A stage failed after its retries.
    Failed,
}

/// Lifecycle phase of one stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum StagePhase {
    /// Not started.
    Pending,
    /// Its Job exists and runs (or waits for admission).
    Running,
    /// Completed.
    Succeeded,
    /// Failed after its retries.
    Failed,
    /// Not part of this run (e.g. pretrain for a Hugging Face base).
    Skipped,
}

/// Observed state of a TrainingRun.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrainingRunStatus {
    /// Lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RunPhase>,
    /// The stage running now (or the one that failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_stage: Option<StageName>,
    /// One entry per planned stage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub stages: Vec<StageStatus>,
    /// Live progress of the running stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// What the run produced so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<Artifacts>,
    /// Name of the Evaluation the run produced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<String>,
    /// Verdict of that Evaluation, copied here for `kubectl get sltr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<crate::common::Verdict>,
    /// Conditions: Running, Succeeded, Failed, Suspended, GatesPassed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Observed state of one stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageStatus {
    /// The stage.
    pub name: StageName,
    /// Its phase.
    pub phase: StagePhase,
    /// The Job of the latest attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// Attempts made so far (1 + retries).
    #[serde(default)]
    pub attempts: u32,
    /// When the first attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the stage completed or finally failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Digest of the stage's settings and inputs; a new generation re-runs the first stage
    /// whose digest changed, and everything after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings_digest: Option<String>,
    /// Human-readable detail: the failure reason and the pod's termination message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Live progress of the running stage, as the worker reports it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Stage the numbers belong to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<StageName>,
    /// Steps done.
    #[serde(default)]
    pub step: u64,
    /// Steps in total.
    #[serde(default)]
    pub total_steps: u64,
    /// Latest training loss (or mean reward for PPO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Training throughput.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_second: Option<f64>,
    /// Estimated time left, e.g. "12m30s".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<String>,
    /// One-line summary for `kubectl get`, e.g. "sft 120/600 (20%)".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// When the worker last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Time>,
}

/// What a run produced, as paths inside the artifact volume.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Artifacts {
    /// Folder of the prepared dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// The base model checkpoint (downloaded or pretrained).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model: Option<String>,
    /// The SFT adapter (PEFT layout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sft_adapter: Option<String>,
    /// The PPO adapter (PEFT layout), when PPO ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ppo_adapter: Option<String>,
    /// Content digest of base + final adapter: the model version ("sha256:...").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
}
