//! `stream: true` on `/v1/chat/completions` over real HTTP, read as an SSE client reads it: the
//! response body is parsed as it arrives, by the `text/event-stream` rules of the WHATWG HTML
//! spec (lines ended by CR, LF or CRLF; `field: value`, one leading space dropped; `data` lines
//! joined with LF; comments; a blank line ends an event). Checked against OpenAI's streaming
//! format: chunks with the role first, content deltas that concatenate to the `stream: false`
//! answer of the same request, a `finish_reason`, the usage chunk when asked for, `[DONE]`
//! last; errors before the stream starts are the usual JSON errors, a timeout mid-stream is a
//! last `error` event; a client that goes away stops the decoding.

mod serve_support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Result;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sapllm_engine::chat::{Cancelled, Completion};
use sapllm_engine::engine::Engine;
use sapllm_engine::types::{
    ExceptionDecision, ExceptionQuery, RoutingDecision, RoutingQuery, SimilarException,
};
use sapllm_serve::Backend;
use serde_json::{Value, json};
use serve_support::*;
use tokio::io::AsyncWriteExt;

const AUTH: (&str, &str) = ("authorization", "Bearer stream-token");

/// One event of an event stream.
#[derive(Debug, Clone, PartialEq)]
struct SseEvent {
    /// `event:` (default "message").
    event: String,
    /// The `data:` lines joined with LF.
    data: String,
}

/// An incremental `text/event-stream` parser (WHATWG HTML, "Parsing an event stream").
#[derive(Default)]
struct SseParser {
    /// Bytes of the line being read (lines split on ASCII, so UTF-8 is never cut).
    line: Vec<u8>,
    /// The previous byte ended a line with CR: an LF right after it is part of that end.
    after_cr: bool,
    started: bool,
    data: String,
    event: String,
    /// Comment lines (`:` first), e.g. keep-alives.
    comments: usize,
}

impl SseParser {
    /// Feeds bytes as they arrive; returns the events they complete.
    fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        for &b in bytes {
            match b {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\r' | b'\n' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    self.process_line(&line, &mut out);
                }
                _ => {
                    self.after_cr = false;
                    self.line.push(b);
                }
            }
        }
        out
    }

    fn process_line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) {
        let mut line = String::from_utf8_lossy(line).into_owned();
        if !self.started {
            self.started = true;
            if let Some(rest) = line.strip_prefix('\u{feff}') {
                line = rest.to_string();
            }
        }
        if line.is_empty() {
            // Dispatch: an event with no data is none.
            let event = std::mem::take(&mut self.event);
            if !self.data.is_empty() {
                let mut data = std::mem::take(&mut self.data);
                data.pop(); // the LF after the last data line
                out.push(SseEvent { event: if event.is_empty() { "message".into() } else { event }, data });
            }
            return;
        }
        if line.starts_with(':') {
            self.comments += 1;
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f.to_string(), v.strip_prefix(' ').unwrap_or(v).to_string()),
            None => (line.clone(), String::new()),
        };
        match field.as_str() {
            "data" => {
                self.data.push_str(&value);
                self.data.push('\n');
            }
            "event" => self.event = value,
            _ => {} // id, retry and unknown fields: not used by OpenAI's stream
        }
    }
}

/// A streamed response as the client saw it.
struct Streamed {
    status: StatusCode,
    headers: HeaderMap,
    events: Vec<SseEvent>,
    /// The body when it is not an event stream (an error before the stream started).
    body: String,
}

impl Streamed {
    /// The `data` of every event: JSON chunks, then `[DONE]`.
    fn data(&self) -> Vec<&str> {
        self.events.iter().map(|e| e.data.as_str()).collect()
    }

    /// The chunks (every event but `[DONE]`) as JSON.
    fn chunks(&self) -> Vec<Value> {
        self.events
            .iter()
            .filter(|e| e.data != "[DONE]")
            .map(|e| {
                serde_json::from_str(&e.data).unwrap_or_else(|err| panic!("not JSON ({err}): {}", e.data))
            })
            .collect()
    }

    /// The content deltas in order.
    fn deltas(&self) -> Vec<String> {
        self.chunks()
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_string))
            .filter(|d| !d.is_empty())
            .collect()
    }

    fn error_body(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// POSTs `body` and reads the answer as an SSE client, event by event as the body arrives; stops
/// after `max_events` (dropping the connection then, as a client that goes away does).
async fn stream_post(
    addr: SocketAddr,
    headers: &[(&str, &str)],
    body: &Value,
    max_events: usize,
) -> Streamed {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("accept", "text/event-stream");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).expect("request");
    let resp = client.request(req).await.expect("HTTP request");
    let status = resp.status();
    let headers = resp.headers().clone();
    let is_sse = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut body = resp.into_body();
    if !is_sse {
        let bytes = body.collect().await.expect("body").to_bytes();
        return Streamed {
            status,
            headers,
            events: Vec::new(),
            body: String::from_utf8_lossy(&bytes).into_owned(),
        };
    }
    let mut parser = SseParser::default();
    let mut events = Vec::new();
    while events.len() < max_events {
        let Some(frame) = body.frame().await else { break };
        if let Ok(data) = frame.expect("body frame").into_data() {
            events.extend(parser.feed(&data));
        }
    }
    Streamed { status, headers, events, body: String::new() }
}

/// The non-streamed answer to the same request.
async fn whole(addr: SocketAddr, body: &Value) -> Value {
    let mut body = body.clone();
    body.as_object_mut().unwrap().remove("stream_options");
    body["stream"] = json!(false);
    let r = post_json(addr, "/v1/chat/completions", &[AUTH], &body.to_string()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.headers.get("content-type").unwrap().to_str().unwrap().starts_with("application/json"));
    r.json()
}

/// The shared server (tiny random engine, a bearer token) on its own runtime thread.
fn server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let mut cfg = config(1, 16, 60_000);
        cfg.auth_token = Some("stream-token".into());
        spawn_server(cfg)
    })
}

/// Everything OpenAI's format promises of a finished stream; returns the streamed content.
fn check_stream(s: &Streamed, expect: &Value, include_usage: bool) -> String {
    assert_eq!(s.status, StatusCode::OK, "{}", s.body);
    let ct = s.headers.get("content-type").unwrap().to_str().unwrap();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    assert_eq!(s.headers.get("cache-control").unwrap(), "no-cache");
    assert!(s.events.iter().all(|e| e.event == "message"), "OpenAI's events are unnamed: {:?}", s.events);
    let data = s.data();
    assert_eq!(data.last().copied(), Some("[DONE]"), "[DONE] ends the stream: {data:?}");
    assert_eq!(data.iter().filter(|d| **d == "[DONE]").count(), 1);
    let chunks = s.chunks();
    assert!(chunks.len() >= 2, "{chunks:?}");
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"));
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk", "{c}");
        assert_eq!(c["id"], id, "one id for the whole stream");
        assert_eq!(c["model"], "sapllm");
        assert!(c["created"].as_u64().unwrap() > 0);
        assert!(c.get("error").is_none(), "{c}");
    }
    let first = &chunks[0]["choices"][0];
    assert_eq!(first["index"], 0);
    assert_eq!(first["delta"]["role"], "assistant", "the first chunk carries the role: {first}");
    assert!(first["finish_reason"].is_null());
    let with_choices: Vec<&Value> =
        chunks.iter().filter(|c| !c["choices"].as_array().unwrap().is_empty()).collect();
    let (last, before) = with_choices.split_last().unwrap();
    assert!(before.iter().all(|c| c["choices"][0]["finish_reason"].is_null()), "{before:?}");
    assert!(
        before[1..].iter().all(|c| c["choices"][0]["delta"].get("role").is_none()),
        "the role comes once"
    );
    let finish = &last["choices"][0]["finish_reason"];
    assert_eq!(*finish, expect["choices"][0]["finish_reason"], "the same finish reason as stream=false");
    assert!(finish == "stop" || finish == "length");
    let content = s.deltas().concat();
    let expected = expect["choices"][0]["message"]["content"].as_str().unwrap();
    // A routing decision carries its own decision_id (one per decision): the rest is the same.
    let (content, expected) =
        match (serde_json::from_str::<Value>(&content), serde_json::from_str::<Value>(expected)) {
            (Ok(Value::Object(mut a)), Ok(Value::Object(mut b))) if b.contains_key("decision_id") => {
                let (ia, ib) = (a.remove("decision_id"), b.remove("decision_id"));
                assert!(
                    ia.as_ref().is_some_and(Value::is_string) && ia != ib,
                    "each decision its own id: {ia:?} {ib:?}"
                );
                (Value::Object(a).to_string(), Value::Object(b).to_string())
            }
            _ => (content, expected.to_string()),
        };
    assert_eq!(content, expected, "the deltas concatenate to the non-streamed answer (greedy decoding)");
    if include_usage {
        let u = chunks.last().unwrap();
        assert_eq!(u["choices"], json!([]), "the usage chunk has no choices: {u}");
        assert_eq!(u["usage"], expect["usage"], "the same usage as stream=false");
        assert!(
            chunks[..chunks.len() - 1].iter().all(|c| c["usage"].is_null()),
            "usage only on the last chunk"
        );
    } else {
        assert!(chunks.iter().all(|c| c.get("usage").is_none()), "no usage unless asked for");
    }
    content
}

#[test]
fn a_free_completion_streams_the_text_of_the_non_streamed_answer() {
    let addr = server();
    rt().block_on(async {
        let req = json!({
            "model": "sapllm",
            "messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Which API posts a goods receipt?"}],
            "max_tokens": 40,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        let expect = whole(addr, &req).await;
        assert_eq!(expect["object"], "chat.completion", "stream=false is unchanged");
        let s = stream_post(addr, &[AUTH], &req, usize::MAX).await;
        let content = check_stream(&s, &expect, true);
        let tokens = expect["usage"]["completion_tokens"].as_u64().unwrap();
        assert!(tokens > 1, "{expect}");
        if content.chars().count() > 8 {
            assert!(s.deltas().len() > 1, "text arrives as it is decoded, not at once: {:?}", s.deltas());
        }
        // Without stream_options: no usage anywhere.
        let mut plain = req.clone();
        plain.as_object_mut().unwrap().remove("stream_options");
        let s = stream_post(addr, &[AUTH], &plain, usize::MAX).await;
        check_stream(&s, &expect, false);
    });
}

#[test]
fn a_schema_constrained_completion_streams_its_json() {
    let addr = server();
    rt().block_on(async {
        let req = json!({
            "messages": [{"role": "user", "content": "Which API posts a goods receipt?"}],
            "max_tokens": 24,
            "stream": true,
            "stream_options": {"include_usage": true},
            "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object", "properties": {"api": {"enum": ["API_A", "API_B"]}}, "required": ["api"], "additionalProperties": false}}},
        });
        let expect = whole(addr, &req).await;
        let s = stream_post(addr, &[AUTH], &req, usize::MAX).await;
        let content = check_stream(&s, &expect, true);
        if expect["choices"][0]["finish_reason"] == "stop" {
            let v: Value = serde_json::from_str(&content).expect("the streamed content is the schema's JSON");
            assert!(v["api"] == "API_A" || v["api"] == "API_B", "{v}");
            assert!(s.deltas().len() > 1, "the JSON arrives as it is decoded: {:?}", s.deltas());
        }
    });
}

#[test]
fn a_routing_request_streams_its_decision_as_one_delta() {
    let addr = server();
    rt().block_on(async {
        let req = json!({"messages": [{"role": "user", "content": route_body(3)}], "stream": true, "stream_options": {"include_usage": true}});
        let expect = whole(addr, &req).await;
        let s = stream_post(addr, &[AUTH], &req, usize::MAX).await;
        let content = check_stream(&s, &expect, true);
        assert_eq!(s.deltas().len(), 1, "the decision is made whole");
        let d: Value = serde_json::from_str(&content).unwrap();
        assert!(d["endpoint"].is_string(), "{d}");
    });
}

#[test]
fn failures_before_the_stream_are_json_errors_and_auth_applies() {
    let addr = server();
    rt().block_on(async {
        let ok = json!({"messages": [{"role": "user", "content": "hi"}], "stream": true});
        let s = stream_post(addr, &[], &ok, usize::MAX).await;
        assert_eq!(s.status, StatusCode::UNAUTHORIZED);
        assert_eq!(s.error_body()["error"]["field"], "authorization");
        let mut bad = ok.clone();
        bad["model"] = json!("gpt-4o");
        let s = stream_post(addr, &[AUTH], &bad, usize::MAX).await;
        assert_eq!(s.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(s.error_body()["error"]["field"], "model");
        // A prompt longer than the model's context (4096 tokens) fails before any text.
        let long = json!({"messages": [{"role": "user", "content": "zq ".repeat(9000)}], "stream": true});
        let s = stream_post(addr, &[AUTH], &long, usize::MAX).await;
        assert_eq!(s.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", s.body);
        assert_eq!(s.error_body()["error"]["field"], "messages[0].content");
        // Streams are counted like every request, once they end.
        let m = get(addr, "/metrics", &[]).await.body;
        assert!(m.contains(r#"sapllm_requests_total{route="/v1/chat/completions",status="422"}"#), "{m}");
    });
}

/// The tiny engine, but a streamed completion never ends by itself: it sends text until told
/// to stop (client gone, deadline), and says when it was. A completion through `complete`
/// stands for a long answer decoded with no way to stop it (10 ms a token). `ticks` counts the
/// tokens "decoded" either way.
struct Endless {
    engine: Engine,
    stopped: Mutex<std::sync::mpsc::Sender<()>>,
    ticks: Arc<AtomicUsize>,
}

impl Backend for Endless {
    fn decide_routing_batch(&self, queries: &[RoutingQuery]) -> Result<Vec<Result<RoutingDecision>>> {
        self.engine.decide_routing_batch(queries)
    }

    fn handle_exception_batch(
        &self,
        items: &[(ExceptionQuery, Vec<SimilarException>)],
    ) -> Result<Vec<Result<ExceptionDecision>>> {
        self.engine.handle_exception_batch(items)
    }

    fn complete(
        &self,
        _prompt: &str,
        max_tokens: usize,
        _temperature: f64,
        _schema: Option<&Value>,
    ) -> Result<Completion> {
        for _ in 0..max_tokens {
            self.ticks.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Completion {
            text: "tick ".repeat(max_tokens).trim().to_string(),
            prompt_tokens: 1,
            completion_tokens: max_tokens,
            finish_reason: "length",
        })
    }

    fn complete_streaming(
        &self,
        _prompt: &str,
        _max_tokens: usize,
        _temperature: f64,
        _schema: Option<&Value>,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Completion> {
        while on_text("tick ") {
            self.ticks.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = self.stopped.lock().unwrap().send(());
        Err(Cancelled.into())
    }
}

/// A server of [`Endless`]: the receiver hears when a completion stopped; the count of tokens.
async fn endless_server(
    timeout_ms: u64,
) -> (sapllm_serve::Server, std::sync::mpsc::Receiver<()>, Arc<AtomicUsize>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let ticks = Arc::new(AtomicUsize::new(0));
    let counted = ticks.clone();
    let loader: sapllm_serve::Loader<Endless> =
        Box::new(move || Ok((Endless { engine: engine(), stopped: Mutex::new(tx), ticks: counted }, info())));
    let mut server = sapllm_serve::start(config(1, 4, timeout_ms), loader).await.expect("start");
    server.ready().await.expect("ready");
    (server, rx, ticks)
}

/// Waits (off the runtime) for the backend to report that it stopped.
async fn stopped(rx: std::sync::mpsc::Receiver<()>, within: Duration) -> bool {
    tokio::task::spawn_blocking(move || rx.recv_timeout(within).is_ok()).await.unwrap()
}

/// Sends a JSON POST on a raw connection and returns the connection unread: dropping it is a
/// client that goes away while it waits for the answer.
async fn send_and_wait(addr: SocketAddr, path: &str, body: &str) -> tokio::net::TcpStream {
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.expect("write");
    conn.write_all(body.as_bytes()).await.expect("write");
    conn
}

/// Polls until `f` holds (at most `within`).
async fn eventually(within: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let until = std::time::Instant::now() + within;
    while std::time::Instant::now() < until {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_frees_the_model_thread() {
    // One model thread and a request timeout far beyond the test: only the disconnect can stop
    // the endless completion.
    let (server, rx, _) = endless_server(600_000).await;
    let addr = server.addr;
    let req = json!({"messages": [{"role": "user", "content": "go on"}], "stream": true});
    let s = stream_post(addr, &[], &req, 3).await;
    assert_eq!(s.status, StatusCode::OK);
    assert_eq!(s.chunks()[1]["choices"][0]["delta"]["content"], "tick ");
    drop(s);
    assert!(stopped(rx, Duration::from_secs(60)).await, "decoding stops when the client goes away");
    // The one model thread serves the next request.
    let r = tokio::time::timeout(Duration::from_secs(120), post_json(addr, "/v1/route", &[], &route_body(0)))
        .await
        .expect("the model thread is free");
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let m = get(addr, "/metrics", &[]).await.body;
    assert!(m.contains(r#"sapllm_requests_total{route="/v1/chat/completions",status="200"} 1"#), "{m}");
    assert!(m.contains("sapllm_inflight_requests 1"), "only /metrics itself is in flight:\n{m}");
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_streamed_completion_stops_when_its_client_goes_away() {
    // One model thread, a request timeout far beyond the test, and an answer of 4096 tokens
    // (41 s if decoded to the end): only the disconnect can free the model thread in time.
    let (server, rx, ticks) = endless_server(600_000).await;
    let addr = server.addr;
    let req = json!({"messages": [{"role": "user", "content": "go on"}], "max_tokens": 4096});
    let conn = send_and_wait(addr, "/v1/chat/completions", &req.to_string()).await;
    assert!(
        eventually(Duration::from_secs(60), async || ticks.load(Ordering::SeqCst) > 10).await,
        "the completion is being decoded"
    );
    drop(conn);
    let gone = std::time::Instant::now();
    assert!(stopped(rx, Duration::from_secs(20)).await, "decoding stops when the client goes away");
    let at_stop = ticks.load(Ordering::SeqCst);
    assert!(at_stop < 4096, "{at_stop} tokens");
    // The one model thread serves the next request, long before the answer would have ended.
    let r = tokio::time::timeout(Duration::from_secs(30), post_json(addr, "/v1/route", &[], &route_body(0)))
        .await
        .expect("the model thread is free");
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(gone.elapsed() < Duration::from_secs(35), "{:?}", gone.elapsed());
    assert_eq!(ticks.load(Ordering::SeqCst), at_stop, "nothing decoded for the client that left");
    let m = get(addr, "/metrics", &[]).await.body;
    assert!(m.contains(r#"sapllm_jobs_cancelled_total{reason="client_gone",stage="decoding"} 1"#), "{m}");
    assert!(m.contains(r#"sapllm_jobs_cancelled_total{reason="timeout",stage="decoding"} 0"#), "{m}");
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_whose_client_went_away_is_skipped() {
    let (server, rx, ticks) = endless_server(600_000).await;
    let addr = server.addr;
    let metric = async |name: &str| get(addr, "/metrics", &[]).await.body.contains(name);
    // The model thread is busy with a completion; a routing request waits behind it.
    let req = json!({"messages": [{"role": "user", "content": "go on"}], "max_tokens": 4096});
    let busy = send_and_wait(addr, "/v1/chat/completions", &req.to_string()).await;
    assert!(eventually(Duration::from_secs(60), async || ticks.load(Ordering::SeqCst) > 0).await);
    let queued = send_and_wait(addr, "/v1/route", &route_body(0)).await;
    assert!(eventually(Duration::from_secs(30), async || metric("sapllm_queue_depth 1").await).await);
    // Its client goes away, then the completion's.
    drop(queued);
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(busy);
    assert!(stopped(rx, Duration::from_secs(20)).await);
    assert!(
        eventually(Duration::from_secs(30), async || {
            metric(r#"sapllm_jobs_cancelled_total{reason="client_gone",stage="queued"} 1"#).await
        })
        .await,
        "the routing job is answered without decoding:\n{}",
        get(addr, "/metrics", &[]).await.body
    );
    let m = get(addr, "/metrics", &[]).await.body;
    assert!(m.contains(r#"sapllm_decisions_total{kind="routing",outcome="accepted"} 0"#), "{m}");
    assert!(m.contains(r#"sapllm_decisions_total{kind="routing",outcome="abstained"} 0"#), "{m}");
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_mid_stream_is_a_last_error_event() {
    let (server, rx, _) = endless_server(1_500).await;
    let addr = server.addr;
    let req = json!({"messages": [{"role": "user", "content": "go on"}], "stream": true});
    let s = stream_post(addr, &[], &req, usize::MAX).await;
    assert_eq!(s.status, StatusCode::OK);
    let data = s.data();
    assert!(data.len() > 2, "text was streamed before the timeout: {data:?}");
    assert!(!data.contains(&"[DONE]"), "a failed stream has no [DONE]");
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "timeout", "{last}");
    assert!(stopped(rx, Duration::from_secs(60)).await, "decoding stops at the deadline");
    server.shutdown().await.expect("shutdown");
}

#[test]
fn the_parser_follows_the_event_stream_rules() {
    let mut p = SseParser::default();
    let mut events = p.feed(b"\xEF\xBB\xBFdata: a\r\ndata:b\r\n\r\n: keep-alive\n\nevent: x\ndata\n");
    events.extend(p.feed(b"\nid: 1\nretry: 5\n\ndata: {\"k\":\r"));
    events.extend(p.feed(b"\n\r\ndata: tail without blank line"));
    assert_eq!(
        events,
        [
            SseEvent { event: "message".into(), data: "a\nb".into() },
            SseEvent { event: "x".into(), data: String::new() },
            SseEvent { event: "message".into(), data: "{\"k\":".into() },
        ]
    );
    assert_eq!(p.comments, 1);
}
