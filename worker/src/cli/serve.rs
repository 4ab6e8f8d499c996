//! `sapllm-worker serve`: the routing endpoint. Loads base + adapter at the precision, merges,
//! warms up, serves until SIGTERM/SIGINT, then drains in-flight requests and exits 0. A model
//! that fails to load ends the process with an error (the pod restarts). With `--feedback-dir`,
//! the queued feedback lines are written before the process exits. With `--mirror-to`, a sample
//! of routing requests is also sent to another server (a canary) and the decisions compared in
//! `/metrics`. With `--peer-domain`, feedback for a decision another replica made is forwarded
//! to it.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use candle_core::DeviceLocation;
use clap::Args;

use sapllm_engine::decoder::DecodeOptions;
use sapllm_engine::engine::EngineConfig;
use sapllm_engine::load::{load_engine, parse_precision};

use super::route::DecodeLimitArgs;
use sapllm_sap::catalog::Catalog;
use sapllm_serve::batcher::BatchConfig;
use sapllm_serve::feedback::FeedbackConfig;
use sapllm_serve::mirror::{DEFAULT_CONCURRENCY, DEFAULT_FRACTION, MirrorConfig};
use sapllm_serve::peers::{PeerConfig, parse_domain, parse_name};
use sapllm_serve::state::Phase;
use sapllm_serve::{ServeConfig, start};

/// `--max-batch` when none is given and the model decodes on the CPU, where a batch costs more
/// than its requests one by one (measured with `bench_serve`: at concurrency 4, 3.7 decisions/s
/// batched by up to 8 against 5.3 one at a time).
pub const CPU_MAX_BATCH: usize = 1;
/// `--max-batch` when none is given and the model decodes on a GPU, where a batch of 8 costs
/// about one step: the operator's memory plan assumes the same default.
pub const GPU_MAX_BATCH: usize = sapllm_crds::plan::GPU_DEFAULT_MAX_BATCH as usize;

/// The `--max-batch` default for the device the model decodes on (`--device`): batching on a
/// GPU, one decision at a time on the CPU.
pub fn default_max_batch(device: DeviceLocation) -> usize {
    match device {
        DeviceLocation::Cpu => CPU_MAX_BATCH,
        DeviceLocation::Cuda { .. } | DeviceLocation::Metal { .. } => GPU_MAX_BATCH,
    }
}

/// Arguments of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Base model folder (HF layout or a preset checkpoint, with tokenizer.json).
    #[arg(long)]
    pub base_model: PathBuf,
    /// PEFT adapter folder, merged into the base at load.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// int8, int4 (NF4), bf16 or f32.
    #[arg(long, default_value = "int8")]
    pub precision: String,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    #[arg(long, default_value = "0.0.0.0")]
    pub host: IpAddr,
    /// Decisions decoded together at most. Default: 8 on a GPU (a batch of 8 costs about one
    /// step there), 1 on the CPU (a batch costs more than its requests one by one).
    #[arg(long)]
    pub max_batch: Option<usize>,
    /// Model threads decoding in parallel, each its own requests, over one copy of the model.
    /// One per core the server may use (with `CANDLE_NUM_THREADS=1`, the fastest setting for
    /// one decode on a CPU): measured with `bench_serve --workers 2` on 2 cores.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// How long the first waiting request waits for others to batch with.
    #[arg(long, default_value_t = 5)]
    pub max_wait_ms: u64,
    /// Requests waiting for the model at most; beyond, 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Per-request timeout (queueing + decoding); 504 beyond.
    #[arg(long, default_value_t = 30_000)]
    pub request_timeout_ms: u64,
    /// Decisions with confidence below this abstain (route to review).
    #[arg(long, default_value_t = 0.5)]
    pub abstain_threshold: f64,
    /// File holding the bearer token clients must send (a mounted Secret); none = no auth.
    #[arg(long)]
    pub auth_token_file: Option<PathBuf>,
    /// Request body size limit in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// API catalog JSON (default: the built-in catalog).
    #[arg(long)]
    pub catalog: Option<PathBuf>,
    /// Model name reported by /v1/models and chat completions.
    #[arg(long, default_value = "sapllm")]
    pub model_name: String,
    /// Enables `POST /v1/feedback`: each feedback is appended, with its decision and document,
    /// as a transaction-log line (data-prep's format) to `<dir>/feedback-<POD_NAME>.jsonl`
    /// (`HOSTNAME` when POD_NAME is unset).
    #[arg(long)]
    pub feedback_dir: Option<PathBuf>,
    /// Recent decisions kept for joining feedback (the oldest is forgotten first; feedback for
    /// it is then a 404).
    #[arg(long, default_value_t = 10_000)]
    pub feedback_capacity: usize,
    /// Memory those decisions' documents and payloads may take at most, in MiB; beyond, the
    /// oldest are forgotten first.
    #[arg(long, default_value_t = 256)]
    pub feedback_memory_mib: usize,
    /// Feedback lines waiting to be written at most; beyond, 503 with Retry-After.
    #[arg(long, default_value_t = 1024)]
    pub feedback_queue: usize,
    /// The served model's version (the operator passes its content digest, `sha256:...`): sent
    /// as `x-sapllm-model-version` on routing answers and as `version` in /v1/models, so a
    /// server mirroring to this one labels its comparisons with it.
    #[arg(long)]
    pub model_version: Option<String>,
    /// Base URL (http:// only) of another server, the canary of a rollout, to send a sample of
    /// successful /v1/route and /v1/route/batch requests to; its decisions are compared with
    /// this server's in /metrics (`sapllm_mirror_*`). The client's answer never waits for it.
    #[arg(long)]
    pub mirror_to: Option<String>,
    /// Share of routing requests mirrored, in (0, 1] (with --mirror-to).
    #[arg(long, default_value_t = DEFAULT_FRACTION)]
    pub mirror_fraction: f64,
    /// Mirrors in flight at most; a sampled request beyond is skipped (and counted).
    #[arg(long, default_value_t = DEFAULT_CONCURRENCY)]
    pub mirror_concurrency: usize,
    /// Time a mirror may take in all (default: --request-timeout-ms).
    #[arg(long)]
    pub mirror_timeout_ms: Option<u64>,
    /// Forward feedback for another replica's decision to that replica: the DNS domain under
    /// which each replica's name resolves, e.g. NAME-peers.NAMESPACE.svc for a headless Service
    /// selecting the replicas; no scheme, port or path (replicas are called on --port). Decision
    /// ids then end in `.<--peer-name>`. Takes effect with --feedback-dir only.
    #[arg(long)]
    pub peer_domain: Option<String>,
    /// This replica's name under --peer-domain, a DNS label (lowercase letters, digits, '-';
    /// at most 63). Default: --peer-ip with dashes, else the HOSTNAME environment variable.
    #[arg(long)]
    pub peer_name: Option<String>,
    /// This replica's IP address (the downward API's status.podIP): its name under
    /// --peer-domain is the address with dashes (10-244-1-7), the name cluster DNS gives each
    /// address of a headless Service whose pods have no hostname of their own (Deployment pods).
    #[arg(long, env = "POD_IP")]
    pub peer_ip: Option<std::net::IpAddr>,
    #[command(flatten)]
    pub limits: DecodeLimitArgs,
}

/// The peer settings of the flags (`None` without `--peer-domain`), validated; `hostname` is the
/// `HOSTNAME` environment variable, the name when `--peer-name` is not given.
pub fn peer_config(args: &ServeArgs, hostname: Option<String>) -> Result<Option<PeerConfig>> {
    let Some(domain) = &args.peer_domain else {
        return Ok(None);
    };
    let domain = parse_domain(domain)?;
    let name = match (&args.peer_name, args.peer_ip) {
        (Some(n), _) => parse_name(n)?,
        (None, Some(ip)) => {
            let dashed = ip.to_string().replace(['.', ':'], "-");
            parse_name(&dashed)
                .map_err(|e| anyhow!("{e} (the address of --peer-ip/POD_IP {ip} with dashes)"))?
        }
        (None, None) => match hostname.filter(|h| !h.trim().is_empty()) {
            Some(h) => parse_name(&h).map_err(|e| {
                anyhow!("{e} (taken from the HOSTNAME environment variable, as --peer-name is not given)")
            })?,
            None => bail!(
                "--peer-domain needs this replica's name: give --peer-name, or set the HOSTNAME \
                 environment variable (its default)"
            ),
        },
    };
    Ok(Some(PeerConfig { domain, name, resolve: Default::default() }))
}

/// The mirroring settings of the flags (`None` without `--mirror-to`), validated.
pub fn mirror_config(args: &ServeArgs) -> Result<Option<MirrorConfig>> {
    let Some(url) = &args.mirror_to else {
        return Ok(None);
    };
    let timeout = Duration::from_millis(args.mirror_timeout_ms.unwrap_or(args.request_timeout_ms));
    MirrorConfig::new(url, args.mirror_fraction, args.mirror_concurrency, timeout).map(Some)
}

/// Reads the token file (trimmed); an empty file is an error, not "no auth".
fn read_token(path: &PathBuf) -> Result<String> {
    let t = std::fs::read_to_string(path)
        .with_context(|| format!("reading --auth-token-file {}", path.display()))?;
    let t = t.trim().to_string();
    if t.is_empty() {
        bail!("--auth-token-file {} is empty", path.display());
    }
    Ok(t)
}

async fn terminate_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Runs the server until a signal.
pub fn run(args: ServeArgs) -> Result<ExitCode> {
    let precision = parse_precision(&args.precision)?;
    if !(0.0..=1.0).contains(&args.abstain_threshold) {
        bail!("--abstain-threshold must be in [0, 1], got {}", args.abstain_threshold);
    }
    let max_batch =
        args.max_batch.unwrap_or_else(|| default_max_batch(sapllm_model::device::selected().location()));
    if max_batch == 0 || args.max_queue == 0 || args.workers == 0 {
        bail!("--max-batch, --max-queue and --workers must be at least 1");
    }
    if args.feedback_capacity == 0 || args.feedback_queue == 0 || args.feedback_memory_mib == 0 {
        bail!("--feedback-capacity, --feedback-memory-mib and --feedback-queue must be at least 1");
    }
    let mirror = mirror_config(&args)?;
    let peers = peer_config(&args, std::env::var("HOSTNAME").ok())?;
    if args.feedback_dir.is_none() && (peers.is_some() || args.peer_name.is_some()) {
        tracing::warn!("--peer-domain and --peer-name have no effect without --feedback-dir");
    } else if peers.is_none() && args.peer_name.is_some() {
        tracing::warn!("--peer-name has no effect without --peer-domain");
    }
    if let Some(v) = &args.model_version
        && (v.trim().is_empty() || !v.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
    {
        bail!("--model-version {v:?} must be a non-empty printable ASCII string (e.g. sha256:...)");
    }
    let catalog = match &args.catalog {
        Some(p) => Catalog::load(p).with_context(|| format!("loading catalog {}", p.display()))?,
        None => Catalog::builtin(),
    };
    let mut cfg = ServeConfig::new(SocketAddr::new(args.host, args.port));
    tracing::info!(max_batch, "requests decoded together at most");
    cfg.batch = BatchConfig {
        max_batch,
        max_wait: Duration::from_millis(args.max_wait_ms),
        max_queue: args.max_queue,
        workers: args.workers,
    };
    cfg.request_timeout = Duration::from_millis(args.request_timeout_ms.max(1));
    cfg.max_body_bytes = args.max_body_bytes;
    cfg.auth_token = args.auth_token_file.as_ref().map(read_token).transpose()?;
    cfg.model_name = args.model_name.clone();
    cfg.catalog = catalog.clone();
    cfg.model_version = args.model_version.clone();
    cfg.mirror = mirror;
    cfg.feedback = args.feedback_dir.as_ref().map(|dir| FeedbackConfig {
        capacity: args.feedback_capacity,
        max_bytes: args.feedback_memory_mib.saturating_mul(1 << 20),
        max_queue: args.feedback_queue,
        peers: peers.clone(),
        ..FeedbackConfig::new(dir.clone())
    });
    let engine_cfg = EngineConfig {
        abstain_threshold: args.abstain_threshold,
        max_batch,
        decode: DecodeOptions {
            max_new_tokens: args.limits.max_new_tokens,
            speculate: args.limits.draft_tokens,
            ..DecodeOptions::default()
        },
        any_candidate: args.limits.any_candidate,
        ..EngineConfig::default()
    };
    let (base, adapter) = (args.base_model.clone(), args.adapter.clone());
    let loader = Box::new(move || load_engine(&base, adapter.as_deref(), precision, catalog, engine_cfg));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let server = start(cfg, loader).await?;
        let mut phase = server.phase();
        let failed = async {
            loop {
                if let Phase::Failed(e) = &*phase.borrow_and_update() {
                    return e.clone();
                }
                if phase.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            _ = terminate_signal() => {
                tracing::info!("signal received: draining in-flight requests");
                server.shutdown().await?;
                tracing::info!("drained; exiting");
                Ok(ExitCode::SUCCESS)
            }
            e = failed => {
                server.shutdown().await?;
                bail!("model failed to load: {e}")
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batching_is_on_by_default_on_a_gpu_and_off_on_the_cpu() {
        assert_eq!(default_max_batch(DeviceLocation::Cpu), 1);
        assert_eq!(default_max_batch(DeviceLocation::Cuda { gpu_id: 0 }), 8);
        assert_eq!(default_max_batch(DeviceLocation::Cuda { gpu_id: 3 }), 8);
        // What the operator plans a pod's memory for when `maxBatch` is unset.
        assert_eq!(GPU_MAX_BATCH as u64, sapllm_crds::plan::GPU_DEFAULT_MAX_BATCH);
    }

    #[test]
    fn an_explicit_max_batch_wins_over_the_default() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let parse = |extra: &[&str]| {
            let args = ["serve", "--base-model", "m"].iter().chain(extra);
            Cli::try_parse_from(args).unwrap().serve.max_batch
        };
        assert_eq!(parse(&[]), None, "unset: the device decides");
        assert_eq!(parse(&["--max-batch", "4"]), Some(4));
    }

    #[test]
    fn peer_flags_are_validated_naming_the_flag() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let peers = |extra: &[&str], hostname: Option<&str>| {
            let args = ["serve", "--base-model", "m"].iter().chain(extra);
            peer_config(&Cli::try_parse_from(args).unwrap().serve, hostname.map(str::to_string))
        };
        assert_eq!(peers(&[], Some("pod-0")).unwrap(), None, "off without --peer-domain");
        let on = peers(&["--peer-domain", "ep-peers.ns.svc"], Some("ep-5f7c9-x2k4f")).unwrap().expect("on");
        assert_eq!((on.domain.as_str(), on.name.as_str()), ("ep-peers.ns.svc", "ep-5f7c9-x2k4f"));
        assert!(on.resolve.is_empty());
        let on = peers(&["--peer-domain", "d.svc", "--peer-name", "b-1"], Some("ignored")).unwrap().unwrap();
        assert_eq!(on.name, "b-1", "--peer-name wins over HOSTNAME");
        let on =
            peers(&["--peer-domain", "d.svc", "--peer-ip", "10.244.1.7"], Some("pod-0")).unwrap().unwrap();
        assert_eq!(on.name, "10-244-1-7", "the pod's address, dashed, as cluster DNS names it");
        let on = peers(&["--peer-domain", "d.svc", "--peer-ip", "10.0.0.1", "--peer-name", "n"], None);
        assert_eq!(on.unwrap().unwrap().name, "n", "--peer-name wins over --peer-ip");
        let err = |extra: &[&str], hostname: Option<&str>| peers(extra, hostname).unwrap_err().to_string();
        for bad in ["", "http://d.svc", "d.svc:8080", "d.svc/x"] {
            assert!(err(&["--peer-domain", bad], Some("p")).contains("--peer-domain"), "{bad}");
        }
        let e = err(&["--peer-domain", "d.svc", "--peer-name", "Pod_0"], Some("p"));
        assert!(e.contains("--peer-name") && !e.contains("HOSTNAME environment"), "{e}");
        let e = err(&["--peer-domain", "d.svc"], Some("Pod.0"));
        assert!(e.contains("--peer-name") && e.contains("taken from the HOSTNAME"), "{e}");
        let e = err(&["--peer-domain", "d.svc"], None);
        assert!(e.contains("--peer-name") && e.contains("HOSTNAME"), "{e}");
    }

    #[test]
    fn mirror_flags_are_validated_naming_the_flag() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let mirror = |extra: &[&str]| {
            let args = ["serve", "--base-model", "m"].iter().chain(extra);
            mirror_config(&Cli::try_parse_from(args).unwrap().serve)
        };
        assert_eq!(mirror(&[]).unwrap(), None, "off without --mirror-to");
        let on = mirror(&["--mirror-to", "http://ep-canary.ns.svc:8080/", "--request-timeout-ms", "700"])
            .unwrap()
            .expect("on");
        assert_eq!(on.base_url, "http://ep-canary.ns.svc:8080");
        assert_eq!((on.fraction, on.concurrency, on.timeout), (0.1, 4, Duration::from_millis(700)));
        let on = mirror(&["--mirror-to", "http://h", "--mirror-fraction", "1", "--mirror-timeout-ms", "50"])
            .unwrap()
            .expect("on");
        assert_eq!((on.fraction, on.timeout), (1.0, Duration::from_millis(50)));
        let err = |extra: &[&str]| mirror(extra).unwrap_err().to_string();
        assert!(err(&["--mirror-to", "https://h"]).contains("--mirror-to"));
        assert!(err(&["--mirror-to", "not a url"]).contains("--mirror-to"));
        assert!(err(&["--mirror-to", "http://h", "--mirror-fraction", "0"]).contains("--mirror-fraction"));
        assert!(
            err(&["--mirror-to", "http://h", "--mirror-concurrency", "0"]).contains("--mirror-concurrency")
        );
    }
}
