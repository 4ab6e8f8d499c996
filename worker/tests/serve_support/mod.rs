//! Shared by the serve tests: a random tiny engine with tight grammar bounds (fast decodes in a
//! debug build), server start-up on a loopback port, and a small hyper HTTP client.

#![allow(dead_code)]

pub mod stub;

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sapllm_engine::decoder::DecodeOptions;
use sapllm_engine::engine::{Engine, EngineConfig};
use sapllm_engine::load::ModelInfo;
use sapllm_serve::ServeConfig;
use sapllm_serve::batcher::BatchConfig;
use sapllm_worker::testkit::tiny_engine;
use serde_json::Value;

pub fn engine_config() -> EngineConfig {
    EngineConfig {
        abstain_threshold: 0.5,
        decode: DecodeOptions { max_new_tokens: 1500, ..DecodeOptions::default() },
        ..EngineConfig::default()
    }
}

pub fn info() -> ModelInfo {
    ModelInfo {
        base: "random-tiny".into(),
        adapter: None,
        adapter_version: Some("test-v1".into()),
        precision: "f32".into(),
        parameters: 0,
        vocab_size: 0,
        device: "cpu".into(),
    }
}

/// A loader building the random tiny engine.
pub fn loader() -> sapllm_serve::Loader {
    Box::new(|| Ok((tiny_engine(engine_config(), 5)?.0, info())))
}

pub fn engine() -> Engine {
    tiny_engine(engine_config(), 5).expect("engine").0
}

pub fn config(max_batch: usize, max_queue: usize, timeout_ms: u64) -> ServeConfig {
    let mut cfg = ServeConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    cfg.batch = BatchConfig { max_batch, max_wait: Duration::from_millis(5), max_queue, workers: 1 };
    cfg.request_timeout = Duration::from_millis(timeout_ms);
    cfg.max_body_bytes = 64 * 1024;
    cfg
}

/// A response: status, headers, body text.
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The `error.field` of a JSON error.
    pub fn error_field(&self) -> String {
        self.json()["error"]["field"].as_str().unwrap_or_default().to_string()
    }
}

/// Sends one request over a fresh HTTP/1.1 connection.
pub async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Resp {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = Request::builder().method(method).uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or("").to_string()))).expect("request");
    let resp = client.request(req).await.expect("HTTP request");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    Resp { status, headers, body: String::from_utf8_lossy(&bytes).into_owned() }
}

pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    send(addr, Method::GET, path, headers, None).await
}

pub async fn post_json(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    send(addr, Method::POST, path, &h, Some(body)).await
}

/// A routing request body for a sample document.
pub fn route_body(i: usize) -> String {
    let q = sapllm_worker::testkit::sample_queries(i + 1, 5).pop().expect("query");
    serde_json::json!({"doc_type": q.doc_type, "adc_json": q.adc_json}).to_string()
}

/// Starts a server with `cfg` on its own runtime thread, which lives for the whole test process
/// (tests share one server through a `OnceLock`), and returns its address once it is ready.
pub fn spawn_server(cfg: ServeConfig) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let mut server = sapllm_serve::start(cfg, loader()).await.expect("start");
            server.ready().await.expect("ready");
            tx.send(server.addr).expect("send addr");
            std::future::pending::<()>().await;
        });
    });
    rx.recv().expect("server address")
}

/// A current-thread runtime for one test's client side.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}
