//! The operator at scale: the real `sapllm-operator` binary, as a separate process (so its memory
//! is its own), against the in-process fake API server of the tests, with 1,000 TrainingRuns,
//! 1,000 Evaluations and 100 RoutingEndpoints in 20 namespaces, driven through every phase.
//!
//! Phases, each with its own figures:
//! - start: every object reconciled to a status (Jobs created);
//! - completions: Jobs finish (succeeded, failed, gates failed) at a steady rate; the time from
//!   each Job's completion to its owner's status saying so;
//! - steady: a window of more than one resync with nothing changed (goal: zero writes);
//! - restart: the operator is stopped and started again; it must adopt everything and create
//!   nothing.
//!
//! Run: `cargo bench -p sapllm-operator --bench scale` (a table on stdout, the figures as JSON in
//! `target/bench-scale.json`). `SAPLLM_SCALE=0.1` runs a tenth of the objects.

#![allow(dead_code)]

#[path = "../tests/support/fake_api.rs"]
mod fake_api;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fake_api::{ENDPOINTS, EVALUATIONS, FakeApi, JOBS, Request, TRAINING_RUNS};
use serde_json::{Value, json};

const NAMESPACES: usize = 20;
const RUNS: usize = 1000;
const EVALUATIONS_N: usize = 1000;
const ENDPOINTS_N: usize = 100;
/// The operator's resync and progress intervals in this benchmark (seconds): short, so the
/// steady window covers more than one resync of every object.
const RESYNC: u64 = 20;
const PROGRESS: u64 = 15;
/// Linux's USER_HZ (clock ticks per second in /proc/<pid>/stat).
const CLOCK_TICKS: f64 = 100.0;
/// Completions per second in the completion phase (`SAPLLM_COMPLETION_RATE` to change): a
/// burst, every Job of a thousand runs finishing within seconds.
const COMPLETION_RATE: f64 = 100.0;

fn example(name: &str) -> Value {
    let path = format!("{}/../examples/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ns(i: usize) -> String {
    format!("team-{:02}", i % NAMESPACES)
}

/// Seeds the objects users applied.
fn seed(api: &FakeApi, runs: usize, evals: usize, endpoints: usize) {
    let run = example("trainingrun-tiny.yaml");
    for i in 0..runs {
        let mut r = run.clone();
        r["metadata"] = json!({ "name": format!("run-{i:04}"), "namespace": ns(i),
            "labels": { "sapllm.io/lineage": format!("run-{i:04}") } });
        api.put(TRAINING_RUNS, r);
    }
    let ev = example("evaluation.yaml");
    for i in 0..evals {
        let mut e = ev.clone();
        e["metadata"] = json!({ "name": format!("eval-{i:04}"), "namespace": ns(i),
            "labels": { "sapllm.io/lineage": format!("lineage-{}", i % endpoints.max(1)) } });
        e["spec"]["model"]["artifacts"]["adapter"] = json!(format!("runs/{i}/ppo/adapter"));
        api.put(EVALUATIONS, e);
    }
    let rep = example("routingendpoint.yaml");
    for i in 0..endpoints {
        let mut r = rep.clone();
        r["metadata"] = json!({ "name": format!("rep-{i:03}"), "namespace": ns(i) });
        r["spec"]["model"]["latestPassing"]["lineage"] = json!(format!("lineage-{i}"));
        r["spec"].as_object_mut().unwrap().remove("authSecret");
        api.put(ENDPOINTS, r);
    }
}

struct Operator {
    child: Child,
}

impl Operator {
    fn start(kubeconfig: &std::path::Path, metrics_port: u16) -> Operator {
        let child = Command::new(env!("CARGO_BIN_EXE_sapllm-operator"))
            .args([
                &format!("--http-addr=127.0.0.1:{metrics_port}"),
                "--leader-elect=false",
                "--log-json=false",
                &format!("--resync-interval={RESYNC}"),
                &format!("--progress-interval={PROGRESS}"),
            ])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the operator binary starts");
        Operator { child }
    }

    /// (current, peak) resident memory in MiB, from /proc.
    fn rss_mib(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let kib = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
    }

    /// CPU seconds the operator has used (user + system), from /proc.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let f: Vec<f64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
        // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
        (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / CLOCK_TICKS
    }

    fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Request counts of a window.
#[derive(Default, serde::Serialize)]
struct Traffic {
    requests: usize,
    /// Reconciles: each starts with a GET of the object (`fresh`).
    reconciles: usize,
    lists: BTreeMap<String, usize>,
    /// Writes that are not Events (creates, patches, updates, deletes).
    writes: usize,
    /// Writes by resource.
    writes_by: BTreeMap<String, usize>,
    /// POSTs (create attempts, answered 201 or 409).
    creates: usize,
    events: usize,
}

fn traffic(reqs: &[Request]) -> Traffic {
    let mut t = Traffic::default();
    for r in reqs {
        if r.query.get("watch").is_some_and(|w| w == "true" || w == "1") {
            continue;
        }
        t.requests += 1;
        let crd = [TRAINING_RUNS, EVALUATIONS, ENDPOINTS].contains(&r.resource.as_str());
        match (r.method.as_str(), &r.name) {
            ("GET", Some(_)) if crd && r.subresource.is_none() => t.reconciles += 1,
            ("GET", None) => {
                *t.lists.entry(r.resource.rsplit('/').next().unwrap().to_string()).or_default() += 1
            }
            ("GET", _) => {}
            (m, _) if r.resource.ends_with("/events") => {
                let _ = m;
                t.events += 1
            }
            (m, _) => {
                t.creates += usize::from(m == "POST");
                t.writes += 1;
                let what = format!(
                    "{m} {}{}",
                    r.resource.rsplit('/').next().unwrap(),
                    r.subresource.as_deref().map(|s| format!("/{s}")).unwrap_or_default()
                );
                *t.writes_by.entry(what).or_default() += 1;
            }
        }
    }
    t
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn stage_phase(run: &Value, stage: &str) -> Option<String> {
    run["status"]["stages"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == stage)
        .and_then(|s| s["phase"].as_str())
        .map(String::from)
}

/// A completed Job whose owner's status has not said so yet: (owner, its resource, namespace,
/// when the Job completed, the phase or verdict to wait for).
type Pending = (String, &'static str, String, Instant, &'static str);

/// Until `until`, checks every 50 ms which pending completions their owners' status shows, and
/// records how long each took. Runs while completions are still being injected, so a
/// completion's latency is measured from its own moment, not from the end of the injection.
async fn observe_until(api: &FakeApi, until: Instant, pending: &mut Vec<Pending>, latencies: &mut Vec<f64>) {
    loop {
        pending.retain(|(name, resource, namespace, at, outcome)| {
            let Some(obj) = api.get(resource, namespace, name) else { return true };
            let seen = if *resource == TRAINING_RUNS {
                stage_phase(&obj, "data-prep").as_deref() == Some(*outcome)
            } else {
                obj["status"]["verdict"] == *outcome
            };
            if seen {
                latencies.push(at.elapsed().as_secs_f64());
            }
            !seen
        });
        let now = Instant::now();
        if now >= until {
            return;
        }
        tokio::time::sleep((until - now).min(Duration::from_millis(50))).await;
    }
}

#[derive(Default, serde::Serialize)]
struct Phase {
    name: &'static str,
    seconds: f64,
    traffic: Traffic,
    rss_mib: f64,
    peak_rss_mib: f64,
    objects_created: usize,
    /// CPU seconds the operator used in the phase.
    operator_cpu_s: f64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let scale: f64 = std::env::var("SAPLLM_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0);
    let n = |x: usize| ((x as f64 * scale).round() as usize).max(1);
    let (runs, evals, endpoints) = (n(RUNS), n(EVALUATIONS_N), n(ENDPOINTS_N));
    let api = FakeApi::start().await;
    seed(&api, runs, evals, endpoints);
    let dir = std::env::temp_dir().join(format!("sapllm-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    let server = api.client_url();
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"{server}\"}}}}]\nusers: [{{name: u, user: {{}}}}]\ncontexts: [{{name: c, context: {{cluster: fake, user: u}}}}]\ncurrent-context: c\n"
        ),
    )
    .unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    eprintln!(
        "{runs} TrainingRuns, {evals} Evaluations, {endpoints} RoutingEndpoints in {NAMESPACES} namespaces"
    );
    let mut phases: Vec<Phase> = Vec::new();
    let mut peak = 0f64;

    // The Job controller's part: a Job the operator creates gets its pod (status.active).
    let jc = api.clone();
    tokio::spawn(async move {
        loop {
            for j in jc.list_all(JOBS).into_iter().filter(|j| j["status"].is_null()) {
                let (ns, name) =
                    (j["metadata"]["namespace"].as_str().unwrap(), j["metadata"]["name"].as_str().unwrap());
                jc.patch(JOBS, ns, name, json!({ "status": { "active": 1 } }));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    // Start: every object gets a status.
    let op = Operator::start(&kubeconfig, port);
    let (t0, r0, rv0) = (Instant::now(), api.request_count(), api.rv());
    let cpu0 = op.cpu_seconds();
    loop {
        peak = peak.max(op.rss_mib().0);
        let done_runs = (0..runs)
            .filter(|i| {
                api.get(TRAINING_RUNS, &ns(*i), &format!("run-{i:04}"))
                    .is_some_and(|r| r["status"]["phase"] == "Running")
            })
            .count();
        let done_evals = (0..evals)
            .filter(|i| {
                api.get(EVALUATIONS, &ns(*i), &format!("eval-{i:04}"))
                    .is_some_and(|e| e["status"]["phase"] == "Running")
            })
            .count();
        let done_eps = (0..endpoints)
            .filter(|i| {
                api.get(ENDPOINTS, &ns(*i), &format!("rep-{i:03}"))
                    .is_some_and(|e| e["status"]["conditions"].as_array().is_some_and(|c| !c.is_empty()))
            })
            .count();
        if done_runs == runs && done_evals == evals && done_eps == endpoints {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "start: {done_runs}/{done_evals}/{done_eps} after 10 min"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (rss, hwm) = op.rss_mib();
    phases.push(Phase {
        name: "start",
        seconds: t0.elapsed().as_secs_f64(),
        traffic: traffic(&api.requests_since(r0)),
        rss_mib: rss,
        peak_rss_mib: hwm.max(peak),
        objects_created: api.added_after(rv0).iter().filter(|c| c.starts_with(JOBS)).count(),
        operator_cpu_s: op.cpu_seconds() - cpu0,
    });

    // Completions: data-prep Jobs of runs finish (60 % succeed, 10 % fail), Evaluation Jobs
    // finish (50 % pass, 25 % fail their gates); the rest keep running.
    let (t1, r1) = (Instant::now(), api.request_count());
    let cpu1 = op.cpu_seconds();
    let jobs = api.list_all(JOBS);
    let mut pending: Vec<Pending> = Vec::new();
    let mut latencies: Vec<f64> = Vec::new();
    let job_of = |prefix: &str, namespace: &str| {
        jobs.iter()
            .find(|j| {
                j["metadata"]["namespace"] == namespace
                    && j["metadata"]["name"].as_str().is_some_and(|n| n.starts_with(prefix))
            })
            .cloned()
    };
    let rate: f64 =
        std::env::var("SAPLLM_COMPLETION_RATE").ok().and_then(|s| s.parse().ok()).unwrap_or(COMPLETION_RATE);
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.01));
    let mut next = Instant::now();
    let metrics = |routing: f64| {
        json!({ "samples": 500, "routingAccuracy": routing, "apiSelectionAccuracy": 1.0, "payloadAccuracy": 0.995,
            "latencyP50Ms": 60.0, "latencyP95Ms": 120.0, "latencyP99Ms": 150.0, "coverage": 1.0 })
    };
    let (good_metrics, bad_metrics) = (metrics(0.99), metrics(0.91));
    for i in 0..runs {
        let outcome = match i % 10 {
            0..=5 => "Succeeded",
            6 => "Failed",
            _ => continue,
        };
        let name = format!("run-{i:04}");
        let Some(job) = job_of(&format!("{name}-data-prep-"), &ns(i)) else { continue };
        observe_until(&api, next, &mut pending, &mut latencies).await;
        next += interval;
        let (code, msg) = if outcome == "Succeeded" {
            (
                0,
                json!({ "stage": "data-prep", "succeeded": true, "artifacts": { "dataset": format!("{name}/data") } }),
            )
        } else {
            (2, json!({ "stage": "data-prep", "succeeded": false, "message": "bad input" }))
        };
        api.finish_job(&job, code, &msg.to_string());
        pending.push((name, TRAINING_RUNS, ns(i), Instant::now(), outcome));
    }
    for i in 0..evals {
        let (code, metrics, outcome) = match i % 4 {
            0 | 1 => (0, &good_metrics, "Passed"),
            2 => (1, &bad_metrics, "Failed"),
            _ => continue,
        };
        let name = format!("eval-{i:04}");
        let Some(job) = job_of(&format!("{name}-eval-"), &ns(i)) else { continue };
        observe_until(&api, next, &mut pending, &mut latencies).await;
        next += interval;
        let version = format!("sha256:{:064x}", i + 1);
        let msg = json!({ "succeeded": true, "metrics": metrics, "verdict": outcome,
            "artifacts": { "modelVersion": version } });
        api.finish_job(&job, code, &msg.to_string());
        pending.push((name, EVALUATIONS, ns(i), Instant::now(), outcome));
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while !pending.is_empty() && Instant::now() < deadline {
        peak = peak.max(op.rss_mib().0);
        observe_until(&api, Instant::now() + Duration::from_millis(100), &mut pending, &mut latencies).await;
    }
    let unseen = pending.len();
    latencies.sort_by(f64::total_cmp);
    let (rss, hwm) = op.rss_mib();
    phases.push(Phase {
        name: "completions",
        seconds: t1.elapsed().as_secs_f64(),
        traffic: traffic(&api.requests_since(r1)),
        rss_mib: rss,
        peak_rss_mib: hwm.max(peak),
        objects_created: 0,
        operator_cpu_s: op.cpu_seconds() - cpu1,
    });

    // Steady: let the follow-up work settle, then watch a window longer than one resync.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (t2, r2, rv2) = (Instant::now(), api.request_count(), api.rv());
    let cpu2 = op.cpu_seconds();
    tokio::time::sleep(Duration::from_secs(RESYNC + 5)).await;
    let (rss, hwm) = op.rss_mib();
    let steady_changes = api.changes_after(rv2);
    let steady_added = api.added_after(rv2);
    phases.push(Phase {
        name: "steady",
        seconds: t2.elapsed().as_secs_f64(),
        traffic: traffic(&api.requests_since(r2)),
        rss_mib: rss,
        peak_rss_mib: hwm.max(peak),
        objects_created: steady_added.len(),
        operator_cpu_s: op.cpu_seconds() - cpu2,
    });

    // Restart: adopt everything, create nothing.
    op.stop();
    let (t3, r3, rv3) = (Instant::now(), api.request_count(), api.rv());
    let op = Operator::start(&kubeconfig, port);
    let objects = runs + evals + endpoints;
    let mut peak2 = 0f64;
    loop {
        peak2 = peak2.max(op.rss_mib().0);
        let t = traffic(&api.requests_since(r3));
        if t.reconciles >= objects || t3.elapsed() > Duration::from_secs(300) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let adopt_seconds = t3.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss, hwm) = op.rss_mib();
    let created: Vec<String> = api.added_after(rv3).into_iter().filter(|c| !c.contains("/events")).collect();
    phases.push(Phase {
        name: "restart",
        seconds: adopt_seconds,
        traffic: traffic(&api.requests_since(r3)),
        rss_mib: rss,
        peak_rss_mib: hwm.max(peak2),
        objects_created: created.len(),
        operator_cpu_s: op.cpu_seconds(),
    });
    op.stop();

    println!(
        "\n## Operator at scale: {runs} TrainingRuns, {evals} Evaluations, {endpoints} RoutingEndpoints, {NAMESPACES} namespaces\n"
    );
    println!(
        "| phase | seconds | reconciles | reconciles/s | requests/reconcile | lists/reconcile | writes | creates (POST) | objects created | operator CPU s | RSS MiB | peak RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for p in &phases {
        let t = &p.traffic;
        let lists: usize = t.lists.values().sum();
        let per = |x: usize| if t.reconciles == 0 { f64::NAN } else { x as f64 / t.reconciles as f64 };
        println!(
            "| {} | {:.1} | {} | {:.1} | {:.2} | {:.2} | {} | {} | {} | {:.1} | {:.1} | {:.1} |",
            p.name,
            p.seconds,
            t.reconciles,
            t.reconciles as f64 / p.seconds.max(1e-9),
            per(t.requests),
            per(lists),
            t.writes,
            t.creates,
            p.objects_created,
            p.operator_cpu_s,
            p.rss_mib,
            p.peak_rss_mib
        );
    }
    for p in &phases {
        println!("{}: lists {:?}; writes {:?}", p.name, p.traffic.lists, p.traffic.writes_by);
    }
    println!(
        "Job completion -> owner status: {} completions, P50 {:.3} s, P99 {:.3} s, max {:.3} s, {} not seen within 300 s",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN),
        unseen
    );
    let goals = [
        ("peak RSS < 100 MiB", phases.iter().map(|p| p.peak_rss_mib).fold(0.0, f64::max) < 100.0),
        ("P99 completion -> status < 2 s", percentile(&latencies, 0.99) < 2.0 && unseen == 0),
        ("zero writes on a steady resync", phases[2].traffic.writes == 0),
        ("restart creates nothing", phases[3].objects_created == 0),
    ];
    for (g, ok) in goals {
        println!("goal {g}: {}", if ok { "met" } else { "NOT met" });
    }
    let out = json!({
        "completion_rate_per_s": rate,
        "objects": { "trainingRuns": runs, "evaluations": evals, "endpoints": endpoints, "namespaces": NAMESPACES },
        "phases": phases,
        "completion_latency_s": { "count": latencies.len(), "p50": percentile(&latencies, 0.5),
            "p99": percentile(&latencies, 0.99), "unseen": unseen },
        "steady_changes": steady_changes.len(),
        "restart_created": created,
    });
    let target = format!("{}/../target/bench-scale.json", env!("CARGO_MANIFEST_DIR"));
    std::fs::write(&target, serde_json::to_vec_pretty(&out).unwrap()).unwrap();
    eprintln!("figures: {target}");
    let _ = std::fs::remove_dir_all(&dir);
}
