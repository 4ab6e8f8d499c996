//! The feedback loop: every routing decision gets a `decision_id`; `POST /v1/feedback` says what
//! SAP (or a person) did with it, and the endpoint appends that, with the decision and its
//! document, as one transaction-log line in the format data-prep reads
//! (`worker/src/dataprep/README.md`), so a TrainingRun can train on production.
//!
//! - [`DecisionStore`]: the last `capacity` decisions with their documents, within a byte budget
//!   (bounded memory; the oldest is forgotten first). Feedback for an id it no longer holds is a 404.
//!   The store is this replica's: with `--peer-domain`, ids name the replica that made them and
//!   feedback for another replica's decision is forwarded there ([`super::peers`]).
//! - [`FeedbackLog`]: a bounded queue to one writer thread that appends the lines to
//!   `<dir>/feedback-<replica>.jsonl` (one file per replica, so replicas sharing a volume never
//!   write the same file), and flushes and fsyncs each batch before the requests are answered:
//!   an answered feedback is on disk. A full queue is a 503 with Retry-After. On shutdown the
//!   queue is drained before the writer ends ([`FeedbackLog::close`]).

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::body::JsonBytes;
use super::error::ApiError;
use super::peers::{PeerConfig, Peers};
use super::state::SharedState;
use sapllm_engine::request::FieldError;
use sapllm_sap::catalog::{Catalog, EXCEPTION_ENDPOINT};
use sapllm_sap::documents::normalize::normalize;
use sapllm_sap::documents::{AdcDocument, DocType};
use sapllm_sap::exceptions::SapFailure;

/// Feedback settings (`serve --feedback-dir`).
#[derive(Debug, Clone)]
pub struct FeedbackConfig {
    /// Folder the feedback files are appended in (created if missing).
    pub dir: PathBuf,
    /// Recent decisions kept for joining feedback (`--feedback-capacity`).
    pub capacity: usize,
    /// Bytes of documents and payloads those decisions may hold at most
    /// (`--feedback-memory-mib`); the oldest are forgotten first beyond.
    pub max_bytes: usize,
    /// Feedback lines waiting for the writer at most; beyond, 503 + Retry-After.
    pub max_queue: usize,
    /// This replica's name in the file name (`POD_NAME`, else `HOSTNAME`, else `local`).
    pub replica: String,
    /// Feedback for other replicas' decisions forwarded to them (`--peer-domain`).
    pub peers: Option<PeerConfig>,
}

impl FeedbackConfig {
    pub fn new(dir: PathBuf) -> Self {
        FeedbackConfig {
            dir,
            capacity: 10_000,
            max_bytes: 256 << 20,
            max_queue: 1024,
            replica: replica_name(),
            peers: None,
        }
    }

    /// `<dir>/feedback-<replica>.jsonl`: one file per pod, named by the pod (a pod's address,
    /// its name under the peers, is reused by later pods).
    pub fn file(&self) -> PathBuf {
        self.dir.join(format!("feedback-{}.jsonl", self.replica))
    }
}

/// The replica's name from `POD_NAME` or `HOSTNAME` (file-name safe), else `local`.
pub fn replica_name() -> String {
    let raw = std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.trim().is_empty()))
        .unwrap_or_else(|| "local".into());
    raw.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect()
}

/// A new decision id: a random UUID (version 4 form).
pub fn new_decision_id() -> String {
    let mut v: u128 = rand::random();
    v = (v & !(0xf << 76)) | (0x4 << 76);
    v = (v & !(0x3 << 62)) | (0x2 << 62);
    let s = format!("{v:032x}");
    format!("{}-{}-{}-{}-{}", &s[0..8], &s[8..12], &s[12..16], &s[16..20], &s[20..32])
}

/// A decision as feedback needs it: the document and what was decided.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDecision {
    /// Canonical document type.
    pub doc_type: String,
    /// The document as the client sent it.
    pub adc_json: Value,
    pub endpoint: String,
    pub payload: Value,
}

/// Decisions by id, the ids oldest first with their sizes, and the bytes held.
#[derive(Default)]
struct Recent {
    map: HashMap<String, Arc<StoredDecision>>,
    order: VecDeque<(String, usize)>,
    bytes: usize,
}

/// The last `capacity` decisions by id, holding at most about `max_bytes` of documents and
/// payloads (insertion order; the oldest goes first).
pub struct DecisionStore {
    capacity: usize,
    max_bytes: usize,
    inner: Mutex<Recent>,
}

impl StoredDecision {
    /// Approximate bytes held (the JSON sizes of the document and the payload).
    fn size(&self) -> usize {
        let json = |v: &Value| serde_json::to_vec(v).map_or(0, |b| b.len());
        json(&self.adc_json) + json(&self.payload) + self.endpoint.len() + self.doc_type.len() + 64
    }
}

impl DecisionStore {
    pub fn new(capacity: usize, max_bytes: usize) -> Self {
        DecisionStore { capacity: capacity.max(1), max_bytes, inner: Mutex::new(Recent::default()) }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn insert(&self, id: String, d: StoredDecision) {
        let size = d.size();
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let r = &mut *g;
        if let Some(old) = r.map.remove(&id) {
            // Ids are random: a repeat replaces (and is counted) like a new one.
            r.order.retain(|(o, _)| *o != id);
            r.bytes = r.bytes.saturating_sub(old.size());
        }
        while r.order.len() >= self.capacity || (!r.order.is_empty() && r.bytes + size > self.max_bytes) {
            if let Some((old, n)) = r.order.pop_front() {
                r.map.remove(&old);
                r.bytes = r.bytes.saturating_sub(n);
            }
        }
        r.map.insert(id.clone(), Arc::new(d));
        r.order.push_back((id, size));
        r.bytes += size;
    }

    pub fn get(&self, id: &str) -> Option<Arc<StoredDecision>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).map.get(id).cloned()
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Approximate bytes held.
    pub fn bytes(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).bytes
    }
}

type Line = (String, oneshot::Sender<Result<(), String>>);

/// Why a line was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendError {
    Full,
    Closed,
}

/// The queue to the writer thread.
pub struct FeedbackLog {
    tx: Mutex<Option<mpsc::Sender<Line>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    path: PathBuf,
}

impl FeedbackLog {
    /// Creates the folder, opens the file for appending and starts the writer thread.
    pub fn open(cfg: &FeedbackConfig) -> Result<FeedbackLog> {
        std::fs::create_dir_all(&cfg.dir)
            .with_context(|| format!("creating --feedback-dir {}", cfg.dir.display()))?;
        let path = cfg.file();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening feedback file {}", path.display()))?;
        let (tx, rx) = mpsc::channel::<Line>(cfg.max_queue.max(1));
        let p = path.clone();
        let writer = std::thread::Builder::new()
            .name("sapllm-feedback".into())
            .spawn(move || write_loop(file, &p, rx))
            .context("starting the feedback writer")?;
        Ok(FeedbackLog { tx: Mutex::new(Some(tx)), writer: Mutex::new(Some(writer)), path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues a line (without its newline); the receiver answers once it is fsynced.
    pub fn append(&self, line: String) -> Result<oneshot::Receiver<Result<(), String>>, AppendError> {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner()).clone().ok_or(AppendError::Closed)?;
        let (ack, rx) = oneshot::channel();
        tx.try_send((line, ack)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => AppendError::Full,
            mpsc::error::TrySendError::Closed(_) => AppendError::Closed,
        })?;
        Ok(rx)
    }

    /// Stops accepting lines, writes every queued one and waits for the writer to end.
    pub fn close(&self) {
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(w) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take()
            && w.join().is_err()
        {
            tracing::error!("the feedback writer panicked");
        }
    }
}

/// Lines written per fsync at most.
const WRITE_BATCH: usize = 256;

fn write_loop(mut file: File, path: &Path, mut rx: mpsc::Receiver<Line>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(l) => batch.push(l),
                Err(_) => break,
            }
        }
        let mut buf = String::new();
        for (line, _) in &batch {
            buf.push_str(line);
            buf.push('\n');
        }
        let before = file.metadata().map(|m| m.len()).ok();
        let result =
            file.write_all(buf.as_bytes()).and_then(|()| file.flush()).and_then(|()| file.sync_data());
        let result = match result {
            Ok(()) => Ok(()),
            Err(e) => {
                // No half line stays behind for the next batch to continue.
                if let Some(len) = before {
                    let _ = file.set_len(len);
                }
                tracing::error!(error = %e, file = %path.display(), "writing feedback failed");
                Err(format!("writing {}: {e}", path.display()))
            }
        };
        for (_, ack) in batch {
            let _ = ack.send(result.clone());
        }
    }
}

/// What SAP or a person did with a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Posted,
    Rejected,
    Corrected,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Outcome::Posted, Outcome::Rejected, Outcome::Corrected];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Posted => "posted",
            Outcome::Rejected => "rejected",
            Outcome::Corrected => "corrected",
        }
    }
}

/// `POST /v1/feedback` body. Every field is read loosely and checked by [`build_line`], so each
/// problem is a 422 naming its field.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FeedbackRequest {
    #[serde(default)]
    pub decision_id: Value,
    #[serde(default)]
    pub outcome: Value,
    /// With `posted`: SAP's document number.
    #[serde(default)]
    pub document_number: Option<Value>,
    /// With `rejected`: `{"http_status": 400, "error": {...}}` (OData V2 or V4 envelope).
    #[serde(default)]
    pub error: Option<Value>,
    /// With `corrected`: `{"endpoint"?, "payload"?}`.
    #[serde(default)]
    pub correction: Option<Value>,
    /// Optional free text kept in the line's feedback.
    #[serde(default)]
    pub note: Option<Value>,
}

fn invalid(field: &str, message: impl Into<String>) -> FieldError {
    FieldError::new(field, message)
}

/// The decision id of a request (a non-empty string of at most 128 characters).
pub fn decision_id(req: &FeedbackRequest) -> Result<&str, FieldError> {
    match &req.decision_id {
        Value::String(s) if !s.trim().is_empty() && s.len() <= 128 => Ok(s),
        Value::Null => Err(invalid("decision_id", "is required: the decision_id a routing answer carried")),
        v => Err(invalid(
            "decision_id",
            format!("must be the decision_id string a routing answer carried, got {v}"),
        )),
    }
}

/// The outcome of a request.
pub fn outcome(req: &FeedbackRequest) -> Result<Outcome, FieldError> {
    match req.outcome.as_str() {
        Some("posted") => Ok(Outcome::Posted),
        Some("rejected") => Ok(Outcome::Rejected),
        Some("corrected") => Ok(Outcome::Corrected),
        _ => Err(invalid(
            "outcome",
            format!("must be \"posted\", \"rejected\" or \"corrected\", got {}", req.outcome),
        )),
    }
}

/// Checks the request against its decision and builds the transaction-log line (one JSON object,
/// the fields of data-prep's `TransactionLog`). `today` is the processing date (ISO).
pub fn build_line(
    id: &str,
    outcome: Outcome,
    req: &FeedbackRequest,
    d: &StoredDecision,
    catalog: &Catalog,
    today: &str,
) -> Result<Value, FieldError> {
    let only_with = |field: &str, given: bool, with: Outcome| {
        if given && outcome != with {
            Err(invalid(
                field,
                format!("belongs to outcome \"{}\" only, not \"{}\"", with.as_str(), outcome.as_str()),
            ))
        } else {
            Ok(())
        }
    };
    only_with("document_number", req.document_number.is_some(), Outcome::Posted)?;
    only_with("error", req.error.is_some(), Outcome::Rejected)?;
    only_with("correction", req.correction.is_some(), Outcome::Corrected)?;
    let note = match &req.note {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() <= 2000 => Some(s.clone()),
        Some(_) => return Err(invalid("note", "must be a string of at most 2000 characters")),
    };
    // The line must be one data-prep can read: the same checks its reader makes.
    let doc_type: DocType = d
        .doc_type
        .parse()
        .map_err(|m: String| invalid("decision_id", format!("the decision's document: {m}")))?;
    let normalized = normalize(doc_type, &d.adc_json, &[]);
    AdcDocument::from_json(doc_type, &normalized.document).map_err(|e| {
        invalid(
            "decision_id",
            format!(
                "the decision's document cannot become a training example: extracted_data.{}: {}",
                normalized.origin(&e.path),
                e.message
            ),
        )
    })?;
    let payload = (!d.payload.is_null()).then(|| d.payload.clone());
    let (routed, sap_payload, success, mut feedback) = match outcome {
        Outcome::Posted => {
            let number = match &req.document_number {
                Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 64 => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                None | Some(Value::Null) => {
                    return Err(invalid(
                        "document_number",
                        "is required with outcome \"posted\": the number SAP gave the document",
                    ));
                }
                Some(v) => {
                    return Err(invalid(
                        "document_number",
                        format!("must be a non-empty string of at most 64 characters, got {v}"),
                    ));
                }
            };
            if d.endpoint == EXCEPTION_ENDPOINT {
                return Err(invalid(
                    "outcome",
                    "the decision sent the document to exception handling, so nothing was posted: send \"corrected\" with correction.endpoint",
                ));
            }
            (d.endpoint.clone(), payload, true, json!({"outcome": "posted", "document_number": number}))
        }
        Outcome::Rejected => {
            let err = match &req.error {
                Some(v) if !v.is_null() => v,
                _ => {
                    return Err(invalid(
                        "error",
                        "is required with outcome \"rejected\": SAP's answer, {\"http_status\": 400, \"error\": {\"code\", \"message\", ...}} (OData V2 or V4)",
                    ));
                }
            };
            let failure: SapFailure = serde_path_to_json(err).map_err(|(path, m)| {
                invalid(&if path == "." { "error".to_string() } else { format!("error.{path}") }, m)
            })?;
            if !(400..=599).contains(&failure.http_status) {
                return Err(invalid(
                    "error.http_status",
                    format!("must be an HTTP error status (400-599), got {}", failure.http_status),
                ));
            }
            if d.endpoint == EXCEPTION_ENDPOINT {
                return Err(invalid(
                    "outcome",
                    "the decision sent the document to exception handling, so SAP was not called: send \"corrected\" with correction.endpoint",
                ));
            }
            // The envelope as data-prep reads a failure (`http_status` + V2 `error`).
            let mut f = serde_json::to_value(&failure).map_err(|e| invalid("error", e.to_string()))?;
            f["outcome"] = json!("rejected");
            (d.endpoint.clone(), payload, false, f)
        }
        Outcome::Corrected => {
            let c = match &req.correction {
                Some(Value::Object(c)) => c,
                _ => {
                    return Err(invalid(
                        "correction",
                        "is required with outcome \"corrected\": {\"endpoint\"?, \"payload\"?}, at least one of them",
                    ));
                }
            };
            if let Some(k) = c.keys().find(|k| *k != "endpoint" && *k != "payload") {
                return Err(invalid(
                    &format!("correction.{k}"),
                    "unknown field: a correction has endpoint and payload",
                ));
            }
            let endpoint = match c.get("endpoint") {
                None | Some(Value::Null) => None,
                Some(Value::String(e)) => {
                    let known = e == EXCEPTION_ENDPOINT || catalog.apis.iter().any(|a| a.endpoint() == *e);
                    if !known {
                        return Err(invalid(
                            "correction.endpoint",
                            format!(
                                "{e:?} is no endpoint of the catalog (API_NAME/EntitySet) nor {EXCEPTION_ENDPOINT}"
                            ),
                        ));
                    }
                    Some(e.clone())
                }
                Some(v) => return Err(invalid("correction.endpoint", format!("must be a string, got {v}"))),
            };
            let corrected_payload = match c.get("payload") {
                None | Some(Value::Null) => None,
                Some(p @ Value::Object(_)) => Some(p.clone()),
                Some(v) => {
                    return Err(invalid(
                        "correction.payload",
                        format!("must be the JSON object to post, got {v}"),
                    ));
                }
            };
            if endpoint.is_none() && corrected_payload.is_none() {
                return Err(invalid("correction", "give endpoint, payload or both"));
            }
            let final_endpoint = endpoint.clone().unwrap_or_else(|| d.endpoint.clone());
            if final_endpoint == EXCEPTION_ENDPOINT && corrected_payload.is_some() {
                return Err(invalid(
                    "correction.payload",
                    format!("nothing is posted to {EXCEPTION_ENDPOINT}: leave payload out"),
                ));
            }
            // The payload posted: the corrected one; the decision's when only the payload's
            // endpoint stayed; none when the endpoint changed without a payload (data-prep then
            // derives it from the document).
            let sap_payload = if final_endpoint == EXCEPTION_ENDPOINT {
                None
            } else {
                corrected_payload.or_else(|| (final_endpoint == d.endpoint).then_some(payload).flatten())
            };
            let mut f = json!({"outcome": "corrected"});
            if let Some(e) = &endpoint
                && *e != d.endpoint
            {
                // data-prep's misroute form: the router's endpoint stays in `routed_endpoint`.
                f["correct_endpoint"] = json!(e);
            }
            (d.endpoint.clone(), sap_payload, true, f)
        }
    };
    feedback["decision_id"] = json!(id);
    if let Some(n) = note {
        feedback["note"] = json!(n);
    }
    let mut line = json!({
        "document_id": id,
        "document_type": d.doc_type,
        "extracted_data": d.adc_json,
        "routed_endpoint": routed,
        "success": success,
        "feedback": feedback,
        "processed_at": today,
    });
    if let Some(p) = sap_payload {
        line["sap_payload"] = p;
    }
    Ok(line)
}

/// Deserializes with the path of the failing field.
fn serde_path_to_json<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, (String, String)> {
    let text = v.to_string();
    sapllm_engine::request::parse_json::<T>(text.as_bytes()).map_err(|e| (e.field, e.message))
}

/// `POST /v1/feedback`: 200 once the line is on disk. With peers, feedback for another
/// replica's decision is that replica's answer ([`super::peers`]).
pub async fn feedback(
    State(state): State<SharedState>,
    headers: HeaderMap,
    JsonBytes(req, body): JsonBytes<FeedbackRequest>,
) -> Result<Response, ApiError> {
    let Some(fb) = &state.feedback else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "feedback_disabled",
            "feedback is not enabled on this endpoint: start serve with --feedback-dir PATH \
             (a RoutingEndpoint does so when spec.feedback.claimName is set)",
        ));
    };
    let id = decision_id(&req).map_err(ApiError::invalid)?;
    if let Some(peers) = &fb.peers
        && let Some(replica) = peers.owner(id, &headers)
    {
        // The replica that made it checks the rest.
        return Ok(peers.forward(id, replica, body, headers.get(header::AUTHORIZATION)).await);
    }
    let outcome = outcome(&req).map_err(ApiError::invalid)?;
    let Some(d) = fb.store.get(id) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_decision",
            format!(
                "no recent decision has decision_id {id:?}: this replica keeps its last {} decisions \
                 (--feedback-capacity, within --feedback-memory-mib); the id is older, was made by \
                 another replica, or never existed",
                fb.store.capacity()
            ),
        )
        .field("decision_id"));
    };
    let today = chrono::Utc::now().date_naive().format("%Y-%m-%d").to_string();
    let line = build_line(id, outcome, &req, &d, &state.catalog, &today).map_err(ApiError::invalid)?;
    let ack = fb.log.append(line.to_string()).map_err(|e| match e {
        AppendError::Full => ApiError {
            retry_after: Some(state.retry_after_s),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "feedback_queue_full",
                "the feedback queue is full; retry later",
            )
        },
        AppendError::Closed => {
            ApiError::unavailable("the endpoint is shutting down; send the feedback again")
        }
    })?;
    match ack.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "feedback_write_failed", e));
        }
        Err(_) => return Err(ApiError::unavailable("the feedback writer stopped")),
    }
    state.metrics.feedback.with_label_values(&[outcome.as_str()]).inc();
    Ok(Json(json!({"decision_id": id, "outcome": outcome.as_str(), "status": "recorded"})).into_response())
}

/// The feedback side of the shared state.
pub struct Feedback {
    pub store: DecisionStore,
    pub log: FeedbackLog,
    /// Forwarding to the other replicas (`--peer-domain`).
    pub peers: Option<Peers>,
}

impl Feedback {
    pub fn open(cfg: &FeedbackConfig, peers: Option<Peers>) -> Result<Feedback> {
        Ok(Feedback {
            store: DecisionStore::new(cfg.capacity, cfg.max_bytes),
            log: FeedbackLog::open(cfg)?,
            peers,
        })
    }

    /// A new decision id: `<uuid>.<replica>` with peers, else a uuid.
    pub fn new_decision_id(&self) -> String {
        self.peers.as_ref().map_or_else(new_decision_id, Peers::decision_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_ids_are_uuids() {
        let a = new_decision_id();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert_ne!(a, new_decision_id());
    }

    #[test]
    fn close_writes_every_queued_line() {
        let dir = std::env::temp_dir().join(format!("sapllm-feedback-close-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = FeedbackConfig { max_queue: 100, replica: "r".into(), ..FeedbackConfig::new(dir.clone()) };
        let log = FeedbackLog::open(&cfg).unwrap();
        // Queued, nobody waits for the answers.
        let acks: Vec<_> = (0..50).map(|i| log.append(format!("{{\"n\":{i}}}")).unwrap()).collect();
        log.close();
        assert_eq!(log.append("{}".into()).unwrap_err(), AppendError::Closed);
        let text = std::fs::read_to_string(cfg.file()).unwrap();
        assert_eq!(text.lines().count(), 50);
        assert!(text.lines().enumerate().all(|(i, l)| l == format!("{{\"n\":{i}}}")));
        drop(acks);
        // A full queue refuses instead of growing.
        let cfg = FeedbackConfig { max_queue: 1, ..cfg };
        let log = FeedbackLog::open(&cfg).unwrap();
        let mut refused = false;
        let mut held = Vec::new();
        for _ in 0..10_000 {
            match log.append("{}".into()) {
                Ok(a) => held.push(a),
                Err(e) => {
                    assert_eq!(e, AppendError::Full);
                    refused = true;
                    break;
                }
            }
        }
        assert!(refused, "a queue of 1 never filled");
        log.close();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_store_forgets_the_oldest() {
        let s = DecisionStore::new(2, 1 << 20);
        let d = StoredDecision {
            doc_type: "purchase_order".into(),
            adc_json: json!({}),
            endpoint: "E".into(),
            payload: Value::Null,
        };
        for id in ["a", "b", "c"] {
            s.insert(id.into(), d.clone());
        }
        assert_eq!(s.len(), 2);
        assert!(s.get("a").is_none());
        assert!(s.get("b").is_some() && s.get("c").is_some());
        // A byte budget of about two decisions keeps two, however many the count allows.
        let size = d.size();
        let s = DecisionStore::new(100, 2 * size + size / 2);
        for id in ["a", "b", "c", "d"] {
            s.insert(id.into(), d.clone());
        }
        assert_eq!(s.len(), 2);
        assert!(s.get("c").is_some() && s.get("d").is_some());
        assert_eq!(s.bytes(), 2 * size);
    }
}
