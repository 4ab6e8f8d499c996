//! Feedback across replicas over real HTTP (`serve --peer-domain`): two replicas, "replica-a"
//! and "replica-b", sharing a feedback folder and a bearer token, each knowing the other's
//! address through `PeerConfig::resolve` (no DNS in tests). Decision ids name the replica that
//! made them; feedback sent to the other replica is forwarded, with the client's token, to the
//! one that made the decision, which writes it to its own file; a forwarded request is never
//! forwarded again; a replica that is gone is a 404 naming it, one that hangs a 504, one that
//! breaks the exchange a 502; `sapllm_feedback_forwarded_total{result}` counts each.
//!
//! The backend is a stub whose decisions are known in advance (the engine is tested elsewhere).

mod serve_support;

use std::net::SocketAddr;
use std::path::Path;

use hyper::StatusCode;
use sapllm_serve::Server;
use sapllm_serve::feedback::FeedbackConfig;
use sapllm_serve::peers::{FORWARDED_HEADER, PeerConfig};
use serde_json::{Value, json};
use serve_support::*;

const TOKEN: &str = "peer-secret";
const AUTH: (&str, &str) = ("authorization", "Bearer peer-secret");

/// A replica named `name` writing feedback in `dir`, reaching the replicas of `resolve` at
/// their addresses, with a request (and forwarding) timeout of `timeout_ms`.
async fn replica(name: &str, dir: &Path, resolve: &[(&str, SocketAddr)], timeout_ms: u64) -> Server {
    let mut cfg = config(4, 16, timeout_ms);
    cfg.auth_token = Some(TOKEN.into());
    let mut peers = PeerConfig::new("ep-peers.ns.svc", name).expect("peer config");
    peers.resolve = resolve.iter().map(|(n, a)| (n.to_string(), *a)).collect();
    cfg.feedback = Some(FeedbackConfig {
        // The file is named by the pod, not by its name under the peers.
        replica: format!("pod-{name}"),
        peers: Some(peers),
        ..FeedbackConfig::new(dir.to_path_buf())
    });
    let loader: sapllm_serve::Loader<stub::Stub> = Box::new(|| Ok((stub::stable(), info())));
    let mut server = sapllm_serve::start(cfg, loader).await.expect("start");
    server.ready().await.expect("ready");
    server
}

/// Routes sample document `i` at `addr`: the decision id.
async fn decide(addr: SocketAddr, i: usize) -> String {
    let r = post_json(addr, "/v1/route", &[AUTH], &route_body(i)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.json()["decision_id"].as_str().expect("decision_id").to_string()
}

fn posted(id: &str, number: &str) -> String {
    json!({"decision_id": id, "outcome": "posted", "document_number": number, "note": "sent to the other replica"})
        .to_string()
}

/// The lines of replica `replica`'s file, `dir/feedback-pod-<replica>.jsonl` (none when it does
/// not exist).
fn lines(dir: &Path, replica: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join(format!("feedback-pod-{replica}.jsonl"))).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
}

/// The value of series `key` (name and labels, as exposed) in `/metrics` of `addr`.
async fn metric(addr: SocketAddr, key: &str) -> f64 {
    let text = get(addr, "/metrics", &[]).await.body;
    let line = text.lines().find(|l| l.rsplit_once(' ').is_some_and(|(k, _)| k == key));
    line.and_then(|l| l.rsplit_once(' '))
        .map_or_else(|| panic!("no series {key} in:\n{text}"), |(_, v)| v.parse().expect("a number"))
}

async fn forwarded(addr: SocketAddr, result: &str) -> f64 {
    metric(addr, &format!("sapllm_feedback_forwarded_total{{result=\"{result}\"}}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_reaches_the_replica_that_made_the_decision() {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = replica("replica-a", dir.path(), &[], 30_000).await;
    let b = replica("replica-b", dir.path(), &[("replica-a", a.addr)], 30_000).await;
    for result in ["ok", "unreachable", "timeout", "error"] {
        assert_eq!(forwarded(b.addr, result).await, 0.0, "{result}: the series start at 0");
    }

    // Ids name the replica that made them.
    let id = decide(a.addr, 0).await;
    let (uuid, name) = id.split_once('.').expect("a replica part");
    assert_eq!((uuid.len(), name), (36, "replica-a"), "{id}");
    let own = decide(b.addr, 1).await;
    assert!(own.ends_with(".replica-b"), "{own}");

    // Sent to B, recorded by A in A's file, with the body as the client sent it; the client gets
    // A's answer.
    let r = post_json(b.addr, "/v1/feedback", &[AUTH], &posted(&id, "4500000001")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json(), json!({"decision_id": id, "outcome": "posted", "status": "recorded"}));
    let on_a = lines(dir.path(), "replica-a");
    assert_eq!(on_a.len(), 1, "{on_a:?}");
    assert_eq!(on_a[0]["document_id"], id.as_str());
    assert_eq!(on_a[0]["feedback"]["document_number"], "4500000001");
    assert_eq!(on_a[0]["feedback"]["note"], "sent to the other replica");
    assert!(lines(dir.path(), "replica-b").is_empty());
    assert!(!dir.path().join("feedback-replica-a.jsonl").exists(), "the file is named by the pod");
    assert_eq!(metric(a.addr, "sapllm_feedback_total{outcome=\"posted\"}").await, 1.0);
    assert_eq!(metric(b.addr, "sapllm_feedback_total{outcome=\"posted\"}").await, 0.0);
    assert_eq!(forwarded(b.addr, "ok").await, 1.0);
    assert_eq!(forwarded(a.addr, "ok").await, 0.0, "A answered it itself");

    // Its own decisions B records itself.
    let r = post_json(b.addr, "/v1/feedback", &[AUTH], &posted(&own, "4500000002")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(lines(dir.path(), "replica-b")[0]["document_id"], own.as_str());
    assert_eq!(forwarded(b.addr, "ok").await, 1.0, "not forwarded");

    // A's refusal comes back as A gave it: status, body, content type.
    let bad = json!({"decision_id": id, "outcome": "lost"}).to_string();
    let r = post_json(b.addr, "/v1/feedback", &[AUTH], &bad).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.error_field(), "outcome");
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(forwarded(b.addr, "ok").await, 2.0, "answered, whatever the status");

    // Without the token B refuses before anything is forwarded.
    let r = post_json(b.addr, "/v1/feedback", &[], &posted(&id, "1")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert_eq!(forwarded(b.addr, "ok").await, 2.0);

    // A forwarded request is answered where it lands: B does not hold A's decision.
    let other = decide(a.addr, 2).await;
    let r =
        post_json(b.addr, "/v1/feedback", &[AUTH, (FORWARDED_HEADER, "1")], &posted(&other, "4500000003"))
            .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "unknown_decision");
    assert_eq!(forwarded(b.addr, "ok").await, 2.0, "not forwarded again");
    assert_eq!(lines(dir.path(), "replica-a").len(), 1);

    b.shutdown().await.expect("shutdown b");
    a.shutdown().await.expect("shutdown a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_is_gone_took_its_decisions_with_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = replica("replica-a", dir.path(), &[], 30_000).await;
    let id = decide(a.addr, 0).await;
    let gone = a.addr;
    a.shutdown().await.expect("shutdown a");

    let b = replica("replica-b", dir.path(), &[("replica-a", gone)], 30_000).await;
    let r = post_json(b.addr, "/v1/feedback", &[AUTH], &posted(&id, "4500000001")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let e = &r.json()["error"];
    assert_eq!((e["code"].as_str(), e["field"].as_str()), (Some("unknown_decision"), Some("decision_id")));
    let message = e["message"].as_str().unwrap_or_default();
    assert!(message.contains("\"replica-a\"") && message.contains("cannot be reached"), "{message}");
    assert_eq!(forwarded(b.addr, "unreachable").await, 1.0);
    assert_eq!(forwarded(b.addr, "ok").await, 0.0);
    assert!(lines(dir.path(), "replica-a").is_empty() && lines(dir.path(), "replica-b").is_empty());
    b.shutdown().await.expect("shutdown b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_hangs_is_a_504_and_one_that_breaks_a_502() {
    use tokio::io::AsyncReadExt;
    // Reads a request, then holds the connection without answering.
    let hangs = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    // Reads a request, then closes the connection.
    let breaks = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let resolve = [("replica-c", hangs.local_addr().unwrap()), ("replica-d", breaks.local_addr().unwrap())];
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = hangs.accept().await {
            let _ = s.read(&mut [0u8; 4096]).await;
            held.push(s);
        }
    });
    tokio::spawn(async move {
        while let Ok((mut s, _)) = breaks.accept().await {
            let _ = s.read(&mut [0u8; 4096]).await;
        }
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let b = replica("replica-b", dir.path(), &resolve, 1_000).await;
    let uuid = "3f2c1a9e-8b7d-4c6e-9a5b-0d1e2f3a4b5c";

    let t = std::time::Instant::now();
    let r = post_json(b.addr, "/v1/feedback", &[AUTH], &posted(&format!("{uuid}.replica-c"), "1")).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{}", r.body);
    assert!(t.elapsed() < std::time::Duration::from_secs(10), "bounded by the request timeout");
    assert!(r.json()["error"]["message"].as_str().unwrap_or_default().contains("replica-c"), "{}", r.body);
    assert_eq!(forwarded(b.addr, "timeout").await, 1.0);

    let r = post_json(b.addr, "/v1/feedback", &[AUTH], &posted(&format!("{uuid}.replica-d"), "1")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.body);
    assert_eq!(forwarded(b.addr, "error").await, 1.0);
    assert_eq!(forwarded(b.addr, "ok").await, 0.0);
    b.shutdown().await.expect("shutdown b");
}
