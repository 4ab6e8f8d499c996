//! Running the stages of a TrainingRun on this machine.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use sapllm_crds::contract::{StageResult, stage_dir};
use sapllm_crds::{Artifacts, StageName, TrainingRun, Verdict, WeightFormat};

use super::{manifest, termination, version};
use crate::dataprep::{self, DataPrepConfig, Source, SplitFractions};
use crate::evaluate::{self, EvalConfig};
use crate::pretrain::{self, PretrainConfig};
use crate::progress::ProgressMode;
use crate::train::data::read_jsonl;
use crate::train::sft::{self, SftConfig};
use sapllm_engine::format::{exception_training_pair, routing_training_pair};
use sapllm_engine::profile::PromptProfile;
use sapllm_model::config::Preset;
use sapllm_model::linear::{LoraConfig, Precision};
use sapllm_model::peft::AdapterLayout;
use sapllm_sap::catalog::Catalog;

pub use sapllm_crds::contract::CATALOG_FILE_ENV;
const RESULT_FILE: &str = "stage_result.json";
/// Written when a stage starts: the digest of the settings its (partial) outputs belong to.
const STARTED_FILE: &str = "stage_started.json";
/// Where outputs of settings that are no longer current are moved (one generation per stage).
const SUPERSEDED_DIR: &str = "superseded";

/// A run on this machine: the manifest, where it writes, how it reports.
pub struct RunContext {
    pub run: TrainingRun,
    pub run_dir: PathBuf,
    /// Folder of the manifest: relative paths in it are taken from here.
    pub manifest_dir: PathBuf,
    pub progress: ProgressMode,
}

/// What `run` did.
#[derive(Debug)]
pub struct RunOutcome {
    pub run_dir: PathBuf,
    pub results: Vec<(StageName, StageResult, bool)>,
    pub verdict: Option<Verdict>,
    pub report: Option<PathBuf>,
}

#[derive(Serialize, Deserialize)]
struct Started {
    digest: String,
}

#[derive(Serialize, Deserialize)]
struct Recorded {
    digest: String,
    result: StageResult,
}

impl RunContext {
    /// Builds a context from a manifest file; the run directory defaults to `runs/<name>`.
    pub fn from_manifest(path: &Path, run_dir: Option<PathBuf>, progress: ProgressMode) -> Result<Self> {
        let run = manifest::load(path)?;
        let name = run.metadata.name.clone().context("metadata.name is required")?;
        let run_dir = run_dir.unwrap_or_else(|| PathBuf::from("runs").join(&name));
        let manifest_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(RunContext { run, run_dir, manifest_dir, progress })
    }

    fn dir(&self, stage: StageName) -> PathBuf {
        self.run_dir.join(stage_dir(stage))
    }

    /// The base model folder SFT adapts: the pretrained preset or the Hugging Face directory.
    fn base_model_dir(&self) -> PathBuf {
        match &self.run.spec.base_model.hugging_face {
            Some(hf) => manifest::resolve(hf, &self.manifest_dir),
            None => self.dir(StageName::Pretrain).join("model"),
        }
    }

    /// The adapter evaluation and serving use: PPO's when it ran, else SFT's.
    fn final_adapter(&self) -> PathBuf {
        let ppo = self.dir(StageName::Ppo).join("adapter");
        if self.run.spec.stages.ppo.enabled && ppo.exists() {
            ppo
        } else {
            self.dir(StageName::Sft).join("adapter")
        }
    }

    /// A path as the operator sees it: relative to the artifact volume root (the mount point in a
    /// pod, the run directory's parent in a local run).
    fn rel(&self, p: &Path) -> String {
        let root = if self.run_dir.starts_with(sapllm_crds::contract::ARTIFACTS_MOUNT) {
            Path::new(sapllm_crds::contract::ARTIFACTS_MOUNT)
        } else {
            self.run_dir.parent().unwrap_or(Path::new(""))
        };
        p.strip_prefix(root).unwrap_or(p).display().to_string()
    }

    /// The settings digest of each planned stage (the operator's, so a stage run by a Job and
    /// one run here agree on whether a result is current).
    pub fn digests(&self) -> Vec<(StageName, String)> {
        sapllm_crds::digest::stage_digests(&self.run.spec)
    }

    /// The settings digest the outputs in a stage's folder belong to: its result's, else the
    /// one it started with. `None` for an empty folder or one written before digests existed.
    fn outputs_digest(&self, stage: StageName) -> Option<String> {
        if let Some(r) = self.recorded(stage) {
            return Some(r.digest);
        }
        let bytes = std::fs::read(self.dir(stage).join(STARTED_FILE)).ok()?;
        serde_json::from_slice::<Started>(&bytes).ok().map(|s| s.digest)
    }

    /// Before `stage` runs: moves the outputs of this stage and of every later one that belong
    /// to other settings into `superseded/<stage>-<digest>`. An edited run then trains from
    /// scratch instead of meeting checkpoints of the old settings, and no later stage's stale
    /// adapter is taken for this run's. Outputs of the current settings (a killed stage's
    /// checkpoints) stay where they are, so the stage resumes. Only the last superseded
    /// generation of a stage is kept.
    fn supersede_stale(&self, stage: StageName) -> Result<()> {
        for (s, digest) in self.digests().into_iter().filter(|(s, _)| *s >= stage) {
            let Some(old) = self.outputs_digest(s).filter(|old| *old != digest) else { continue };
            let root = self.run_dir.join(SUPERSEDED_DIR);
            std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
            let prefix = format!("{}-", stage_dir(s));
            for entry in std::fs::read_dir(&root)?.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    std::fs::remove_dir_all(entry.path())
                        .with_context(|| format!("removing {}", entry.path().display()))?;
                }
            }
            let short = old.trim_start_matches("sha256:").chars().take(12).collect::<String>();
            let to = root.join(format!("{prefix}{short}"));
            std::fs::rename(self.dir(s), &to)
                .with_context(|| format!("moving {} to {}", self.dir(s).display(), to.display()))?;
            eprintln!("   {} was written with other settings: moved to {}", stage_dir(s), to.display());
        }
        Ok(())
    }

    fn recorded(&self, stage: StageName) -> Option<Recorded> {
        let bytes = std::fs::read(self.dir(stage).join(RESULT_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn artifacts(&self) -> Artifacts {
        let mut a = Artifacts::default();
        let data = self.dir(StageName::DataPrep);
        if data.join("train_routing_examples.jsonl").exists() {
            a.dataset = Some(self.rel(&data));
        }
        let base = self.base_model_dir();
        if base.join("config.json").exists() {
            a.base_model = Some(self.rel(&base));
        }
        let sft = self.dir(StageName::Sft).join("adapter");
        if sft.exists() {
            a.sft_adapter = Some(self.rel(&sft));
        }
        let ppo = self.dir(StageName::Ppo).join("adapter");
        if ppo.exists() {
            a.ppo_adapter = Some(self.rel(&ppo));
        }
        if base.join("config.json").exists() && self.final_adapter().exists() {
            a.model_version = version::model_version(&[&base, &self.final_adapter()]).ok();
        }
        a
    }
}

/// Runs one stage (skipping it when a result with the same settings digest exists), records
/// its result, and writes the termination message.
pub fn run_stage(ctx: &RunContext, stage: StageName) -> Result<(StageResult, bool)> {
    let digest = ctx
        .digests()
        .into_iter()
        .find(|(s, _)| *s == stage)
        .map(|(_, d)| d)
        .with_context(|| format!("stage {} is not part of this run", stage.as_str()))?;
    if let Some(done) = ctx.recorded(stage).filter(|r| r.digest == digest && r.result.succeeded) {
        termination::write(&done.result);
        return Ok((done.result, true));
    }
    ctx.supersede_stale(stage)?;
    let dir = ctx.dir(stage);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join(STARTED_FILE), serde_json::to_vec(&Started { digest: digest.clone() })?)?;
    let outcome = execute(ctx, stage);
    let result = match outcome {
        Ok(mut r) => {
            r.stage = Some(stage);
            r.artifacts = Some(ctx.artifacts());
            r
        }
        Err(e) => {
            let failed = StageResult {
                stage: Some(stage),
                succeeded: false,
                message: Some(format!("{e:#}")),
                artifacts: Some(ctx.artifacts()),
                ..Default::default()
            };
            termination::write(&failed);
            return Err(e.context(format!("stage {} failed", stage.as_str())));
        }
    };
    let recorded = Recorded { digest, result: result.clone() };
    std::fs::write(dir.join(RESULT_FILE), serde_json::to_vec_pretty(&recorded)?)?;
    termination::write(&result);
    Ok((result, false))
}

/// Runs every planned stage in order.
pub fn run_all(ctx: &RunContext) -> Result<RunOutcome> {
    std::fs::create_dir_all(&ctx.run_dir).with_context(|| format!("creating {}", ctx.run_dir.display()))?;
    let mut results = Vec::new();
    for stage in ctx.run.spec.planned_stages() {
        eprintln!("== {}", stage.as_str());
        let (r, skipped) = run_stage(ctx, stage)?;
        if skipped {
            eprintln!("   already done with the same settings: skipped");
        } else if let Some(m) = &r.message {
            eprintln!("   {m}");
        }
        results.push((stage, r, skipped));
    }
    let eval = results.iter().find(|(s, _, _)| *s == StageName::Evaluation).map(|(_, r, _)| r);
    Ok(RunOutcome {
        run_dir: ctx.run_dir.clone(),
        verdict: eval.and_then(|r| r.verdict),
        report: eval
            .and_then(|r| r.report.as_ref())
            .map(|r| ctx.run_dir.parent().unwrap_or(Path::new("")).join(r)),
        results,
    })
}

fn catalog() -> Result<Catalog> {
    match std::env::var(CATALOG_FILE_ENV) {
        Ok(p) if !p.is_empty() => {
            Catalog::load(Path::new(&p)).with_context(|| format!("loading the catalog {p}"))
        }
        _ => Ok(Catalog::builtin()),
    }
}

fn execute(ctx: &RunContext, stage: StageName) -> Result<StageResult> {
    match stage {
        StageName::DataPrep => data_prep(ctx),
        StageName::Pretrain => pretrain_stage(ctx),
        StageName::Sft => sft_stage(ctx),
        StageName::Ppo => ppo_stage(ctx),
        StageName::Evaluation => evaluation_stage(ctx),
    }
}

fn ok(message: String) -> StageResult {
    StageResult { succeeded: true, message: Some(message), ..Default::default() }
}

fn data_prep(ctx: &RunContext) -> Result<StageResult> {
    let spec = &ctx.run.spec;
    let dp = &spec.stages.data_prep;
    let mut cfg = DataPrepConfig {
        examples: dp.examples as usize,
        seed: dp.seed,
        split: SplitFractions { train: dp.splits.train, val: dp.splits.validation, test: dp.splits.test },
        k_similar: dp.similar_cases as usize,
        skip_invalid: dp.skip_invalid,
        output_dir: ctx.dir(StageName::DataPrep),
        catalog: catalog()?,
        progress: ctx.progress,
        ..DataPrepConfig::default()
    };
    if let Some(logs) = &spec.data.transaction_logs {
        cfg.source = Source::LogFile(manifest::resolve(logs, &ctx.manifest_dir));
    }
    if spec.data.catalog.config_map.is_some() && std::env::var(CATALOG_FILE_ENV).is_err() {
        bail!(
            "spec.data.catalog.configMap is set but {CATALOG_FILE_ENV} names no file: mount the ConfigMap, or run `catalog import` and set {CATALOG_FILE_ENV}"
        );
    }
    if let Some(syn) = &spec.data.synthetic {
        cfg.error_rate = syn.error_rate;
        cfg.ambiguous_rate = syn.ambiguous_rate;
        cfg.doc_mix = syn
            .document_mix
            .iter()
            .map(|(k, w)| {
                k.parse()
                    .map(|t| (t, *w))
                    .map_err(|e| anyhow::anyhow!("spec.data.synthetic.documentMix: {k:?}: {e}"))
            })
            .collect::<Result<_>>()?;
    }
    let card = dataprep::run(&cfg)?;
    Ok(ok(format!(
        "{} routing examples ({:?}), {} exception examples, {} preference pairs",
        card.splits.values().sum::<u64>(),
        card.splits,
        card.exception_examples,
        card.preference_pairs
    )))
}

/// The corpus a from-scratch preset pretrains on: every training example rendered with the
/// shared template, so the base learns the documents, the APIs and the answer format.
fn write_corpus(ctx: &RunContext, path: &Path) -> Result<usize> {
    let data = ctx.dir(StageName::DataPrep);
    let catalog = catalog()?;
    let routing: Vec<dataprep::RoutingExample> = read_jsonl(&data.join("train_routing_examples.jsonl"))?;
    let exceptions: Vec<dataprep::ExceptionExample> = read_jsonl(&data.join("exception_examples.jsonl"))?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut n = 0;
    let profile = prompt_profile(ctx);
    for ex in &routing {
        let (prompt, response) = routing_training_pair(&catalog, ex, &profile)?;
        serde_json::to_writer(&mut out, &serde_json::json!({"prompt": prompt, "response": response}))?;
        out.write_all(b"\n")?;
        n += 1;
    }
    for ex in exceptions.iter().filter(|e| e.split == "train") {
        let (prompt, response) = exception_training_pair(&catalog, ex)?;
        serde_json::to_writer(&mut out, &serde_json::json!({"prompt": prompt, "response": response}))?;
        out.write_all(b"\n")?;
        n += 1;
    }
    out.flush()?;
    Ok(n)
}

fn pretrain_stage(ctx: &RunContext) -> Result<StageResult> {
    let spec = &ctx.run.spec;
    let preset = spec.base_model.preset.context("pretrain runs only for a preset base model")?;
    let preset: Preset =
        preset.as_str().parse().map_err(|e| anyhow::anyhow!("spec.baseModel.preset: {e}"))?;
    let dir = ctx.dir(StageName::Pretrain);
    std::fs::create_dir_all(&dir)?;
    let corpus = dir.join("corpus.jsonl");
    let docs = write_corpus(ctx, &corpus)?;
    let profile = prompt_profile(ctx);
    let p = &spec.stages.pretrain;
    let mut cfg = PretrainConfig::new(corpus, dir.join("model"), preset);
    cfg.steps = p.steps as usize;
    cfg.lr = p.learning_rate;
    cfg.batch_size = p.batch_size as usize;
    cfg.seq_len = p.sequence_length as usize;
    cfg.checkpoint_every = p.checkpoint_interval as usize;
    cfg.warmup_steps = (p.steps as usize / 20).max(1);
    cfg.seed = spec.stages.data_prep.seed;
    cfg.domain_tokens = catalog()?.domain_tokens();
    let report = pretrain::run(&cfg, ctx.progress)?;
    profile.save(&dir.join("model"))?;
    Ok(ok(format!(
        "{} steps on {docs} documents ({} tokens), loss {:.3} -> {:.3}",
        report.steps, report.corpus_tokens, report.first_loss, report.final_loss
    )))
}

/// SFT settings from the manifest (also what the `sft` subcommand builds from flags). The
/// adapter layout, `spec.stages.sft.adapterLayout`, is PPO's too.
pub fn sft_config(ctx: &RunContext) -> SftConfig {
    let s = &ctx.run.spec.stages.sft;
    SftConfig {
        base_model: ctx.base_model_dir(),
        data_dir: ctx.dir(StageName::DataPrep),
        out_dir: ctx.dir(StageName::Sft),
        lora: LoraConfig {
            r: s.lora.r as usize,
            alpha: s.lora.alpha,
            dropout: s.lora.dropout,
            target_modules: s.lora.target_modules.iter().map(|t| t.as_str().to_string()).collect(),
        },
        precision: match s.quantization.type_ {
            WeightFormat::Nf4 => Precision::Nf4,
            WeightFormat::Int8 => Precision::Int8,
            WeightFormat::Bf16 => Precision::Bf16,
            WeightFormat::F32 => Precision::F32,
        },
        epochs: s.epochs as u64,
        learning_rate: s.learning_rate,
        batch_size: s.batch_size as usize,
        gradient_accumulation: s.gradient_accumulation as usize,
        max_steps: s.max_steps,
        warmup_ratio: s.warmup_ratio,
        weight_decay: s.weight_decay,
        max_grad_norm: s.max_grad_norm,
        max_seq_len: s.max_sequence_length as usize,
        gradient_checkpointing: s.gradient_checkpointing,
        checkpoint_interval: s.checkpoint_interval,
        seed: ctx.run.spec.stages.data_prep.seed,
        prompt: prompt_profile(ctx),
        stop_after: None,
        adapter_layout: match s.adapter_layout {
            sapllm_crds::AdapterLayout::PerExpert => AdapterLayout::PerExpert,
            sapllm_crds::AdapterLayout::Fused => AdapterLayout::Fused,
        },
        progress: ctx.progress,
    }
}

/// The prompt profile of the run's models.
pub fn prompt_profile(ctx: &RunContext) -> PromptProfile {
    PromptProfile {
        candidate_schemas: ctx.run.spec.stages.sft.candidate_schemas,
        max_similar_cases: ctx.run.spec.stages.data_prep.similar_cases as usize,
        pre_checks: true,
    }
}

fn sft_stage(ctx: &RunContext) -> Result<StageResult> {
    let s = sft::run(&sft_config(ctx))?;
    Ok(ok(format!(
        "{} steps on {} routing + {} exception examples, loss {:.3} -> {:.3}, {:.0} tokens/s",
        s.steps, s.routing_examples, s.exception_examples, s.first_loss, s.final_loss, s.tokens_per_second
    )))
}

fn ppo_stage(ctx: &RunContext) -> Result<StageResult> {
    let s = crate::rl::run(&crate::driver::rl_stage::config(ctx))?;
    Ok(ok(crate::driver::rl_stage::message(&s)))
}

fn evaluation_stage(ctx: &RunContext) -> Result<StageResult> {
    let e = &ctx.run.spec.stages.evaluation;
    let base = ctx.base_model_dir();
    let adapter = ctx.final_adapter();
    let cfg = EvalConfig {
        base_model: base.clone(),
        adapter: Some(adapter.clone()),
        examples: ctx.dir(StageName::DataPrep).join("test_routing_examples.jsonl"),
        samples: e.samples as usize,
        gates: e.gates.clone(),
        abstain_threshold: e.abstain_threshold,
        precision: Precision::Int8,
        out_dir: ctx.dir(StageName::Evaluation),
        model_version: version::model_version(&[&base, &adapter])?,
        progress: ctx.progress,
        any_candidate: false,
    };
    let out = evaluate::run(&cfg)?;
    let m = &out.summary.metrics;
    Ok(StageResult {
        succeeded: true,
        message: Some(format!(
            "verdict {:?}: routing {:.1} %, API selection {:.1} %, payload {:.1} %, P95 {:.0} ms (coverage {:.1} %)",
            out.verdict,
            m.routing_accuracy * 100.0,
            m.api_selection_accuracy * 100.0,
            m.payload_accuracy * 100.0,
            m.latency_p95_ms,
            m.coverage * 100.0
        )),
        metrics: Some(m.clone()),
        gates: out.gates,
        verdict: Some(out.verdict),
        report: Some(ctx.rel(&out.report)),
        ..Default::default()
    })
}
