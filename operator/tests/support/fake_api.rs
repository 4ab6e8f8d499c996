//! A small in-process Kubernetes API server for the controllers' API traffic: list, watch
//! (`watch=true` streaming), get, create, replace (with resourceVersion conflicts), server-side
//! apply and merge patches (including the status subresource), delete with owner-reference
//! cascading, pod logs and the pod proxy (scripted `/metrics`). The test drives the world: it marks Jobs complete, writes termination
//! messages and Deployment status, and inspects every request the operator made.
//!
//! Simplifications (documented so nobody trusts them beyond this): apply replaces the applied
//! object's spec/data wholesale (the operator always applies complete objects), no schema
//! validation or defaulting, no field-ownership conflicts, no admission.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// Resource keys: `<group>/<version>/<plural>` (the core group is empty).
pub const TRAINING_RUNS: &str = "sapllm.io/v1alpha1/trainingruns";
pub const EVALUATIONS: &str = "sapllm.io/v1alpha1/evaluations";
pub const ENDPOINTS: &str = "sapllm.io/v1alpha1/routingendpoints";
pub const JOBS: &str = "batch/v1/jobs";
pub const PODS: &str = "/v1/pods";
pub const CONFIG_MAPS: &str = "/v1/configmaps";
pub const CLAIMS: &str = "/v1/persistentvolumeclaims";
pub const SERVICES: &str = "/v1/services";
pub const DEPLOYMENTS: &str = "apps/v1/deployments";
pub const AUTOSCALERS: &str = "autoscaling/v2/horizontalpodautoscalers";
pub const BUDGETS: &str = "policy/v1/poddisruptionbudgets";
pub const LEASES: &str = "coordination.k8s.io/v1/leases";
pub const EVENTS: &str = "events.k8s.io/v1/events";

/// One request the fake served.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
    pub query: HashMap<String, String>,
    pub content_type: String,
}

struct Change {
    rv: u64,
    resource: String,
    namespace: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Inner {
    rv: u64,
    uid: u64,
    objects: BTreeMap<String, BTreeMap<(String, String), Value>>,
    changes: Vec<Change>,
    logs: HashMap<(String, String), String>,
    metrics: HashMap<(String, String), String>,
    requests: Vec<Request>,
}

/// The fake API server.
#[derive(Clone)]
pub struct FakeApi {
    inner: Arc<Mutex<Inner>>,
    notify: broadcast::Sender<()>,
    pub addr: SocketAddr,
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn status(code: u16, reason: &str, message: String) -> Response {
    let body = json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code });
    (StatusCode::from_u16(code).unwrap(), axum::Json(body)).into_response()
}

/// RFC 7386 JSON merge patch.
pub fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

fn labels_match(obj: &Value, selector: Option<&String>) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else { return true };
    let labels = &obj["metadata"]["labels"];
    sel.split(',').all(|term| match term.split_once('=') {
        Some((k, v)) => labels[k.trim()].as_str() == Some(v.trim()),
        None => !labels[term.trim()].is_null(),
    })
}

impl Inner {
    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn record(&mut self, resource: &str, namespace: &str, kind: &'static str, object: Value) {
        let rv = self.rv;
        self.changes.push(Change {
            rv,
            resource: resource.into(),
            namespace: namespace.into(),
            kind,
            object,
        });
    }

    fn store(&mut self, resource: &str, ns: &str, mut obj: Value, created: bool) -> Value {
        let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
        if !created
            && let Some(old) = self.objects.get(resource).and_then(|m| m.get(&(ns.to_string(), name.clone())))
        {
            // Like the API server: a write that changes nothing (an idempotent apply) does not
            // bump the resourceVersion and sends no watch event.
            let mut same = obj.clone();
            same["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
            same["metadata"]["namespace"] = old["metadata"]["namespace"].clone();
            if &same == old {
                return old.clone();
            }
        }
        let rv = self.bump();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        if created {
            self.uid += 1;
            obj["metadata"]["uid"] = json!(format!("00000000-0000-0000-0000-{:012}", self.uid));
            obj["metadata"]["creationTimestamp"] = json!(now());
            obj["metadata"]["generation"] = json!(1);
        }
        obj["metadata"]["namespace"] = json!(ns);
        self.objects.entry(resource.into()).or_default().insert((ns.into(), name), obj.clone());
        self.record(resource, ns, if created { "ADDED" } else { "MODIFIED" }, obj.clone());
        obj
    }

    fn delete(&mut self, resource: &str, ns: &str, name: &str) -> Option<Value> {
        let obj = self.objects.get_mut(resource)?.remove(&(ns.into(), name.into()))?;
        self.bump();
        self.record(resource, ns, "DELETED", obj.clone());
        // Garbage collection: children owned by the deleted object go too.
        let uid = obj["metadata"]["uid"].as_str().unwrap_or_default().to_string();
        let children: Vec<(String, String, String)> = self
            .objects
            .iter()
            .flat_map(|(r, objs)| {
                objs.iter()
                    .filter(|(_, o)| {
                        o["metadata"]["ownerReferences"]
                            .as_array()
                            .is_some_and(|refs| refs.iter().any(|x| x["uid"] == uid))
                    })
                    .map(|((n, m), _)| (r.clone(), n.clone(), m.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (r, n, m) in children {
            self.delete(&r, &n, &m);
        }
        Some(obj)
    }
}

struct Parsed {
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse(path: &str) -> Option<Parsed> {
    let seg: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (prefix, rest) = match *seg.first()? {
        "api" => (format!("/{}", seg.get(1)?), &seg[2..]),
        "apis" => (format!("{}/{}", seg.get(1)?, seg.get(2)?), &seg[3..]),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        rest => (None, rest),
    };
    Some(Parsed {
        resource: format!("{prefix}/{}", rest.first()?),
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        subresource: rest.get(2).map(|s| s.to_string()),
    })
}

impl FakeApi {
    /// Starts the server on a loopback port.
    pub async fn start() -> FakeApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (notify, _) = broadcast::channel(1024);
        let api = FakeApi { inner: Arc::default(), notify, addr };
        let app = Router::new().fallback(handle).with_state(api.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        api
    }

    /// A client for this server (namespace `default`).
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.client_url().parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// A client without the retries of 429/503/504 (what the operator reads pods' metrics with).
    pub fn client_without_retry(&self) -> kube::Client {
        let mut config = kube::Config::new(self.client_url().parse().unwrap());
        config.default_retry = false;
        kube::Client::try_from(config).unwrap()
    }

    fn changed(&self) {
        let _ = self.notify.send(());
    }

    /// Creates (or overwrites) an object as a user would.
    pub fn put(&self, resource: &str, obj: Value) -> Value {
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        let mut inner = self.inner.lock().unwrap();
        let existing = inner.objects.get(resource).and_then(|m| m.get(&(ns.clone(), name))).cloned();
        let out = match existing {
            Some(old) => {
                let mut obj = obj;
                for k in ["uid", "creationTimestamp"] {
                    obj["metadata"][k] = old["metadata"][k].clone();
                }
                let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
                obj["metadata"]["generation"] =
                    json!(if old["spec"] != obj["spec"] { generation + 1 } else { generation });
                if obj.get("status").is_none() && old.get("status").is_some() {
                    obj["status"] = old["status"].clone();
                }
                inner.store(resource, &ns, obj, false)
            }
            None => inner.store(resource, &ns, obj, true),
        };
        drop(inner);
        self.changed();
        out
    }

    /// The object, if it exists.
    pub fn get(&self, resource: &str, ns: &str, name: &str) -> Option<Value> {
        self.inner
            .lock()
            .unwrap()
            .objects
            .get(resource)
            .and_then(|m| m.get(&(ns.into(), name.into())))
            .cloned()
    }

    /// Every object of `resource` in `ns`.
    pub fn list(&self, resource: &str, ns: &str) -> Vec<Value> {
        let inner = self.inner.lock().unwrap();
        inner
            .objects
            .get(resource)
            .map(|m| m.iter().filter(|((n, _), _)| n == ns).map(|(_, v)| v.clone()).collect())
            .unwrap_or_default()
    }

    /// Merges `patch` into an object (e.g. a Job's or a Deployment's status).
    pub fn patch(&self, resource: &str, ns: &str, name: &str, patch: Value) -> Value {
        let mut inner = self.inner.lock().unwrap();
        let mut obj =
            inner.objects.get(resource).and_then(|m| m.get(&(ns.into(), name.into()))).cloned().unwrap();
        merge(&mut obj, &patch);
        let out = inner.store(resource, ns, obj, false);
        drop(inner);
        self.changed();
        out
    }

    /// Deletes an object (and what it owns).
    pub fn delete(&self, resource: &str, ns: &str, name: &str) {
        self.inner.lock().unwrap().delete(resource, ns, name);
        self.changed();
    }

    /// What the kubelet and the Job controller do when a Job's worker exits: its pod with the
    /// termination message `message`, and the Job's Complete (exit 0) or Failed condition.
    pub fn finish_job(&self, job: &Value, exit_code: i32, message: &str) {
        let ns = job["metadata"]["namespace"].as_str().unwrap_or("default");
        let name = job["metadata"]["name"].as_str().unwrap();
        let mut labels = job["spec"]["template"]["metadata"]["labels"].clone();
        labels["batch.kubernetes.io/job-name"] = json!(name);
        self.put(
            "/v1/pods",
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": { "name": format!("{name}-0"), "namespace": ns, "labels": labels,
                    "ownerReferences": [{ "apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": job["metadata"]["uid"], "controller": true }] },
                "spec": { "containers": [{ "name": "worker", "image": "w" }] },
                "status": { "phase": if exit_code == 0 { "Succeeded" } else { "Failed" },
                    "containerStatuses": [{ "name": "worker", "image": "w", "imageID": "", "ready": false, "restartCount": 0,
                        "state": { "terminated": { "exitCode": exit_code, "message": message } } }] },
            }),
        );
        let (cond, reason, counts) = if exit_code == 0 {
            ("Complete", "Completed", json!({ "succeeded": 1 }))
        } else {
            ("Failed", "PodFailurePolicy", json!({ "failed": 1 }))
        };
        let mut status = json!({ "active": 0, "conditions": [{ "type": cond, "status": "True", "reason": reason, "message": "" }] });
        merge(&mut status, &counts);
        self.patch("batch/v1/jobs", ns, name, json!({ "status": status }));
    }

    /// Sets the log a pod serves.
    /// Sets what a pod's `/metrics` answers through the pod proxy.
    pub fn set_metrics(&self, ns: &str, pod: &str, text: &str) {
        self.inner.lock().unwrap().metrics.insert((ns.into(), pod.into()), text.into());
    }

    pub fn set_log(&self, ns: &str, pod: &str, log: &str) {
        self.inner.lock().unwrap().logs.insert((ns.into(), pod.into()), log.into());
    }

    /// The current resourceVersion.
    pub fn rv(&self) -> u64 {
        self.inner.lock().unwrap().rv
    }

    /// `resource/name` of every change after `rv`.
    pub fn changes_after(&self, rv: u64) -> Vec<String> {
        let inner = self.inner.lock().unwrap();
        inner
            .changes
            .iter()
            .filter(|c| c.rv > rv)
            .map(|c| format!("{} {}", c.resource, c.object["metadata"]["name"]))
            .collect()
    }

    /// How many requests were served so far.
    pub fn request_count(&self) -> usize {
        self.inner.lock().unwrap().requests.len()
    }

    /// The requests served after the first `from`.
    pub fn requests_since(&self, from: usize) -> Vec<Request> {
        self.inner.lock().unwrap().requests.get(from..).map(<[Request]>::to_vec).unwrap_or_default()
    }

    /// `resource name` of every object created after `rv`.
    pub fn added_after(&self, rv: u64) -> Vec<String> {
        let inner = self.inner.lock().unwrap();
        let from = inner.changes.partition_point(|c| c.rv <= rv);
        inner.changes[from..]
            .iter()
            .filter(|c| c.kind == "ADDED")
            .map(|c| format!("{} {}", c.resource, c.object["metadata"]["name"]))
            .collect()
    }

    /// Every object of `resource` in every namespace.
    pub fn list_all(&self, resource: &str) -> Vec<Value> {
        self.inner
            .lock()
            .unwrap()
            .objects
            .get(resource)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The server's URL (for a kubeconfig).
    pub fn client_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.inner.lock().unwrap().requests.clone()
    }

    /// Polls `f` until it returns Some, or panics after `secs` seconds with `what`.
    pub async fn wait_for<T>(&self, secs: u64, what: &str, mut f: impl FnMut(&FakeApi) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(t) = f(self) {
                return t;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

async fn handle(
    State(api): State<FakeApi>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query: HashMap<String, String> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), urlencoding_decode(v)))
        .collect();
    let Some(p) = parse(uri.path()) else {
        return status(404, "NotFound", format!("no route {}", uri.path()));
    };
    let content_type =
        headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    api.inner.lock().unwrap().requests.push(Request {
        method: method.to_string(),
        resource: p.resource.clone(),
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        subresource: p.subresource.clone(),
        query: query.clone(),
        content_type: content_type.clone(),
    });
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    match (method, &p.name) {
        (Method::GET, None) if watch => watch_stream(api, p, query),
        (Method::GET, None) => {
            let inner = api.inner.lock().unwrap();
            let items: Vec<Value> = inner
                .objects
                .get(&p.resource)
                .map(|m| {
                    m.iter()
                        .filter(|((ns, _), o)| {
                            p.namespace.as_ref().is_none_or(|n| n == ns)
                                && labels_match(o, query.get("labelSelector"))
                        })
                        .map(|(_, o)| o.clone())
                        .collect()
                })
                .unwrap_or_default();
            axum::Json(json!({ "apiVersion": "v1", "kind": "List", "metadata": { "resourceVersion": inner.rv.to_string() }, "items": items })).into_response()
        }
        (Method::GET, Some(name)) => {
            let ns = p.namespace.clone().unwrap_or_default();
            if p.subresource.as_deref() == Some("proxy") {
                // The pod proxy (`pods/<name>:<port>/proxy/<path>`): the scripted `/metrics`.
                let pod = name.split(':').next().unwrap_or_default().to_string();
                let text = api.inner.lock().unwrap().metrics.get(&(ns, pod.clone())).cloned();
                return match text {
                    Some(t) => t.into_response(),
                    None => status(503, "ServiceUnavailable", format!("no endpoints for pod {pod}")),
                };
            }
            if p.subresource.as_deref() == Some("log") {
                let log =
                    api.inner.lock().unwrap().logs.get(&(ns, name.clone())).cloned().unwrap_or_default();
                return log.into_response();
            }
            match api.get(&p.resource, &ns, name) {
                Some(o) => axum::Json(o).into_response(),
                None => status(404, "NotFound", format!("{} {name} not found", p.resource)),
            }
        }
        (Method::POST, _) => {
            let mut obj: Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => return status(400, "BadRequest", e.to_string()),
            };
            let ns = p.namespace.clone().unwrap_or_default();
            let mut inner = api.inner.lock().unwrap();
            if obj["metadata"]["name"].is_null()
                && let Some(g) = obj["metadata"]["generateName"].as_str()
            {
                obj["metadata"]["name"] = json!(format!("{g}{}", inner.uid + 1));
            }
            let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
            if inner.objects.get(&p.resource).is_some_and(|m| m.contains_key(&(ns.clone(), name.clone()))) {
                return status(409, "AlreadyExists", format!("{} {name} already exists", p.resource));
            }
            let out = inner.store(&p.resource, &ns, obj, true);
            drop(inner);
            api.changed();
            (StatusCode::CREATED, axum::Json(out)).into_response()
        }
        (Method::PUT, Some(name)) => {
            let obj: Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => return status(400, "BadRequest", e.to_string()),
            };
            let ns = p.namespace.clone().unwrap_or_default();
            let mut inner = api.inner.lock().unwrap();
            let Some(old) =
                inner.objects.get(&p.resource).and_then(|m| m.get(&(ns.clone(), name.clone()))).cloned()
            else {
                return status(404, "NotFound", format!("{} {name} not found", p.resource));
            };
            let sent = obj["metadata"]["resourceVersion"].as_str().unwrap_or_default();
            if !sent.is_empty() && sent != old["metadata"]["resourceVersion"].as_str().unwrap_or_default() {
                return status(409, "Conflict", "the object has been modified".into());
            }
            let mut new = obj;
            for k in ["uid", "creationTimestamp", "generation"] {
                new["metadata"][k] = old["metadata"][k].clone();
            }
            let out = inner.store(&p.resource, &ns, new, false);
            drop(inner);
            api.changed();
            axum::Json(out).into_response()
        }
        (Method::PATCH, Some(name)) => {
            let patch: Value = if content_type.contains("apply-patch") {
                match serde_yaml::from_slice(&body) {
                    Ok(v) => v,
                    Err(e) => return status(400, "BadRequest", e.to_string()),
                }
            } else {
                match serde_json::from_slice(&body) {
                    Ok(v) => v,
                    Err(e) => return status(400, "BadRequest", e.to_string()),
                }
            };
            let ns = p.namespace.clone().unwrap_or_default();
            let mut inner = api.inner.lock().unwrap();
            let existing =
                inner.objects.get(&p.resource).and_then(|m| m.get(&(ns.clone(), name.clone()))).cloned();
            let is_status = p.subresource.as_deref() == Some("status");
            let apply = content_type.contains("apply-patch");
            let (obj, created) = match (existing, is_status, apply) {
                (None, true, _) | (None, false, false) => {
                    return status(404, "NotFound", format!("{} {name} not found", p.resource));
                }
                (None, false, true) => {
                    let mut o = patch.clone();
                    if let Some(m) = o.as_object_mut() {
                        m.remove("status");
                    }
                    (o, true)
                }
                (Some(mut old), true, true) => {
                    old["status"] = patch["status"].clone();
                    (old, false)
                }
                (Some(mut old), true, false) => {
                    merge(&mut old["status"], &patch["status"]);
                    (old, false)
                }
                (Some(old), false, true) => {
                    let mut o = patch.clone();
                    if let Some(m) = o.as_object_mut() {
                        m.remove("status");
                    }
                    for k in ["uid", "creationTimestamp", "generation"] {
                        o["metadata"][k] = old["metadata"][k].clone();
                    }
                    if old.get("status").is_some() {
                        o["status"] = old["status"].clone();
                    }
                    if old["spec"] != o["spec"] {
                        o["metadata"]["generation"] =
                            json!(old["metadata"]["generation"].as_i64().unwrap_or(1) + 1);
                    }
                    (o, false)
                }
                (Some(mut old), false, false) => {
                    let before = old["spec"].clone();
                    merge(&mut old, &patch);
                    if old["spec"] != before {
                        old["metadata"]["generation"] =
                            json!(old["metadata"]["generation"].as_i64().unwrap_or(1) + 1);
                    }
                    (old, false)
                }
            };
            let out = inner.store(&p.resource, &ns, obj, created);
            drop(inner);
            api.changed();
            axum::Json(out).into_response()
        }
        (Method::DELETE, Some(name)) => {
            let ns = p.namespace.clone().unwrap_or_default();
            let out = api.inner.lock().unwrap().delete(&p.resource, &ns, name);
            api.changed();
            match out {
                Some(o) => axum::Json(o).into_response(),
                None => status(404, "NotFound", format!("{} {name} not found", p.resource)),
            }
        }
        (m, _) => status(405, "MethodNotAllowed", format!("{m} not supported")),
    }
}

fn urlencoding_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let h = u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("00"), 16)
                    .unwrap_or(b'?');
                out.push(h);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Streams the changes after the given resourceVersion as watch events, then every new one.
fn watch_stream(api: FakeApi, p: Parsed, query: HashMap<String, String>) -> Response {
    let since: u64 = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let rx = api.notify.subscribe();
    let selector = query.get("labelSelector").cloned();
    let stream = futures::stream::unfold((since, rx), move |(mut last, mut rx)| {
        let api = api.clone();
        let resource = p.resource.clone();
        let namespace = p.namespace.clone();
        let selector = selector.clone();
        async move {
            loop {
                let mut chunk = String::new();
                {
                    let inner = api.inner.lock().unwrap();
                    let from = inner.changes.partition_point(|c| c.rv <= last);
                    for c in &inner.changes[from..] {
                        if c.resource == resource
                            && namespace.as_ref().is_none_or(|n| n == &c.namespace)
                            && labels_match(&c.object, selector.as_ref())
                        {
                            chunk.push_str(&json!({ "type": c.kind, "object": c.object }).to_string());
                            chunk.push('\n');
                        }
                    }
                    last = inner.rv;
                }
                if !chunk.is_empty() {
                    return Some((Ok::<_, std::io::Error>(chunk), (last, rx)));
                }
                match rx.recv().await {
                    Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    });
    Response::builder().header("content-type", "application/json").body(Body::from_stream(stream)).unwrap()
}
