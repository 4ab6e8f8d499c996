//! The feedback loop over real HTTP: every routing answer carries a `decision_id`;
//! `POST /v1/feedback` (posted / rejected / corrected) appends a transaction-log line that
//! data-prep's own reader reads back into the expected records (and data-prep turns into
//! training examples, a rejection into an exception example); unknown ids are 404, invalid
//! bodies 422 naming the field, no `--feedback-dir` a 404 saying how to enable it, and a graceful
//! shutdown leaves every accepted line on disk.
//!
//! The backend is a stub that routes every document to its first candidate with a fixed payload,
//! so the outcomes are known in advance (the engine itself is tested elsewhere).

mod serve_support;

use std::path::{Path, PathBuf};

use hyper::StatusCode;
use sapllm_serve::feedback::FeedbackConfig;
use sapllm_worker::dataprep::log::{LogReader, parse_line};
use serde_json::{Value, json};
use serve_support::*;

/// Routes every document to its first candidate, posting `{"CompanyCode": "1010"}`.
fn stub_loader() -> sapllm_serve::Loader<stub::Stub> {
    Box::new(|| Ok((stub::stable(), info())))
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sapllm-feedback-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn feedback_server(dir: &Path, capacity: usize) -> sapllm_serve::Server {
    let mut cfg = config(4, 16, 30_000);
    cfg.feedback = Some(FeedbackConfig {
        capacity,
        max_queue: 64,
        replica: "test-pod-0".into(),
        ..FeedbackConfig::new(dir.to_path_buf())
    });
    let mut server = sapllm_serve::start(cfg, stub_loader()).await.expect("start");
    server.ready().await.expect("ready");
    server
}

/// Routes sample document `i`: its decision (with `decision_id`) and the request body.
async fn route(addr: std::net::SocketAddr, i: usize) -> (Value, Value) {
    let body = route_body(i);
    let r = post_json(addr, "/v1/route", &[], &body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    (r.json(), serde_json::from_str(&body).unwrap())
}

async fn feedback(addr: std::net::SocketAddr, body: &Value) -> Resp {
    post_json(addr, "/v1/feedback", &[], &body.to_string()).await
}

fn lines(dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join("feedback-test-pod-0.jsonl")).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
}

fn v4_error() -> Value {
    json!({"http_status": 400, "error": {"code": "M8/186", "message": "Balance not zero",
        "target": "DocumentCurrency"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_becomes_transaction_log_lines_that_data_prep_reads() {
    let dir = temp_dir("roundtrip");
    let server = feedback_server(&dir, 100).await;
    let addr = server.addr;

    // Every decision carries a decision id, single and in a batch, each its own.
    let (posted, posted_req) = route(addr, 0).await;
    let (rejected, rejected_req) = route(addr, 1).await;
    let (corrected, _) = route(addr, 2).await;
    let ids: Vec<&str> = [&posted, &rejected, &corrected]
        .iter()
        .map(|d| d["decision_id"].as_str().expect("decision_id"))
        .collect();
    assert!(ids.iter().all(|id| id.len() == 36), "{ids:?}");
    assert!(ids[0] != ids[1] && ids[1] != ids[2]);
    let batch = json!({"requests": [posted_req, rejected_req]}).to_string();
    let r = post_json(addr, "/v1/route/batch", &[], &batch).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let b = r.json();
    let (b0, b1) =
        (&b["decisions"][0]["decision"]["decision_id"], &b["decisions"][1]["decision"]["decision_id"]);
    assert!(b0.is_string() && b1.is_string() && b0 != b1, "{b}");

    // Posted, rejected (a V4 envelope), corrected by a person to another endpoint with a payload.
    let r =
        feedback(addr, &json!({"decision_id": ids[0], "outcome": "posted", "document_number": "4500000123"}))
            .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["status"], "recorded");
    let r = feedback(addr, &json!({"decision_id": ids[1], "outcome": "rejected", "error": v4_error()})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // A person moves it to another API of the catalog.
    let corrected_endpoint = sapllm_sap::catalog::Catalog::builtin()
        .apis
        .iter()
        .filter(|a| !a.read_only)
        .map(|a| a.endpoint())
        .find(|e| corrected["endpoint"] != e.as_str())
        .expect("another endpoint");
    let corrected_endpoint = corrected_endpoint.as_str();
    let r = feedback(
        addr,
        &json!({"decision_id": ids[2], "outcome": "corrected", "note": "sales, not purchasing",
            "correction": {"endpoint": corrected_endpoint, "payload": {"SalesOrderType": "OR"}}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // Answered = on disk, in data-prep's format.
    let written = lines(&dir);
    assert_eq!(written.len(), 3, "{written:?}");
    let m = get(addr, "/metrics", &[]).await.body;
    for o in ["posted", "rejected", "corrected"] {
        assert!(m.contains(&format!("sapllm_feedback_total{{outcome=\"{o}\"}} 1")), "{m}");
    }
    server.shutdown().await.expect("shutdown");

    // Data-prep's reader, line by line.
    let path = dir.join("feedback-test-pod-0.jsonl");
    let mut reader = LogReader::open(&path).expect("open");
    let chunk = reader.next_chunk(100).expect("read");
    let recs: Vec<_> =
        chunk.iter().map(|(n, l)| parse_line(*n, l).expect("data-prep reads the line")).collect();
    assert_eq!(recs.len(), 3);

    let p = &recs[0].log;
    assert_eq!(p.document_id, ids[0]);
    assert_eq!(p.document_type, posted["doc_type"].as_str().unwrap());
    assert_eq!(p.extracted_data, posted_req["adc_json"], "the document as the client sent it");
    assert_eq!(p.routed_endpoint.as_deref(), posted["endpoint"].as_str());
    assert_eq!(p.sap_payload, Some(json!({"CompanyCode": "1010"})));
    assert!(p.success);
    assert_eq!(p.feedback["document_number"], "4500000123");
    assert!(p.processed_at.is_some() && recs[0].processed_at.is_some());

    let x = &recs[1].log;
    assert!(!x.success);
    assert_eq!(x.routed_endpoint.as_deref(), rejected["endpoint"].as_str());
    // The failure as data-prep's exception examples read it (V4 normalised to V2's envelope).
    let failure: sapllm_sap::exceptions::SapFailure =
        serde_json::from_value(x.feedback.clone()).expect("a SAP failure");
    assert_eq!(failure.http_status, 400);
    assert_eq!(failure.body.error.code, "M8/186");
    assert_eq!(failure.body.propertyref(), Some("DocumentCurrency"));

    let c = &recs[2].log;
    assert!(c.success);
    assert_eq!(c.routed_endpoint.as_deref(), corrected["endpoint"].as_str(), "the router's choice stays");
    assert_eq!(c.feedback["correct_endpoint"], corrected_endpoint);
    assert_eq!(c.feedback["note"], "sales, not purchasing");
    assert_eq!(c.sap_payload, Some(json!({"SalesOrderType": "OR"})));

    // The whole data-prep stage on the folder (what a TrainingRun's `data.transactionLogs`
    // names): three routing examples, the rejection also an exception example, the correction's
    // target the corrected endpoint.
    let out = dir.join("prep");
    let cfg = sapllm_worker::dataprep::DataPrepConfig {
        source: sapllm_worker::dataprep::Source::LogFile(dir.clone()),
        output_dir: out.clone(),
        split: sapllm_worker::dataprep::SplitFractions { train: 1.0, val: 0.0, test: 0.0 },
        progress: sapllm_worker::progress::ProgressMode::Quiet,
        ..Default::default()
    };
    let card = sapllm_worker::dataprep::run(&cfg).expect("data-prep on the feedback file");
    assert_eq!(card.records_read, 3, "{card:?}");
    let examples: Vec<Value> = std::fs::read_to_string(out.join("train_routing_examples.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by_id = |id: &str| examples.iter().find(|e| e["doc_id"] == id).cloned().expect("an example per line");
    assert_eq!(by_id(ids[0])["target_endpoint"], posted["endpoint"]);
    assert_eq!(by_id(ids[2])["target_endpoint"], corrected_endpoint);
    assert_eq!(by_id(ids[2])["target_payload"], json!({"SalesOrderType": "OR"}));
    let exceptions = std::fs::read_to_string(out.join("exception_examples.jsonl")).unwrap();
    assert!(exceptions.contains(ids[1]) && exceptions.contains("M8/186"), "{exceptions}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_and_invalid_bodies_name_the_problem() {
    let dir = temp_dir("invalid");
    let server = feedback_server(&dir, 2).await;
    let addr = server.addr;
    let (d, _) = route(addr, 0).await;
    let id = d["decision_id"].as_str().unwrap().to_string();

    // An unknown id: 404 naming the id and the capacity.
    let r =
        feedback(addr, &json!({"decision_id": "nope", "outcome": "posted", "document_number": "1"})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("\"nope\"") && msg.contains("last 2 decisions"), "{msg}");

    let cases = [
        (json!({"outcome": "posted", "document_number": "1"}), "decision_id"),
        (json!({"decision_id": 7, "outcome": "posted"}), "decision_id"),
        (json!({"decision_id": id, "outcome": "lost"}), "outcome"),
        (json!({"decision_id": id, "outcome": "posted"}), "document_number"),
        (json!({"decision_id": id, "outcome": "posted", "document_number": ""}), "document_number"),
        (
            json!({"decision_id": id, "outcome": "posted", "document_number": "1", "error": v4_error()}),
            "error",
        ),
        (json!({"decision_id": id, "outcome": "rejected"}), "error"),
        (json!({"decision_id": id, "outcome": "rejected", "error": {"http_status": 400}}), "error.error"),
        (
            json!({"decision_id": id, "outcome": "rejected", "error": {"http_status": "x", "error": {"code": "A", "message": "m"}}}),
            "error.http_status",
        ),
        (
            json!({"decision_id": id, "outcome": "rejected", "error": {"http_status": 200, "error": {"code": "A", "message": "m"}}}),
            "error.http_status",
        ),
        (json!({"decision_id": id, "outcome": "corrected"}), "correction"),
        (json!({"decision_id": id, "outcome": "corrected", "correction": {}}), "correction"),
        (
            json!({"decision_id": id, "outcome": "corrected", "correction": {"endpoint": "API_NOPE/X"}}),
            "correction.endpoint",
        ),
        (
            json!({"decision_id": id, "outcome": "corrected", "correction": {"payload": [1]}}),
            "correction.payload",
        ),
        (
            json!({"decision_id": id, "outcome": "corrected", "correction": {"endpont": "x"}}),
            "correction.endpont",
        ),
        (
            json!({"decision_id": id, "outcome": "corrected", "correction": {"endpoint": "EXCEPTION_HANDLING", "payload": {"A": 1}}}),
            "correction.payload",
        ),
    ];
    for (body, field) in cases {
        let r = feedback(addr, &body).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {}", r.body);
        assert_eq!(r.error_field(), field, "{body}: {}", r.body);
    }
    // Malformed JSON is a 400 like on every route.
    let r = post_json(addr, "/v1/feedback", &[], "{not json").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(lines(&dir).is_empty(), "nothing invalid was written");

    // The store keeps the last 2 decisions: the first expires after two more.
    route(addr, 1).await;
    route(addr, 2).await;
    let r = feedback(addr, &json!({"decision_id": id, "outcome": "posted", "document_number": "1"})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    server.shutdown().await.expect("shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_feedback_dir_feedback_says_how_to_enable_it() {
    let mut server = sapllm_serve::start(config(4, 16, 30_000), stub_loader()).await.expect("start");
    server.ready().await.expect("ready");
    let (d, _) = route(server.addr, 0).await;
    assert!(d["decision_id"].is_string(), "ids are given even without feedback: {d}");
    let r = feedback(
        server.addr,
        &json!({"decision_id": d["decision_id"], "outcome": "posted", "document_number": "1"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "feedback_disabled");
    assert!(r.body.contains("--feedback-dir") && r.body.contains("spec.feedback.claimName"), "{}", r.body);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_keeps_every_accepted_feedback() {
    let dir = temp_dir("drain");
    let server = feedback_server(&dir, 100).await;
    let addr = server.addr;
    let mut ids = Vec::new();
    for i in 0..8 {
        let (d, _) = route(addr, i).await;
        ids.push(d["decision_id"].as_str().unwrap().to_string());
    }
    // One answered before shutdown.
    let body = json!({"decision_id": ids[0], "outcome": "posted", "document_number": "4711"});
    assert_eq!(feedback(addr, &body).await.status, StatusCode::OK);
    // Feedback in flight while shutdown begins: every one answered 200 is in the file.
    let sends: Vec<_> = ids[1..]
        .iter()
        .map(|id| {
            let body = json!({"decision_id": id, "outcome": "posted", "document_number": "4711"});
            tokio::spawn(async move { feedback(addr, &body).await.status })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    server.shutdown().await.expect("graceful shutdown");
    let mut accepted = 1;
    for s in sends {
        if let Ok(status) = s.await
            && status == StatusCode::OK
        {
            accepted += 1;
        }
    }
    let written = lines(&dir);
    assert!(written.len() >= accepted, "{accepted} answered, {} written", written.len());
    for l in &written {
        assert!(ids.iter().any(|id| l["document_id"] == id.as_str()), "{l}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A routing decision asked for through the OpenAI-compatible chat endpoint carries its
/// `decision_id` in the assistant's JSON content, and feedback for it is recorded like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_routing_decision_takes_feedback_too() {
    let dir = temp_dir("chat");
    let server = feedback_server(&dir, 100).await;
    let addr = server.addr;
    let doc = route_body(3);
    let chat = json!({"model": "sapllm", "messages": [{"role": "user", "content": doc}]}).to_string();
    let r = post_json(addr, "/v1/chat/completions", &[], &chat).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let content: Value =
        serde_json::from_str(r.json()["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    let id = content["decision_id"].as_str().expect("decision_id in the content").to_string();
    assert!(content["endpoint"].is_string(), "{content}");
    let body = json!({"decision_id": id, "outcome": "posted", "document_number": "4500000999"});
    let r = feedback(addr, &body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let written = lines(&dir);
    assert_eq!(written.len(), 1, "{written:?}");
    assert_eq!(written[0]["document_id"], id.as_str());
    server.shutdown().await.expect("shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}
