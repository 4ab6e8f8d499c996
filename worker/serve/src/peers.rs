//! Feedback across replicas (`serve --peer-domain`).
//!
//! A decision lives in the memory of the replica that made it ([`super::feedback`]), but the
//! replicas of an endpoint sit behind one Service, so feedback lands on any of them. With a peer
//! domain `D` (a headless Service selecting every replica, `<endpoint>-peers.<namespace>.svc`)
//! and this replica's name `N` under it (`--peer-name`; by default the pod's address with dashes,
//! `--peer-ip`/`POD_IP`, which is how cluster DNS names the addresses of a headless Service whose
//! pods have no hostname of their own; else `HOSTNAME`):
//!
//! - decision ids are `<uuid>.<N>` (a uuid has no `.`, a DNS label neither, so the split is
//!   unambiguous);
//! - feedback for an id whose replica part is another replica `R` is forwarded, body unchanged,
//!   with the client's `Authorization`, to `http://R.D:<this server's port>/v1/feedback`, and the
//!   client gets that replica's answer as it is (status, body, content type). A forwarded request
//!   carries [`FORWARDED_HEADER`] and is never forwarded again;
//! - a replica that cannot be reached (its name no longer resolves, nothing listens: replaced or
//!   scaled down) took its decisions with it: 404 `unknown_decision`. No answer within the
//!   request timeout is a 504, another failure a 502;
//! - `sapllm_feedback_forwarded_total{result}` counts the forwards: `ok` (the replica answered,
//!   whatever its status), `unreachable`, `timeout`, `error`.
//!
//! Ids without a replica part (made before peers were enabled) or with this replica's name are
//! handled here, as without peers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::Full;

use super::error::ApiError;
use super::feedback::new_decision_id;
use super::metrics::Metrics;
use super::upstream::{self, Client};

/// Marks a feedback request as forwarded by another replica (value `1`): answered here, never
/// forwarded again.
pub const FORWARDED_HEADER: &str = "x-sapllm-forwarded";
/// Results of a forward (`sapllm_feedback_forwarded_total{result}`).
pub const RESULTS: [&str; 4] = ["ok", "unreachable", "timeout", "error"];
/// Bytes of a replica's answer read at most (a feedback answer is a few hundred).
const MAX_ANSWER_BYTES: usize = 1 << 20;
/// Idle connections kept per replica.
const MAX_IDLE_PER_PEER: usize = 4;

/// Peer settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The DNS domain under which each replica's name resolves (`--peer-domain`), e.g.
    /// `ep-peers.ns.svc`.
    pub domain: String,
    /// This replica's name (`--peer-name`, default the dashed `--peer-ip`, else `HOSTNAME`): a
    /// DNS label.
    pub name: String,
    /// Addresses by replica name, used instead of resolving `<name>.<domain>` and this server's
    /// port (like curl's `--resolve`; for tests, not on the command line).
    pub resolve: HashMap<String, SocketAddr>,
}

impl PeerConfig {
    /// Validated settings; the errors name the flag at fault.
    pub fn new(domain: &str, name: &str) -> Result<Self> {
        Ok(PeerConfig { domain: parse_domain(domain)?, name: parse_name(name)?, resolve: HashMap::new() })
    }
}

/// Whether `s` is a DNS label: 1 to 63 lowercase ASCII letters, digits and `-`, starting and
/// ending with a letter or digit.
pub fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=63).contains(&b.len())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Checks `--peer-domain`: a DNS name (no scheme, port or path); returns it lowercased, without
/// a trailing dot.
pub fn parse_domain(domain: &str) -> Result<String> {
    let d = domain.trim();
    let example = "e.g. --peer-domain NAME-peers.NAMESPACE.svc";
    if d.is_empty() {
        bail!("--peer-domain is empty: give the DNS domain the replicas' names resolve under, {example}");
    }
    if d.contains("://") {
        bail!("--peer-domain {d:?} must be a DNS name, not a URL: leave out the scheme, {example}");
    }
    if d.contains('/') {
        bail!("--peer-domain {d:?} must be a DNS name without a slash (no path), {example}");
    }
    if d.contains(':') {
        bail!(
            "--peer-domain {d:?} must be a DNS name without a port: replicas are called on this \
             server's --port, {example}"
        );
    }
    let d = d.strip_suffix('.').unwrap_or(d).to_ascii_lowercase();
    if d.len() > 253 || !d.split('.').all(is_label) {
        bail!(
            "--peer-domain {d:?} is not a DNS name (dot-separated labels of lowercase letters, digits \
             and '-', at most 63 characters each), {example}"
        );
    }
    Ok(d)
}

/// Checks `--peer-name`.
pub fn parse_name(name: &str) -> Result<String> {
    if !is_label(name) {
        bail!(
            "--peer-name {name:?} must be a DNS label (1 to 63 lowercase letters, digits and '-', \
             starting and ending with a letter or digit): this replica's host name under \
             --peer-domain"
        );
    }
    Ok(name.to_string())
}

/// The replica part of a decision id: what follows its first `.`, when that is a DNS label.
pub fn replica_of(id: &str) -> Option<&str> {
    id.split_once('.').map(|(_, r)| r).filter(|r| is_label(r))
}

/// Whether a request was forwarded by another replica ([`FORWARDED_HEADER`]: `1`).
pub fn is_forwarded(headers: &HeaderMap) -> bool {
    headers.get(FORWARDED_HEADER).and_then(|v| v.to_str().ok()).is_some_and(|v| v.trim() == "1")
}

/// The forwarding side of the feedback state.
pub struct Peers {
    domain: String,
    name: String,
    resolve: HashMap<String, SocketAddr>,
    /// This server's port: the replicas' too.
    port: u16,
    timeout: Duration,
    client: Client,
    metrics: Arc<Metrics>,
}

impl Peers {
    /// Forwarding per `cfg` to replicas listening on `port`, each forward bounded by `timeout`;
    /// the result series start at 0.
    pub fn new(cfg: &PeerConfig, port: u16, timeout: Duration, metrics: Arc<Metrics>) -> Peers {
        for result in RESULTS {
            metrics.feedback_forwarded.with_label_values(&[result]);
        }
        Peers {
            domain: cfg.domain.clone(),
            name: cfg.name.clone(),
            resolve: cfg.resolve.clone(),
            port,
            timeout,
            client: upstream::client(timeout, MAX_IDLE_PER_PEER),
            metrics,
        }
    }

    /// This replica's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A new decision id, `<uuid>.<name>`.
    pub fn decision_id(&self) -> String {
        format!("{}.{}", new_decision_id(), self.name)
    }

    /// The other replica feedback for `id` goes to, unless the request was itself forwarded.
    pub fn owner<'a>(&self, id: &'a str, headers: &HeaderMap) -> Option<&'a str> {
        replica_of(id).filter(|r| *r != self.name && !is_forwarded(headers))
    }

    /// The URL of `replica`'s feedback API.
    fn url(&self, replica: &str) -> String {
        match self.resolve.get(replica) {
            Some(addr) => format!("http://{addr}/v1/feedback"),
            None => format!("http://{replica}.{}:{}/v1/feedback", self.domain, self.port),
        }
    }

    /// Sends feedback `body` for decision `id` to `replica`, which made it, and answers as it
    /// did; when it cannot, an error saying why.
    pub async fn forward(
        &self,
        id: &str,
        replica: &str,
        body: Bytes,
        auth: Option<&HeaderValue>,
    ) -> Response {
        let url = self.url(replica);
        let mut req = Request::post(&url)
            .header(header::CONTENT_TYPE, "application/json")
            .header(FORWARDED_HEADER, "1");
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a.clone());
        }
        let req = match req.body(Full::new(body)) {
            Ok(r) => r,
            Err(e) => return self.failed("error", id, replica, &e.to_string()),
        };
        match upstream::send(&self.client, req, self.timeout, MAX_ANSWER_BYTES).await {
            Ok(reply) => {
                self.metrics.feedback_forwarded.with_label_values(&["ok"]).inc();
                tracing::debug!(%replica, status = reply.status.as_u16(), "feedback forwarded");
                let mut resp = Response::new(Body::from(reply.body));
                *resp.status_mut() = reply.status;
                if let Some(ct) = reply.headers.get(header::CONTENT_TYPE) {
                    resp.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
                }
                resp
            }
            Err(e) => {
                let result = match e {
                    upstream::Error::Unreachable(_) => "unreachable",
                    upstream::Error::Timeout => "timeout",
                    upstream::Error::Broken(_) | upstream::Error::TooLarge(_) => "error",
                };
                tracing::warn!(%replica, %url, error = %e, result, "forwarding feedback failed");
                self.failed(result, id, replica, &e.to_string())
            }
        }
    }

    /// Counts a failed forward and the answer for it.
    fn failed(&self, result: &str, id: &str, replica: &str, error: &str) -> Response {
        self.metrics.feedback_forwarded.with_label_values(&[result]).inc();
        let ms = self.timeout.as_millis();
        match result {
            "unreachable" => ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_decision",
                format!(
                    "decision_id {id:?} was made by replica {replica:?}, which cannot be reached \
                     (replaced or scaled down): decisions live in the memory of the replica that \
                     made them, so feedback for this one can no longer be recorded"
                ),
            )
            .field("decision_id"),
            "timeout" => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "peer_timeout",
                format!(
                    "replica {replica:?}, which made decision {id:?}, did not answer within the \
                     request timeout of {ms} ms; send the feedback again"
                ),
            ),
            _ => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "peer_error",
                format!(
                    "forwarding the feedback to replica {replica:?}, which made decision {id:?}, \
                     failed ({error}); send the feedback again"
                ),
            ),
        }
        .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_validated_naming_the_flag() {
        let ok = PeerConfig::new(" Ep-Peers.ns.svc. ", "ep-7d9c-x2k4f").unwrap();
        assert_eq!((ok.domain.as_str(), ok.name.as_str()), ("ep-peers.ns.svc", "ep-7d9c-x2k4f"));
        assert!(ok.resolve.is_empty());
        for (bad, says) in [
            ("", "empty"),
            ("http://ep-peers.ns.svc", "scheme"),
            ("ep-peers.ns.svc:8080", "port"),
            ("ep-peers.ns.svc/x", "slash"),
            ("ep_peers.ns.svc", "not a DNS name"),
            ("ep..svc", "not a DNS name"),
        ] {
            let e = parse_domain(bad).expect_err(bad).to_string();
            assert!(e.contains("--peer-domain") && e.contains(says), "{bad}: {e}");
        }
        for bad in ["", "Pod-0", "pod.0", "-pod", "pod-", "pod_0", &"a".repeat(64)] {
            let e = parse_name(bad).expect_err(bad).to_string();
            assert!(e.contains("--peer-name"), "{bad}: {e}");
        }
        assert!(parse_name(&"a".repeat(63)).is_ok());
    }

    #[test]
    fn the_replica_part_follows_the_first_dot_when_it_is_a_label() {
        let id = format!("{}.replica-a", new_decision_id());
        assert_eq!(replica_of(&id), Some("replica-a"));
        assert_eq!(replica_of(&new_decision_id()), None);
        // Not a label: never turned into a host name.
        assert_eq!(replica_of("x.evil.example"), None);
        assert_eq!(replica_of("x.a:80"), None);
        assert_eq!(replica_of("x.a/b"), None);
        assert_eq!(replica_of("x."), None);
    }

    #[tokio::test]
    async fn ids_carry_the_name_and_only_other_replicas_own_them() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let cfg = PeerConfig::new("ep-peers.ns.svc", "replica-b").unwrap();
        let p = Peers::new(&cfg, 8080, Duration::from_secs(1), metrics.clone());
        let id = p.decision_id();
        assert!(id.ends_with(".replica-b") && id.len() == 36 + 10, "{id}");
        let mut h = HeaderMap::new();
        assert_eq!(p.owner(&id, &h), None, "our own");
        assert_eq!(p.owner("u.replica-a", &h), Some("replica-a"));
        assert_eq!(p.owner("u", &h), None);
        h.insert(FORWARDED_HEADER, HeaderValue::from_static("1"));
        assert_eq!(p.owner("u.replica-a", &h), None, "forwarded once only");
        assert_eq!(p.url("replica-a"), "http://replica-a.ep-peers.ns.svc:8080/v1/feedback");
        let text = metrics.render();
        for r in RESULTS {
            assert!(text.contains(&format!("sapllm_feedback_forwarded_total{{result=\"{r}\"}} 0")), "{text}");
        }
    }
}
