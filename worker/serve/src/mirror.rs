//! Decision agreement for canary rollouts (`serve --mirror-to`).
//!
//! During a rollout a new model version runs as a canary beside the stable one, and the operator
//! judges it on live signals. One of them is whether it decides like the version it would
//! replace, on real traffic: a stable server sends a random sample (`--mirror-fraction`) of its
//! successful `/v1/route` and `/v1/route/batch` requests to the canary's Service, compares the
//! canary's decisions with its own, and counts the outcomes in `/metrics`
//! ([`Metrics::mirror_comparisons`] and its neighbours), which the operator reads.
//!
//! A mirror never delays or changes the client's answer: it runs in its own task after the
//! answer is made, at most `--mirror-concurrency` at a time (a sampled request beyond is skipped
//! and counted), each bounded by `--mirror-timeout-ms`. A mirrored request carries
//! [`MIRROR_HEADER`], so the canary neither mirrors it again nor keeps its decision for feedback
//! (no client ever sees that decision's id). Mirrors in flight at shutdown are abandoned: they
//! are a sample, and they hold nothing the shutdown waits for (see [`Mirror::close`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, Uri, header};
use http_body_util::Full;
use serde_json::Value;
use tokio::sync::{Semaphore, watch};

use super::metrics::Metrics;
use super::upstream::{self, Client};
use sapllm_engine::types::RoutingDecision;

/// Marks a request as a mirror (value `1`): answered normally, but not mirrored again and its
/// decision not kept for feedback.
pub const MIRROR_HEADER: &str = "x-sapllm-mirror";
/// The serving model's version (`--model-version`) on every `/v1/route` and `/v1/route/batch`
/// answer; the mirror labels its comparisons with the other side's.
pub const MODEL_VERSION_HEADER: &str = "x-sapllm-model-version";

/// `--mirror-fraction` when none is given.
pub const DEFAULT_FRACTION: f64 = 0.1;
/// `--mirror-concurrency` when none is given.
pub const DEFAULT_CONCURRENCY: usize = 4;
/// Bytes of a mirror's answer read at most (a batch of 64 decisions fits many times over).
const MAX_ANSWER_BYTES: usize = 16 << 20;
/// Characters of the other side's version kept as a label value (a digest is 71).
const MAX_VERSION_CHARS: usize = 128;

/// Comparison outcomes (`sapllm_mirror_comparisons_total{outcome}`).
pub const OUTCOMES: [&str; 3] = ["agreed", "endpoint_differs", "values_differ"];
/// Failure reasons (`sapllm_mirror_failures_total{reason}`).
pub const FAILURE_REASONS: [&str; 5] = ["unreachable", "timeout", "status", "invalid", "skipped"];

/// Mirroring settings.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorConfig {
    /// The other server's base URL, `http://host[:port][/prefix]`, without a trailing slash.
    pub base_url: String,
    /// Share of successful routing requests mirrored, in (0, 1].
    pub fraction: f64,
    /// Mirrors in flight at most.
    pub concurrency: usize,
    /// Time a mirror may take in all (connect, request, answer).
    pub timeout: Duration,
    /// How long mirroring pauses after the other server could not be reached; doubled on each
    /// further failure up to [`MAX_PAUSE`], reset by an answer.
    pub pause: Duration,
}

/// The first pause after the other server could not be reached.
pub const FIRST_PAUSE: Duration = Duration::from_secs(1);
/// The longest pause: a canary that starts is mirrored to within this time.
pub const MAX_PAUSE: Duration = Duration::from_secs(30);

impl MirrorConfig {
    /// Validated settings; the errors name the serve flag at fault.
    pub fn new(url: &str, fraction: f64, concurrency: usize, timeout: Duration) -> Result<Self> {
        let base_url = parse_base_url(url)?;
        if !(fraction > 0.0 && fraction <= 1.0) {
            bail!(
                "--mirror-fraction must be in (0, 1] (the share of routing requests mirrored; \
                 0.1 = one in ten), got {fraction}"
            );
        }
        if concurrency == 0 {
            bail!("--mirror-concurrency must be at least 1 (mirrors in flight at most)");
        }
        if timeout.is_zero() {
            bail!("--mirror-timeout-ms must be at least 1");
        }
        Ok(MirrorConfig { base_url, fraction, concurrency, timeout, pause: FIRST_PAUSE })
    }
}

/// Checks `--mirror-to`: an `http://` URL with a host, no query, no credentials; returns it
/// without a trailing slash.
pub fn parse_base_url(url: &str) -> Result<String> {
    let url = url.trim();
    let example = "e.g. --mirror-to http://NAME-canary.NAMESPACE.svc:8080";
    let uri: Uri = url.parse().map_err(|e| anyhow!("--mirror-to {url:?} is not a URL ({e}); {example}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => bail!(
            "--mirror-to {url:?}: https is not supported (mirrors go to the canary's in-cluster \
             Service over plain HTTP); use http://, {example}"
        ),
        _ => bail!("--mirror-to {url:?} must be an http:// URL; {example}"),
    }
    let authority = uri.authority().filter(|a| !a.host().is_empty());
    let Some(authority) = authority else {
        bail!("--mirror-to {url:?} names no host; {example}");
    };
    if authority.as_str().contains('@') {
        bail!("--mirror-to {url:?} must not hold credentials (the server's bearer token is sent)");
    }
    if uri.query().is_some() {
        bail!("--mirror-to {url:?} must not have a query: give the base URL; {example}");
    }
    Ok(format!("http://{authority}{}", uri.path().trim_end_matches('/')))
}

/// Which routing API a mirror goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `POST /v1/route`: one decision.
    Route,
    /// `POST /v1/route/batch`: decisions by index.
    Batch,
}

impl Api {
    pub fn path(self) -> &'static str {
        match self {
            Api::Route => "/v1/route",
            Api::Batch => "/v1/route/batch",
        }
    }
}

/// What is compared of a decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub endpoint: String,
    pub payload: Value,
    pub abstained: bool,
}

impl Answer {
    pub fn of(d: &RoutingDecision) -> Self {
        Answer { endpoint: d.endpoint.clone(), payload: d.payload.clone(), abstained: d.abstained }
    }

    /// From a decision as answered in JSON: `endpoint` (a string) and `payload` are required.
    fn from_json(v: &Value) -> Option<Self> {
        Some(Answer {
            endpoint: v.get("endpoint")?.as_str()?.to_string(),
            payload: v.get("payload")?.clone(),
            abstained: v.get("abstained").and_then(Value::as_bool).unwrap_or(false),
        })
    }
}

/// How two decisions of one document compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Same endpoint and same payload.
    Agreed,
    EndpointDiffers,
    /// Same endpoint, different payload.
    ValuesDiffer,
}

impl Outcome {
    pub fn of(primary: &Answer, mirror: &Answer) -> Self {
        if primary.endpoint != mirror.endpoint {
            Outcome::EndpointDiffers
        } else if primary.payload != mirror.payload {
            Outcome::ValuesDiffer
        } else {
            Outcome::Agreed
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Agreed => "agreed",
            Outcome::EndpointDiffers => "endpoint_differs",
            Outcome::ValuesDiffer => "values_differ",
        }
    }
}

/// One compared pair: the outcome and which sides abstained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair {
    pub outcome: Outcome,
    pub primary_abstained: bool,
    pub mirror_abstained: bool,
}

/// Compares this server's decisions (`None`: that item failed here) with the mirror's answer.
/// `Err` when the answer is not a decision (or a batch of as many items) of the API's shape.
pub fn compare(api: Api, primary: &[Option<Answer>], answer: &Value) -> Result<Vec<Pair>, String> {
    let theirs: Vec<Option<Answer>> = match api {
        Api::Route => vec![Some(Answer::from_json(answer).ok_or("not a routing decision")?)],
        Api::Batch => {
            let items = answer.get("decisions").and_then(Value::as_array).ok_or("no `decisions` array")?;
            items
                .iter()
                .map(|item| match item.get("decision") {
                    Some(d) => Answer::from_json(d).map(Some).ok_or("an item is not a routing decision"),
                    None => Ok(None),
                })
                .collect::<Result<_, _>>()?
        }
    };
    if theirs.len() != primary.len() {
        return Err(format!("{} decisions for {} documents", theirs.len(), primary.len()));
    }
    Ok(primary
        .iter()
        .zip(&theirs)
        .filter_map(|(p, m)| {
            let (p, m) = (p.as_ref()?, m.as_ref()?);
            Some(Pair {
                outcome: Outcome::of(p, m),
                primary_abstained: p.abstained,
                mirror_abstained: m.abstained,
            })
        })
        .collect())
}

/// Whether a request is itself a mirror ([`MIRROR_HEADER`]: `1`).
pub fn is_mirror(headers: &HeaderMap) -> bool {
    headers.get(MIRROR_HEADER).and_then(|v| v.to_str().ok()).is_some_and(|v| v.trim() == "1")
}

/// Why a mirror gave no comparison (`sapllm_mirror_failures_total{reason}`).
#[derive(Debug)]
enum Failure {
    /// No connection (nothing listening: a Service without endpoints between rollouts), or it
    /// broke before the answer was read.
    Unreachable(String),
    Timeout,
    /// An answer other than 200.
    Status(StatusCode),
    /// A 200 that is not the decisions asked for.
    Invalid(String),
}

impl From<upstream::Error> for Failure {
    fn from(e: upstream::Error) -> Self {
        match e {
            upstream::Error::Unreachable(_) | upstream::Error::Broken(_) => {
                Failure::Unreachable(e.to_string())
            }
            upstream::Error::Timeout => Failure::Timeout,
            upstream::Error::TooLarge(_) => Failure::Invalid(e.to_string()),
        }
    }
}

impl Failure {
    fn reason(&self) -> &'static str {
        match self {
            Failure::Unreachable(_) => "unreachable",
            Failure::Timeout => "timeout",
            Failure::Status(_) => "status",
            Failure::Invalid(_) => "invalid",
        }
    }
}

/// The mirroring side of the shared state: the client, the in-flight slots and the metrics.
/// Mirror tasks hold this (never the handler state, whose queue the model thread waits on at
/// shutdown).
pub struct Mirror {
    base_url: String,
    fraction: f64,
    timeout: Duration,
    auth: Option<HeaderValue>,
    client: Client,
    slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    closed: watch::Sender<bool>,
    /// Between canaries nothing listens behind `--mirror-to` (its Service has no pods): after a
    /// failed connection, requests are not mirrored for a while rather than each paying a
    /// refused connection.
    pause: std::sync::Mutex<Pause>,
    first_pause: Duration,
}

/// Mirroring paused until `until`; the pause after the next failure.
struct Pause {
    until: Option<std::time::Instant>,
    next: Duration,
}

impl Mirror {
    /// The mirror of `cfg`, sending `auth_token` as a bearer token (both versions share the
    /// Secret); the failure series start at 0.
    pub fn new(cfg: &MirrorConfig, auth_token: Option<&str>, metrics: Arc<Metrics>) -> Result<Mirror> {
        let auth = auth_token
            .map(|t| HeaderValue::from_str(&format!("Bearer {t}")))
            .transpose()
            .map_err(|_| anyhow!("the auth token is not a valid header value"))?;
        let client = upstream::client(cfg.timeout, cfg.concurrency);
        for reason in FAILURE_REASONS {
            metrics.mirror_failures.with_label_values(&[reason]);
        }
        Ok(Mirror {
            base_url: cfg.base_url.clone(),
            fraction: cfg.fraction,
            timeout: cfg.timeout,
            auth,
            client,
            slots: Arc::new(Semaphore::new(cfg.concurrency)),
            metrics,
            closed: watch::channel(false).0,
            pause: std::sync::Mutex::new(Pause { until: None, next: cfg.pause }),
            first_pause: cfg.pause,
        })
    }

    /// Whether mirroring is paused after the other server could not be reached.
    fn paused(&self) -> bool {
        let p = self.pause.lock().unwrap_or_else(|e| e.into_inner());
        p.until.is_some_and(|t| std::time::Instant::now() < t)
    }

    /// After an unreachable mirror: pause, twice as long as the last time (at most
    /// [`MAX_PAUSE`]); after an answer: mirror again, the next pause the first one.
    fn reached(&self, reached: bool) {
        let mut p = self.pause.lock().unwrap_or_else(|e| e.into_inner());
        if reached {
            p.until = None;
            p.next = self.first_pause;
        } else {
            p.until = Some(std::time::Instant::now() + p.next);
            p.next = (p.next * 2).min(MAX_PAUSE.max(self.first_pause));
        }
    }

    /// Whether to mirror this request (probability `--mirror-fraction`).
    pub fn sample(&self) -> bool {
        !*self.closed.borrow() && !self.paused() && rand::random::<f64>() < self.fraction
    }

    /// Sends `body` (the request's JSON) to the other server's `api` in a task of its own and
    /// compares its decisions with `primary` (this server's, by index). Returns at once; when
    /// `--mirror-concurrency` mirrors are in flight, skips (counted). Call within the runtime.
    pub fn send(self: &Arc<Self>, api: Api, body: Bytes, primary: Vec<Option<Answer>>) {
        if *self.closed.borrow() {
            return;
        }
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            self.metrics.mirror_failures.with_label_values(&["skipped"]).inc();
            tracing::debug!(limit = self.slots.available_permits(), "mirror skipped: too many in flight");
            return;
        };
        let this = self.clone();
        let mut closed = self.closed.subscribe();
        tokio::spawn(async move {
            let _permit = permit;
            tokio::select! {
                // Abandoned at shutdown: a sample, not worth waiting for.
                _ = closed.wait_for(|c| *c) => {}
                answer = this.exchange(api, body) => this.record(api, &primary, answer),
            }
        });
    }

    /// Stops mirroring: no new mirror starts, and those in flight end at once, uncounted.
    /// Shutdown calls it; it does not depend on it (mirror tasks hold no handler state).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// One mirror request: the other side's version (`""` when it sends none) and its answer.
    async fn exchange(&self, api: Api, body: Bytes) -> Result<(String, Value), Failure> {
        let mut req = Request::post(format!("{}{}", self.base_url, api.path()))
            .header(header::CONTENT_TYPE, "application/json")
            .header(MIRROR_HEADER, "1");
        if let Some(auth) = &self.auth {
            req = req.header(header::AUTHORIZATION, auth.clone());
        }
        let req =
            req.body(Full::new(body)).map_err(|e| Failure::Invalid(format!("building the request: {e}")))?;
        let reply =
            upstream::send(&self.client, req, self.timeout, MAX_ANSWER_BYTES).await.map_err(Failure::from)?;
        if reply.status != StatusCode::OK {
            return Err(Failure::Status(reply.status));
        }
        let version = reply
            .headers
            .get(MODEL_VERSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map_or_else(String::new, |v| v.trim().chars().take(MAX_VERSION_CHARS).collect());
        let answer = serde_json::from_slice(&reply.body)
            .map_err(|e| Failure::Invalid(format!("answer is not JSON: {e}")))?;
        Ok((version, answer))
    }

    /// Counts a mirror's comparisons, or its failure.
    fn record(&self, api: Api, primary: &[Option<Answer>], answer: Result<(String, Value), Failure>) {
        self.reached(!matches!(answer, Err(Failure::Unreachable(_))));
        let compared = answer.and_then(|(version, answer)| {
            compare(api, primary, &answer).map(|pairs| (version, pairs)).map_err(Failure::Invalid)
        });
        let m = &self.metrics;
        match compared {
            Ok((version, pairs)) => {
                for p in pairs {
                    m.mirror_comparisons.with_label_values(&[version.as_str(), p.outcome.as_str()]).inc();
                    if p.primary_abstained {
                        m.mirror_abstentions.with_label_values(&[version.as_str(), "primary"]).inc();
                    }
                    if p.mirror_abstained {
                        m.mirror_abstentions.with_label_values(&[version.as_str(), "mirror"]).inc();
                    }
                }
            }
            Err(f) => {
                m.mirror_failures.with_label_values(&[f.reason()]).inc();
                match &f {
                    // The normal state between rollouts (a Service without endpoints refuses
                    // connections; mirroring pauses) or a slow canary: quiet, the metrics tell.
                    Failure::Unreachable(e) => {
                        tracing::debug!(error = %e, url = %self.base_url, "mirror unreachable")
                    }
                    Failure::Timeout => tracing::debug!(url = %self.base_url, "mirror timed out"),
                    Failure::Status(s) => {
                        tracing::debug!(status = s.as_u16(), url = %self.base_url, "mirror answered non-200")
                    }
                    Failure::Invalid(e) => {
                        tracing::warn!(error = %e, url = %self.base_url, "mirror answer not comparable")
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mirror_to_takes_http_base_urls_only() {
        assert_eq!(parse_base_url("http://ep-canary.ns.svc:8080").unwrap(), "http://ep-canary.ns.svc:8080");
        assert_eq!(parse_base_url(" http://127.0.0.1:9/ ").unwrap(), "http://127.0.0.1:9");
        assert_eq!(parse_base_url("http://h/prefix/").unwrap(), "http://h/prefix");
        for bad in
            ["https://h:8080", "h:8080", "garbage", "", "http://", "http://h/?a=1", "http://u:p@h", "ftp://h"]
        {
            let e = parse_base_url(bad).expect_err(bad).to_string();
            assert!(e.contains("--mirror-to"), "{bad}: {e}");
        }
        assert!(parse_base_url("https://h").unwrap_err().to_string().contains("use http://"));
    }

    #[test]
    fn settings_are_validated_naming_the_flag() {
        let ok = MirrorConfig::new("http://h:1", 1.0, 1, Duration::from_millis(1)).unwrap();
        assert_eq!((ok.fraction, ok.concurrency), (1.0, 1));
        for f in [0.0, -0.1, 1.5, f64::NAN] {
            let e = MirrorConfig::new("http://h", f, 4, Duration::from_secs(1)).unwrap_err().to_string();
            assert!(e.contains("--mirror-fraction"), "{f}: {e}");
        }
        let e = MirrorConfig::new("http://h", 0.1, 0, Duration::from_secs(1)).unwrap_err().to_string();
        assert!(e.contains("--mirror-concurrency"), "{e}");
        let e = MirrorConfig::new("http://h", 0.1, 1, Duration::ZERO).unwrap_err().to_string();
        assert!(e.contains("--mirror-timeout-ms"), "{e}");
    }

    fn answer(endpoint: &str, payload: Value, abstained: bool) -> Answer {
        Answer { endpoint: endpoint.into(), payload, abstained }
    }

    fn decision(endpoint: &str, payload: Value, abstained: bool) -> Value {
        json!({"decision_id": "x", "endpoint": endpoint, "payload": payload, "abstained": abstained,
            "confidence": 0.9})
    }

    #[test]
    fn decisions_compare_by_endpoint_then_payload() {
        let p = [Some(answer("/A", json!({"x": 1}), false))];
        let one = |d: Value| compare(Api::Route, &p, &d).unwrap()[0];
        assert_eq!(one(decision("/A", json!({"x": 1}), false)).outcome, Outcome::Agreed);
        assert_eq!(one(decision("/B", json!({"x": 1}), false)).outcome, Outcome::EndpointDiffers);
        assert_eq!(one(decision("/B", json!({"x": 2}), false)).outcome, Outcome::EndpointDiffers);
        let v = one(decision("/A", json!({"x": "1"}), true));
        assert_eq!(
            v,
            Pair { outcome: Outcome::ValuesDiffer, primary_abstained: false, mirror_abstained: true }
        );
        assert!(compare(Api::Route, &p, &json!({"error": {}})).is_err());
        assert!(compare(Api::Route, &p, &json!({"endpoint": 3, "payload": {}})).is_err());
    }

    #[test]
    fn batches_compare_item_by_item_skipping_failed_items() {
        let p = [
            Some(answer("/A", json!(1), true)),
            None,
            Some(answer("/A", json!(1), false)),
            Some(answer("/A", json!(1), false)),
        ];
        let theirs = json!({"decisions": [
            {"decision": decision("/A", json!(1), false)},
            {"decision": decision("/A", json!(1), false)},
            {"error": {"message": "failed"}},
            {"decision": decision("/C", json!(1), false)},
        ]});
        let pairs = compare(Api::Batch, &p, &theirs).unwrap();
        assert_eq!(
            pairs,
            [
                Pair { outcome: Outcome::Agreed, primary_abstained: true, mirror_abstained: false },
                Pair { outcome: Outcome::EndpointDiffers, primary_abstained: false, mirror_abstained: false },
            ]
        );
        let short = json!({"decisions": [{"decision": decision("/A", json!(1), false)}]});
        assert!(compare(Api::Batch, &p, &short).is_err(), "fewer items than documents");
        let not_decisions =
            json!({"decisions": [{"decision": {}}, {"decision": {}}, {"decision": {}}, {"decision": {}}]});
        assert!(compare(Api::Batch, &p, &not_decisions).is_err());
        assert!(compare(Api::Batch, &p, &decision("/A", json!(1), false)).is_err());
    }

    #[test]
    fn only_a_one_marks_a_mirror() {
        let mut h = HeaderMap::new();
        assert!(!is_mirror(&h));
        h.insert(MIRROR_HEADER, HeaderValue::from_static("1"));
        assert!(is_mirror(&h));
        h.insert(MIRROR_HEADER, HeaderValue::from_static("0"));
        assert!(!is_mirror(&h));
    }
}
