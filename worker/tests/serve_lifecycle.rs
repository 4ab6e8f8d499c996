//! Server lifecycle over real HTTP: readiness only after load + warm-up, a failed load, bounded
//! queue back-pressure (429 + Retry-After), per-request timeouts (504), graceful shutdown
//! that lets in-flight requests finish, and several model threads sharing one model.

mod serve_support;

use std::time::Duration;

use hyper::StatusCode;
use serve_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_only_after_load_and_warm_up() {
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let gated: sapllm_serve::Loader = Box::new(move || {
        release_rx.recv().ok();
        Ok((engine(), info()))
    });
    let mut server = sapllm_serve::start(config(2, 8, 60_000), gated).await.expect("start");
    let addr = server.addr;
    assert_eq!(get(addr, "/healthz", &[]).await.status, StatusCode::OK, "alive while loading");
    let r = get(addr, "/readyz", &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["status"], "loading");
    let r = post_json(addr, "/v1/route", &[], &route_body(0)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "no decisions before ready");
    assert!(r.headers.contains_key("retry-after"));
    release_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(120), server.ready())
        .await
        .expect("ready in time")
        .expect("ready");
    assert_eq!(get(addr, "/readyz", &[]).await.status, StatusCode::OK);
    assert_eq!(post_json(addr, "/v1/route", &[], &route_body(0)).await.status, StatusCode::OK);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_load_is_never_ready() {
    let failing: sapllm_serve::Loader = Box::new(|| anyhow::bail!("no such model directory"));
    let mut server = sapllm_serve::start(config(2, 8, 60_000), failing).await.expect("start");
    let err = server.ready().await.expect_err("load fails");
    assert!(err.to_string().contains("no such model"), "{err}");
    let r = get(server.addr, "/readyz", &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["status"], "failed");
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_with_retry_after() {
    // One decision at a time and one waiting: a burst of 8 must overflow.
    let mut server = sapllm_serve::start(config(1, 1, 120_000), loader()).await.expect("start");
    server.ready().await.expect("ready");
    let addr = server.addr;
    let body = route_body(0);
    let burst: Vec<_> = (0..8)
        .map(|_| {
            let body = body.clone();
            tokio::spawn(async move { post_json(addr, "/v1/route", &[], &body).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for h in burst {
        let r = h.await.unwrap();
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(r.headers.get("retry-after").unwrap(), "1");
            assert_eq!(r.json()["error"]["code"], "queue_full");
        }
        statuses.push(r.status);
    }
    assert!(statuses.contains(&StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
    assert!(statuses.contains(&StatusCode::OK), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK || *s == StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_their_timeout_get_504() {
    let mut server = sapllm_serve::start(config(1, 8, 1), loader()).await.expect("start");
    server.ready().await.expect("ready");
    let r = post_json(server.addr, "/v1/route", &[], &route_body(0)).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "timeout");
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests() {
    let mut server = sapllm_serve::start(config(4, 8, 120_000), loader()).await.expect("start");
    server.ready().await.expect("ready");
    let addr = server.addr;
    let body = format!("{{\"requests\": [{}, {}, {}]}}", route_body(1), route_body(2), route_body(3));
    let in_flight = tokio::spawn(async move { post_json(addr, "/v1/route/batch", &[], &body).await });
    // Wait until the batch request is being served (the /metrics request itself counts as 1).
    let mut seen = false;
    for _ in 0..400 {
        if get(addr, "/metrics", &[]).await.body.contains("sapllm_inflight_requests 2") {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(seen, "the batch request was never observed in flight");
    server.shutdown().await.expect("graceful shutdown");
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "the in-flight request completed: {}", r.body);
    assert_eq!(r.json()["decisions"].as_array().unwrap().len(), 3);
    let refused = tokio::net::TcpStream::connect(addr).await;
    assert!(refused.is_err(), "no new connections after shutdown");
}

/// A decision without its `decision_id` (every decision gets its own).
fn without_id(mut v: serde_json::Value) -> serde_json::Value {
    assert!(v["decision_id"].is_string(), "{v}");
    v.as_object_mut().unwrap().remove("decision_id");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_model_threads_answer_as_one_does() {
    let bodies: Vec<String> = (0..6).map(route_body).collect();
    // The reference: one model thread, one request at a time.
    let mut one = sapllm_serve::start(config(1, 16, 120_000), loader()).await.expect("start");
    one.ready().await.expect("ready");
    let mut want = Vec::new();
    for b in &bodies {
        let r = post_json(one.addr, "/v1/route", &[], b).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        want.push(without_id(r.json()));
    }
    one.shutdown().await.expect("shutdown");
    // Two model threads sharing the model and the queue, all requests at once.
    let mut cfg = config(1, 16, 120_000);
    cfg.batch.workers = 2;
    let mut two = sapllm_serve::start(cfg, loader()).await.expect("start");
    two.ready().await.expect("ready");
    let addr = two.addr;
    let calls: Vec<_> = bodies
        .iter()
        .cloned()
        .map(|b| tokio::spawn(async move { post_json(addr, "/v1/route", &[], &b).await }))
        .collect();
    for (call, want) in calls.into_iter().zip(&want) {
        let r = call.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(&without_id(r.json()), want, "the same document gets the same decision on any thread");
    }
    // Shutdown ends both threads (the call joins them).
    two.shutdown().await.expect("shutdown");
}
