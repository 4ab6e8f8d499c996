//! Every route of `serve` over real HTTP on a loopback port: decisions, batch, exceptions,
//! models, chat completions, health, metrics, and the 4xx errors (each naming its field),
//! request ids and bearer auth. One server (with a token) is shared by the tests.

mod serve_support;

use std::net::SocketAddr;
use std::sync::OnceLock;

use hyper::{Method, StatusCode};
use sapllm_engine::engine::Engine;
use sapllm_engine::request::RouteRequest;
use sapllm_sap::catalog::Catalog;
use serve_support::*;

const TOKEN: &str = "s3cret-token";
const AUTH: (&str, &str) = ("authorization", "Bearer s3cret-token");

/// The shared server runs on its own runtime thread for the whole test process.
fn server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let mut cfg = config(4, 16, 60_000);
        cfg.auth_token = Some(TOKEN.into());
        spawn_server(cfg)
    })
}

#[test]
fn health_readiness_and_models() {
    let addr = server();
    rt().block_on(async {
        let r = get(addr, "/healthz", &[]).await;
        assert_eq!(r.status, StatusCode::OK);
        let r = get(addr, "/readyz", &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.json()["status"], "ready");
        let r = get(addr, "/v1/models", &[AUTH]).await;
        assert_eq!(r.status, StatusCode::OK);
        let m = &r.json()["data"][0];
        assert_eq!(m["id"], "sapllm");
        assert_eq!(m["adapter_version"], "test-v1");
        assert_eq!(m["device"], "cpu");
        let r = get(addr, "/nope", &[]).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(r.json()["error"]["code"], "not_found");
    });
}

#[test]
fn route_returns_a_decision_among_the_candidates() {
    let addr = server();
    rt().block_on(async {
        let body = route_body(0);
        let r = post_json(addr, "/v1/route", &[AUTH, ("x-request-id", "req-42")], &body).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.headers.get("x-request-id").unwrap(), "req-42", "a client request id is echoed");
        let d = r.json();
        let req: RouteRequest = serde_json::from_str(&body).unwrap();
        let q = req.into_query(&Catalog::builtin(), "").unwrap();
        let allowed = Engine::allowed_endpoints(&q);
        assert!(allowed.iter().any(|e| e == d["endpoint"].as_str().unwrap()), "{d}");
        let c = d["confidence"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&c));
        assert_eq!(d["abstained"].as_bool().unwrap(), c < 0.5, "abstains below the threshold (0.5)");
        let r = post_json(addr, "/v1/route", &[AUTH], &body).await;
        assert!(!r.headers.get("x-request-id").unwrap().is_empty(), "a request id is generated");
    });
}

#[test]
fn batch_route_and_exceptions() {
    let addr = server();
    rt().block_on(async {
        let body = format!("{{\"requests\": [{}, {}]}}", route_body(1), route_body(2));
        let r = post_json(addr, "/v1/route/batch", &[AUTH], &body).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let ds = r.json()["decisions"].as_array().unwrap().clone();
        assert_eq!(ds.len(), 2);
        assert!(ds.iter().all(|d| d["decision"]["endpoint"].is_string()), "{ds:?}");
        let bad = format!("{{\"requests\": [{}, {{\"doc_type\": \"memo\", \"adc_json\": {{}}}}]}}", route_body(1));
        let r = post_json(addr, "/v1/route/batch", &[AUTH], &bad).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(r.error_field(), "requests[1].doc_type");

        let exc = serde_json::json!({
            "doc_type": "supplier_invoice", "endpoint": "API_SUPPLIERINVOICE_PROCESS_SRV/A_SupplierInvoice",
            "adc_json": {}, "request_payload": {"CompanyCode": "1010"},
            "sap_error": {"http_status": 400, "error": {"code": "M8/186", "message": {"lang": "en", "value": "Balance not zero"}}}
        });
        let r = post_json(addr, "/v1/exceptions", &[AUTH], &exc.to_string()).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let a = r.json()["action"].as_str().unwrap().to_string();
        assert!(["AUTO_CORRECT", "RETRY", "ESCALATE", "REJECT", "APPLY_RULE"].contains(&a.as_str()));
        let r = post_json(addr, "/v1/exceptions", &[AUTH], r#"{"doc_type": "supplier_invoice", "endpoint": "X"}"#).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(r.error_field(), "sap_error");
    });
}

#[test]
fn documents_as_users_send_them_get_grounded_decisions_with_provenance() {
    let addr = server();
    rt().block_on(async {
        // The seed's type spelling, extraction-system keys, a nested supplier, an unknown key.
        let body = serde_json::json!({"doc_type": "PURCHASE_ORDER", "adc_json": {
            "PONumber": "4500001", "companyCode": "1010", "vendor": {"id": 100347}, "purchasingOrg": "1010",
            "purchasing_group": "001", "Currency": "eur", "colour": "red",
            "lineItems": [{"material": "TG-1", "qty": 5, "uom": "ST", "netPrice": 2.5, "plant": "1010"}]
        }});
        let r = post_json(addr, "/v1/route", &[AUTH], &body.to_string()).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let d = r.json();
        assert_eq!(d["doc_type"], "purchase_order");
        assert_eq!(d["unmapped_fields"], serde_json::json!(["colour"]));
        if d["endpoint"] == "EXCEPTION_HANDLING" {
            assert!(d["payload"].is_null() && d["provenance"].as_array().unwrap().is_empty());
        } else {
            // Whatever the (random) model prefers, a posted payload is the document's own values.
            assert_eq!(d["payload"]["Supplier"], "100347");
            assert_eq!(d["payload"]["CompanyCode"], "1010");
            assert_eq!(d["payload"]["DocumentCurrency"], "EUR");
            let p = d["provenance"].as_array().unwrap();
            let supplier = p.iter().find(|s| s["pointer"] == "/Supplier").unwrap();
            assert_eq!(supplier["source"], "document");
            assert_eq!(supplier["from"], serde_json::json!(["vendor.id"]));
        }
        // Without the supplier the API cannot be grounded: exception handling, naming it.
        let mut incomplete = body.clone();
        incomplete["adc_json"].as_object_mut().unwrap().remove("vendor");
        let r = post_json(addr, "/v1/route", &[AUTH], &incomplete.to_string()).await;
        let d = r.json();
        assert_eq!(d["endpoint"], "EXCEPTION_HANDLING", "{d}");
        assert!(d["ungrounded"][0]["missing"].as_array().unwrap().iter().any(|m| m == "Supplier"), "{d}");

        // An OData V4 error envelope (message a string, details an array).
        let exc = serde_json::json!({
            "doc_type": "Supplier Invoice", "endpoint": "API_SUPPLIERINVOICE_PROCESS_SRV/A_SupplierInvoice",
            "request_payload": {"CompanyCode": "1010"},
            "sap_error": {"http_status": 503, "error": {"code": "/IWFND/CM_BEC/026", "message": "Service unavailable",
                "details": [{"code": "X/1", "message": "backend down", "target": ""}]}}
        });
        let r = post_json(addr, "/v1/exceptions", &[AUTH], &exc.to_string()).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let a = r.json()["action"].as_str().unwrap().to_string();
        assert!(a == "RETRY" || a == "ESCALATE", "a 503 admits retry or escalation only, got {a}");
    });
}

#[test]
fn chat_completions_are_openai_shaped() {
    let addr = server();
    rt().block_on(async {
        let msg = serde_json::json!({"messages": [{"role": "user", "content": route_body(3)}]});
        let r = post_json(addr, "/v1/chat/completions", &[AUTH], &msg.to_string()).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let v = r.json();
        assert_eq!(v["object"], "chat.completion");
        let content: serde_json::Value = serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
        assert!(content["endpoint"].is_string(), "a routing request gets the decision: {content}");
        let msg = serde_json::json!({
            "messages": [{"role": "user", "content": "Which API posts a goods receipt?"}],
            "max_tokens": 8,
            "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object", "properties": {"api": {"enum": ["A", "B"]}}, "required": ["api"], "additionalProperties": false}}}
        });
        let r = post_json(addr, "/v1/chat/completions", &[AUTH], &msg.to_string()).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let v = r.json();
        assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= 8);
        let content = v["choices"][0]["message"]["content"].as_str().unwrap();
        if v["choices"][0]["finish_reason"] == "stop" {
            let parsed: serde_json::Value = serde_json::from_str(content).expect("schema-constrained content is JSON");
            assert!(parsed["api"] == "A" || parsed["api"] == "B");
        }
        let r = post_json(addr, "/v1/chat/completions", &[AUTH], r#"{"messages": [], "stream": false}"#).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(r.error_field(), "messages");
        // Streaming itself is tested in serve_stream.rs.
        let r = post_json(addr, "/v1/chat/completions", &[AUTH], r#"{"messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": true}}"#).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(r.error_field(), "stream_options");
    });
}

#[test]
fn bad_requests_get_4xx_json_naming_the_field() {
    let addr = server();
    rt().block_on(async {
        let r = post_json(addr, "/v1/route", &[AUTH], "{\"doc_type\": ").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.json()["error"]["code"], "malformed_json");
        let r = post_json(addr, "/v1/route", &[AUTH], r#"{"adc_json": {}}"#).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.error_field(), "doc_type", "missing required field named");
        let r = post_json(addr, "/v1/route", &[AUTH], r#"{"doc_type": "love_letter", "adc_json": {}}"#).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(r.error_field(), "doc_type");
        let r =
            post_json(addr, "/v1/route", &[AUTH], r#"{"doc_type": "purchase_order", "adc_json": [1]}"#).await;
        assert_eq!(r.error_field(), "adc_json");
        let r = send(
            addr,
            Method::POST,
            "/v1/route",
            &[AUTH, ("content-type", "text/plain")],
            Some(&route_body(0)),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(r.error_field(), "content-type");
        let big = format!(
            "{{\"doc_type\": \"purchase_order\", \"adc_json\": {{\"x\": \"{}\"}}}}",
            "a".repeat(100 * 1024)
        );
        let r = post_json(addr, "/v1/route", &[AUTH], &big).await;
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(r.error_field(), "body");
    });
}

#[test]
fn bearer_auth_guards_the_api_but_not_probes() {
    let addr = server();
    rt().block_on(async {
        let r = post_json(addr, "/v1/route", &[], &route_body(0)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.error_field(), "authorization");
        assert_eq!(r.headers.get("www-authenticate").unwrap(), "Bearer");
        let r = post_json(addr, "/v1/route", &[("authorization", "Bearer wrong")], &route_body(0)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        let r = get(addr, "/v1/models", &[]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        for probe in ["/healthz", "/readyz", "/metrics"] {
            assert_eq!(
                get(addr, probe, &[]).await.status,
                StatusCode::OK,
                "{probe} is open to kubelet/Prometheus"
            );
        }
    });
}

#[test]
fn metrics_count_requests_decisions_and_tokens() {
    let addr = server();
    rt().block_on(async {
        let r = post_json(addr, "/v1/route", &[AUTH], &route_body(4)).await;
        assert_eq!(r.status, StatusCode::OK);
        let _ = post_json(addr, "/v1/route", &[AUTH], "{").await;
        let m = get(addr, "/metrics", &[]).await.body;
        for needle in [
            r#"sapllm_requests_total{route="/v1/route",status="200"}"#,
            r#"sapllm_requests_total{route="/v1/route",status="400"}"#,
            "sapllm_request_duration_seconds_bucket",
            "sapllm_inflight_requests",
            "sapllm_queue_depth",
            r#"sapllm_tokens_generated_total{origin="forced"}"#,
            r#"sapllm_tokens_generated_total{origin="sampled"}"#,
            "sapllm_decision_confidence_bucket",
            "sapllm_batch_size_bucket",
            "sapllm_decisions_total",
            r#"sapllm_abstentions_total{kind="routing"}"#,
            "sapllm_ready 1",
        ] {
            assert!(m.contains(needle), "metrics lack {needle}:\n{m}");
        }
    });
}
