//! Decision agreement for canary rollouts over real HTTP: a "primary" server started with
//! `--mirror-to` a "canary" server (fraction 1: every request) sends its successful routing
//! requests there and counts, in its `/metrics`, how the canary's decisions compare with its own
//! (`sapllm_mirror_comparisons_total{version,outcome}`, `sapllm_mirror_abstentions_total{version,side}`)
//! and why mirrors failed (`sapllm_mirror_failures_total{reason}`). Also: the model version on
//! routing answers and in `/v1/models`, a mirrored request neither mirrored again nor kept for
//! feedback, and a shutdown that does not wait for a hung mirror.
//!
//! The backends are stubs whose decisions are known in advance (the engine is tested elsewhere).

mod serve_support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::StatusCode;
use sapllm_serve::feedback::FeedbackConfig;
use sapllm_serve::mirror::MirrorConfig;
use sapllm_serve::{ServeConfig, Server};
use serde_json::{Value, json};
use serve_support::stub::{Stub, stable};
use serve_support::*;

const CANARY: &str = "sha256:canary0000";
const STABLE: &str = "sha256:stable0000";

async fn serve(stub: Stub, cfg: ServeConfig) -> Server {
    let loader: sapllm_serve::Loader<Stub> = Box::new(move || Ok((stub, info())));
    let mut server = sapllm_serve::start(cfg, loader).await.expect("start");
    server.ready().await.expect("ready");
    server
}

/// A server with `--model-version`.
fn versioned(version: &str) -> ServeConfig {
    let mut cfg = config(4, 64, 30_000);
    cfg.model_version = Some(version.into());
    cfg
}

/// A primary mirroring every request to `to` (`concurrency`, `timeout_ms`).
fn mirroring(to: SocketAddr, concurrency: usize, timeout_ms: u64) -> ServeConfig {
    let mut cfg = versioned(STABLE);
    cfg.mirror = Some(
        MirrorConfig::new(&format!("http://{to}"), 1.0, concurrency, Duration::from_millis(timeout_ms))
            .expect("mirror config"),
    );
    cfg
}

/// Routes sample document `i` at `addr`: 200 and the decision.
async fn route(addr: SocketAddr, i: usize, headers: &[(&str, &str)]) -> Value {
    let r = post_json(addr, "/v1/route", headers, &route_body(i)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.json()
}

/// Routes sample documents `0..n` in one batch request: 200 and the answer.
async fn route_batch(addr: SocketAddr, n: usize) -> Value {
    let requests: Vec<Value> = (0..n).map(|i| serde_json::from_str(&route_body(i)).unwrap()).collect();
    let r = post_json(addr, "/v1/route/batch", &[], &json!({"requests": requests}).to_string()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.json()
}

/// The series of metric `name` in a text exposition: labels and value.
fn series(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else { continue };
        let (metric, labels) = match key.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (key, ""),
        };
        if metric != name {
            continue;
        }
        let labels = labels
            .split(',')
            .filter(|kv| !kv.is_empty())
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
            .collect();
        out.push((labels, value.parse().expect("a number")));
    }
    out
}

/// The sum of the series of `name` carrying every label of `labels`.
fn count(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    series(text, name)
        .iter()
        .filter(|(l, _)| labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
        .map(|(_, v)| *v as u64)
        .sum()
}

async fn metrics(addr: SocketAddr) -> String {
    get(addr, "/metrics", &[]).await.body
}

const COMPARISONS: &str = "sapllm_mirror_comparisons_total";
const ABSTENTIONS: &str = "sapllm_mirror_abstentions_total";
const FAILURES: &str = "sapllm_mirror_failures_total";

/// Polls `addr`'s metrics until `name` (with `labels`) counts `want` at least, then a little
/// longer, so that more than `want` shows too; returns the metrics.
async fn settle(addr: SocketAddr, name: &str, labels: &[(&str, &str)], want: u64) -> String {
    let t = Instant::now();
    loop {
        let m = metrics(addr).await;
        if count(&m, name, labels) >= want {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "{name}{labels:?} never reached {want}:\n{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    metrics(addr).await
}

/// The failure series exist from the start, and are all 0 but `except`.
fn assert_no_failures_but(m: &str, except: &[(&str, u64)]) {
    for reason in ["unreachable", "timeout", "status", "invalid", "skipped"] {
        let s = series(m, FAILURES);
        let found = s.iter().find(|(l, _)| l.get("reason").map(String::as_str) == Some(reason));
        let want = except.iter().find(|(r, _)| *r == reason).map_or(0, |(_, n)| *n);
        assert_eq!(found.map(|(_, v)| *v as u64), Some(want), "failures{{reason={reason}}}:\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agreeing_canary_counts_agreed_under_its_version() {
    let canary = serve(stable(), versioned(CANARY)).await;
    let primary = serve(stable(), mirroring(canary.addr, 4, 10_000)).await;
    let before = metrics(primary.addr).await;
    assert_no_failures_but(&before, &[]);
    assert_eq!(count(&before, COMPARISONS, &[]), 0);

    for i in 0..4 {
        route(primary.addr, i, &[]).await;
    }
    let batch = route_batch(primary.addr, 3).await;
    assert_eq!(batch["decisions"].as_array().map(Vec::len), Some(3));

    // 4 single decisions + 3 in the batch, compared one by one.
    let m = settle(primary.addr, COMPARISONS, &[], 7).await;
    assert_eq!(count(&m, COMPARISONS, &[("version", CANARY), ("outcome", "agreed")]), 7, "{m}");
    assert_eq!(count(&m, COMPARISONS, &[]), 7, "{m}");
    assert_eq!(count(&m, ABSTENTIONS, &[]), 0, "{m}");
    assert_no_failures_but(&m, &[]);
    // The canary got each request once, on the API it was made to.
    let c = metrics(canary.addr).await;
    assert_eq!(count(&c, "sapllm_requests_total", &[("route", "/v1/route"), ("status", "200")]), 4, "{c}");
    assert_eq!(count(&c, "sapllm_requests_total", &[("route", "/v1/route/batch"), ("status", "200")]), 1);
    // The canary mirrors nothing, and says so in no series.
    assert!(series(&c, FAILURES).is_empty() && series(&c, COMPARISONS).is_empty(), "{c}");

    primary.shutdown().await.expect("primary shutdown");
    canary.shutdown().await.expect("canary shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_choosing_another_endpoint_differs_in_endpoint() {
    let other = Stub { endpoint: Some("/API_SOMETHING_ELSE_SRV/A_Other"), ..stable() };
    let canary = serve(other, versioned(CANARY)).await;
    let primary = serve(stable(), mirroring(canary.addr, 4, 10_000)).await;
    for i in 0..3 {
        route(primary.addr, i, &[]).await;
    }
    let m = settle(primary.addr, COMPARISONS, &[], 3).await;
    assert_eq!(count(&m, COMPARISONS, &[("version", CANARY), ("outcome", "endpoint_differs")]), 3, "{m}");
    assert_eq!(count(&m, COMPARISONS, &[]), 3, "{m}");
    assert_no_failures_but(&m, &[]);
    primary.shutdown().await.expect("shutdown");
    canary.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_posting_other_values_differs_in_values_and_its_abstentions_count() {
    let other = Stub { payload: json!({"CompanyCode": "9999"}), abstained: true, ..stable() };
    let canary = serve(other, versioned(CANARY)).await;
    let primary = serve(stable(), mirroring(canary.addr, 4, 10_000)).await;
    for i in 0..3 {
        route(primary.addr, i, &[]).await;
    }
    route_batch(primary.addr, 2).await;
    let m = settle(primary.addr, COMPARISONS, &[], 5).await;
    assert_eq!(count(&m, COMPARISONS, &[("version", CANARY), ("outcome", "values_differ")]), 5, "{m}");
    assert_eq!(count(&m, COMPARISONS, &[]), 5, "{m}");
    assert_eq!(count(&m, ABSTENTIONS, &[("version", CANARY), ("side", "mirror")]), 5, "{m}");
    assert_eq!(count(&m, ABSTENTIONS, &[("side", "primary")]), 0, "{m}");
    assert_no_failures_but(&m, &[]);
    primary.shutdown().await.expect("shutdown");
    canary.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_without_a_version_is_labelled_empty() {
    let canary = serve(stable(), config(4, 64, 30_000)).await;
    let primary = serve(stable(), mirroring(canary.addr, 4, 10_000)).await;
    route(primary.addr, 0, &[]).await;
    let m = settle(primary.addr, COMPARISONS, &[], 1).await;
    assert_eq!(count(&m, COMPARISONS, &[("version", ""), ("outcome", "agreed")]), 1, "{m}");
    primary.shutdown().await.expect("shutdown");
    canary.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_is_down_counts_unreachable_and_answers_are_unaffected() {
    // A port nothing listens on (a Service without endpoints refuses connections alike).
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut cfg = mirroring(down, 4, 10_000);
    cfg.mirror.as_mut().unwrap().pause = Duration::from_secs(60);
    let primary = serve(stable(), cfg).await;
    let d = route(primary.addr, 0, &[]).await;
    assert_eq!(d["payload"], json!({"CompanyCode": "1010"}));
    settle(primary.addr, FAILURES, &[("reason", "unreachable")], 1).await;
    // Mirroring pauses after the refused connection: these are answered and not mirrored.
    for i in 1..4 {
        let d = route(primary.addr, i, &[]).await;
        assert_eq!(d["payload"], json!({"CompanyCode": "1010"}));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m = metrics(primary.addr).await;
    assert_no_failures_but(&m, &[("unreachable", 1)]);
    assert_eq!(count(&m, COMPARISONS, &[]), 0, "{m}");
    assert_eq!(count(&m, "sapllm_requests_total", &[("route", "/v1/route"), ("status", "200")]), 4);
    primary.shutdown().await.expect("shutdown");
}

/// Between canaries nothing listens behind `--mirror-to`; once a canary starts there, mirroring
/// resumes by itself after the pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirroring_resumes_when_a_canary_starts_listening() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut cfg = mirroring(addr, 4, 10_000);
    cfg.mirror.as_mut().unwrap().pause = Duration::from_millis(300);
    let primary = serve(stable(), cfg).await;
    route(primary.addr, 0, &[]).await;
    settle(primary.addr, FAILURES, &[("reason", "unreachable")], 1).await;
    let mut canary_cfg = versioned(CANARY);
    canary_cfg.addr = addr;
    let canary = serve(stable(), canary_cfg).await;
    let t = Instant::now();
    let mut i = 1;
    loop {
        route(primary.addr, i, &[]).await;
        i += 1;
        let m = metrics(primary.addr).await;
        if count(&m, COMPARISONS, &[("version", CANARY), ("outcome", "agreed")]) >= 1 {
            // A pause doubles at most to MAX_PAUSE: a few refused connections, not one per request.
            assert!(count(&m, FAILURES, &[("reason", "unreachable")]) < i as u64 / 2 + 2, "{m}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "mirroring never resumed:\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    primary.shutdown().await.expect("shutdown");
    canary.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_token_goes_along_and_a_refusal_counts_as_status() {
    let mut cfg = versioned(CANARY);
    cfg.auth_token = Some("s3cret".into());
    let canary = serve(stable(), cfg).await;
    let mut cfg = mirroring(canary.addr, 4, 10_000);
    cfg.auth_token = Some("s3cret".into());
    let shared = serve(stable(), cfg).await;
    let mut cfg = mirroring(canary.addr, 4, 10_000);
    cfg.auth_token = Some("another".into());
    let foreign = serve(stable(), cfg).await;
    for i in 0..2 {
        route(shared.addr, i, &[("authorization", "Bearer s3cret")]).await;
        route(foreign.addr, i, &[("authorization", "Bearer another")]).await;
    }
    let m = settle(shared.addr, COMPARISONS, &[], 2).await;
    assert_eq!(count(&m, COMPARISONS, &[("version", CANARY), ("outcome", "agreed")]), 2, "{m}");
    assert_no_failures_but(&m, &[]);
    let m = settle(foreign.addr, FAILURES, &[("reason", "status")], 2).await;
    assert_no_failures_but(&m, &[("status", 2)]);
    assert_eq!(count(&m, COMPARISONS, &[]), 0, "{m}");
    for s in [shared, foreign, canary] {
        s.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirrored_request_is_not_mirrored_again_nor_kept_for_feedback() {
    let canary = serve(stable(), versioned(CANARY)).await;
    let dir = std::env::temp_dir().join(format!("sapllm-mirror-feedback-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = mirroring(canary.addr, 4, 10_000);
    cfg.feedback = Some(FeedbackConfig { replica: "p".into(), ..FeedbackConfig::new(dir.clone()) });
    let primary = serve(stable(), cfg).await;

    // Answered normally, but not mirrored, and its decision id is unknown to feedback.
    for i in 0..3 {
        let d = route(primary.addr, i, &[("x-sapllm-mirror", "1")]).await;
        let id = d["decision_id"].as_str().expect("decision_id");
        let r = post_json(
            primary.addr,
            "/v1/feedback",
            &[],
            &json!({"decision_id": id, "outcome": "posted", "document_number": "4500000001"}).to_string(),
        )
        .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
        assert_eq!(r.json()["error"]["code"], "unknown_decision", "{}", r.body);
    }
    // A plain request is mirrored, and kept.
    let d = route(primary.addr, 3, &[]).await;
    let r = post_json(
        primary.addr,
        "/v1/feedback",
        &[],
        &json!({"decision_id": d["decision_id"], "outcome": "posted", "document_number": "4500000001"})
            .to_string(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    let m = settle(primary.addr, COMPARISONS, &[], 1).await;
    assert_eq!(count(&m, COMPARISONS, &[]), 1, "only the plain request was mirrored:\n{m}");
    assert_no_failures_but(&m, &[]);
    let c = metrics(canary.addr).await;
    assert_eq!(count(&c, "sapllm_requests_total", &[("route", "/v1/route")]), 1, "{c}");
    primary.shutdown().await.expect("shutdown");
    canary.shutdown().await.expect("shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A canary that accepts connections and never answers; counts the connections.
async fn hung_canary() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let n = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            n.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_canary_times_out() {
    let (hung, _) = hung_canary().await;
    let primary = serve(stable(), mirroring(hung, 4, 1500)).await;
    let t = Instant::now();
    for i in 0..2 {
        route(primary.addr, i, &[]).await;
    }
    // Had an answer waited for its mirror, it would have taken the mirror's timeout.
    assert!(t.elapsed() < Duration::from_millis(1500), "answers waited for the mirror: {:?}", t.elapsed());
    let m = settle(primary.addr, FAILURES, &[("reason", "timeout")], 2).await;
    assert_no_failures_but(&m, &[("timeout", 2)]);
    primary.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_beyond_the_concurrency_are_skipped_and_shutdown_does_not_wait_for_them() {
    let (hung, accepted) = hung_canary().await;
    // One mirror at a time, allowed a minute: the first holds its slot for the whole test.
    let primary = serve(stable(), mirroring(hung, 1, 60_000)).await;
    for i in 0..3 {
        route(primary.addr, i, &[]).await;
    }
    let t = Instant::now();
    while accepted.load(Ordering::SeqCst) == 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "the mirror never connected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let m = metrics(primary.addr).await;
    assert_no_failures_but(&m, &[("skipped", 2)]);
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "only one mirror in flight");
    // The mirror in flight is abandoned, not waited for.
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), primary.shutdown())
        .await
        .expect("shutdown waited for a mirror in flight")
        .expect("shutdown");
    assert!(t.elapsed() < Duration::from_secs(5), "shutdown took {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_version_is_on_routing_answers_and_in_models() {
    let server = serve(stable(), versioned(STABLE)).await;
    let r = post_json(server.addr, "/v1/route", &[], &route_body(0)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.headers.get("x-sapllm-model-version").map(|v| v.to_str().unwrap()), Some(STABLE));
    let body = json!({"requests": [serde_json::from_str::<Value>(&route_body(1)).unwrap()]}).to_string();
    let r = post_json(server.addr, "/v1/route/batch", &[], &body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.headers.get("x-sapllm-model-version").map(|v| v.to_str().unwrap()), Some(STABLE));
    // Errors too: the caller knows which version refused.
    let r = post_json(server.addr, "/v1/route", &[], r#"{"doc_type": "nonsense", "adc_json": {}}"#).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.headers.get("x-sapllm-model-version").map(|v| v.to_str().unwrap()), Some(STABLE));
    let r = get(server.addr, "/v1/models", &[]).await;
    assert_eq!(r.json()["data"][0]["version"], STABLE, "{}", r.body);
    server.shutdown().await.expect("shutdown");

    // Without --model-version: neither.
    let server = serve(stable(), config(4, 64, 30_000)).await;
    let r = post_json(server.addr, "/v1/route", &[], &route_body(0)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.headers.get("x-sapllm-model-version").is_none());
    let r = get(server.addr, "/v1/models", &[]).await;
    assert!(r.json()["data"][0].get("version").is_none(), "{}", r.body);
    server.shutdown().await.expect("shutdown");
}
