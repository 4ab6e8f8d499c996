//! `sapllm-worker data-prep`: transaction logs (or synthetic data) to training examples.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use chrono::NaiveDate;

use crate::dataprep::{self, DataPrepConfig, Source, SplitFractions};
use crate::progress::ProgressMode;
use sapllm_sap::catalog::Catalog;
use sapllm_sap::documents::DocType;

#[derive(Debug, clap::Args)]
pub struct DataPrepArgs {
    /// Transaction log (JSONL) to read, or a folder whose `*.jsonl` files are read in name order
    /// (a RoutingEndpoint's feedback); without it, the seeded synthetic generator is used.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Output directory for the JSONL files and the dataset card.
    #[arg(long, default_value = "data")]
    pub out: PathBuf,
    /// Number of synthetic records.
    #[arg(long, default_value_t = 10_000)]
    pub examples: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Split fractions train,val,test (sum 1).
    #[arg(long, default_value = "0.8,0.1,0.1")]
    pub split: String,
    /// Similar past cases per example.
    #[arg(long, default_value_t = 3)]
    pub k: usize,
    /// Skip malformed log lines (counted in the card) instead of failing.
    #[arg(long)]
    pub skip_invalid: bool,
    /// Document-type weights for synthetic data, e.g. `supplier_invoice=3,purchase_order=1`.
    #[arg(long)]
    pub mix: Option<String>,
    #[arg(long, default_value_t = 0.1)]
    pub error_rate: f64,
    #[arg(long, default_value_t = 0.15)]
    pub ambiguous_rate: f64,
    #[arg(long, default_value_t = 0.05)]
    pub incomplete_rate: f64,
    #[arg(long, default_value_t = 0.03)]
    pub duplicate_rate: f64,
    /// Share of synthetic documents whose keys are respelled as extraction systems write them
    /// (camelCase, PascalCase, aliases such as `vendor_id`, `qty`).
    #[arg(long, default_value_t = 0.4)]
    pub key_variant_rate: f64,
    /// Processing date of synthetic logs (YYYY-MM-DD).
    #[arg(long)]
    pub today: Option<NaiveDate>,
    /// API catalog JSON (`catalog import` writes one); default: the built-in catalog.
    #[arg(long)]
    pub catalog: Option<PathBuf>,
}

fn parse_split(s: &str) -> Result<SplitFractions> {
    let parts: Vec<f64> = s
        .split(',')
        .map(|p| p.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("--split {s:?}: expected three numbers like 0.8,0.1,0.1"))?;
    let [train, val, test] = parts[..] else {
        bail!("--split {s:?}: expected three numbers like 0.8,0.1,0.1")
    };
    Ok(SplitFractions { train, val, test })
}

fn parse_mix(s: &str) -> Result<Vec<(DocType, f64)>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (t, w) = p.split_once('=').with_context(|| {
                format!("--mix entry {p:?}: expected type=weight, e.g. supplier_invoice=3")
            })?;
            let t: DocType = t.trim().parse().map_err(|e: String| anyhow::anyhow!("--mix: {e}"))?;
            let w: f64 =
                w.trim().parse().with_context(|| format!("--mix entry {p:?}: weight is not a number"))?;
            Ok((t, w))
        })
        .collect()
}

/// Builds the configuration from the arguments.
pub fn config(args: &DataPrepArgs, progress: ProgressMode) -> Result<DataPrepConfig> {
    let defaults = DataPrepConfig::default();
    Ok(DataPrepConfig {
        source: args.input.clone().map_or(Source::Synthetic, Source::LogFile),
        examples: args.examples,
        seed: args.seed,
        split: parse_split(&args.split)?,
        k_similar: args.k,
        skip_invalid: args.skip_invalid,
        output_dir: args.out.clone(),
        doc_mix: args.mix.as_deref().map(parse_mix).transpose()?.unwrap_or_default(),
        error_rate: args.error_rate,
        ambiguous_rate: args.ambiguous_rate,
        incomplete_rate: args.incomplete_rate,
        duplicate_rate: args.duplicate_rate,
        key_variant_rate: args.key_variant_rate,
        today: args.today.unwrap_or(defaults.today),
        catalog: match &args.catalog {
            Some(p) => Catalog::load(p)?,
            None => Catalog::builtin(),
        },
        progress,
    })
}

pub fn run(args: DataPrepArgs, progress: ProgressMode) -> Result<ExitCode> {
    let cfg = config(&args, progress)?;
    let card = dataprep::run(&cfg)?;
    let total: u64 = card.splits.values().sum();
    eprintln!(
        "data-prep: {total} routing examples (train {}, val {}, test {}), {} exception examples, {} preference pairs, {} invalid lines skipped, {:.1} s -> {}",
        card.splits.get("train").copied().unwrap_or(0),
        card.splits.get("val").copied().unwrap_or(0),
        card.splits.get("test").copied().unwrap_or(0),
        card.exception_examples,
        card.preference_pairs,
        card.invalid_lines,
        card.elapsed_s,
        cfg.output_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
