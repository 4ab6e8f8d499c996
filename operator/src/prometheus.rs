//! Instant queries against a Prometheus HTTP API (`GET /api/v1/query`), answered as the same
//! samples the text exposition gives, so a canary is judged by the same code whichever way its
//! signals were read (`spec.rollout.prometheusUrl`, or the pods' `/metrics`).

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::endpoint::signals::Sample;

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// Largest answer read (a canary's series are a few hundred at most).
const MAX_ANSWER: usize = 16 << 20;

/// One client for the process (loading the system's roots is not free).
fn client() -> Result<&'static Client<Https, Empty<Bytes>>, String> {
    static CLIENT: OnceLock<Result<Client<Https, Empty<Bytes>>, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_native_roots()
                .map_err(|e| format!("no CA roots for https: {e}"))?
                .https_or_http()
                .enable_http1()
                .build();
            Ok(Client::builder(TokioExecutor::new()).build(https))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The series `promql` selects now, as samples (name from `__name__`).
pub async fn query(base: &str, promql: &str, timeout: Duration) -> Result<Vec<Sample>, String> {
    let q: String = form_urlencoded::byte_serialize(promql.as_bytes()).collect();
    let url = format!("{}/api/v1/query?query={q}", base.trim_end_matches('/'));
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let req = hyper::Request::get(uri).body(Empty::new()).map_err(|e| e.to_string())?;
    let call = async {
        let resp = client()?.request(req).await.map_err(|e| format!("{base}: {e}"))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("{base}: reading the answer: {e}"))?
            .to_bytes();
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| format!("{base}: HTTP {status}, not a Prometheus answer: {e}"))?;
        parse_vector(&v).map_err(|e| format!("{base}: {e}"))
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| format!("{base}: no answer within {}s", timeout.as_secs()))?
}

/// The samples of an instant-query answer (`resultType: vector`).
pub fn parse_vector(v: &Value) -> Result<Vec<Sample>, String> {
    if v["status"] != "success" {
        return Err(format!(
            "query failed: {} {}",
            v["errorType"].as_str().unwrap_or("?"),
            v["error"].as_str().unwrap_or_default()
        ));
    }
    if v["data"]["resultType"] != "vector" {
        return Err(format!("expected a vector, got {}", v["data"]["resultType"]));
    }
    let mut out = Vec::new();
    for r in v["data"]["result"].as_array().into_iter().flatten() {
        let Some(metric) = r["metric"].as_object() else { continue };
        let mut labels: BTreeMap<String, String> =
            metric.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect();
        let Some(name) = labels.remove("__name__") else { continue };
        let Some(value) = r["value"][1].as_str().and_then(|s| s.parse::<f64>().ok()) else { continue };
        out.push(Sample { name, labels, value });
    }
    Ok(out)
}

/// A PromQL regex matching the pods of Deployment `name` (`<name>-<template hash>-<suffix>`),
/// and not those of a Deployment whose name extends it (`<name>-canary-…`).
pub fn pods_of(deployment: &str) -> String {
    // PromQL strings take Go escapes: `\\.` is the regex `\.`.
    format!("{}-[a-z0-9]+-[a-z0-9]+", deployment.replace('.', "\\\\."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_vector_answer_becomes_samples() {
        let v = json!({ "status": "success", "data": { "resultType": "vector", "result": [
            { "metric": { "__name__": "sapllm_decisions_total", "pod": "r-canary-1-a", "kind": "routing" }, "value": [1.7e9, "42"] },
            { "metric": { "pod": "no-name" }, "value": [1.7e9, "1"] },
        ] } });
        let s = parse_vector(&v).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].name, "sapllm_decisions_total");
        assert_eq!(s[0].labels["kind"], "routing");
        assert!(!s[0].labels.contains_key("__name__"));
        assert_eq!(s[0].value, 42.0);
        let err =
            parse_vector(&json!({ "status": "error", "errorType": "bad_data", "error": "parse error" }));
        assert_eq!(err.unwrap_err(), "query failed: bad_data parse error");
    }

    #[test]
    fn pod_patterns_keep_the_two_deployments_apart() {
        assert_eq!(pods_of("sap-router"), "sap-router-[a-z0-9]+-[a-z0-9]+");
        assert_eq!(pods_of("a.b"), "a\\\\.b-[a-z0-9]+-[a-z0-9]+");
    }
}
