//! The HTTP client a server uses to call another server: a canary it mirrors to
//! ([`super::mirror`]) and the replica that made a decision feedback is for ([`super::peers`]).
//! One setup (hyper-util's pooled client over plain HTTP), one way to bound an exchange (a time
//! limit over the whole of it, a size limit on the answer) and one classification of what went
//! wrong ([`Error`]).

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The pooled client.
pub type Client = hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>;

/// Idle pooled connections are closed after this long.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// A client whose connections are attempted for `connect_timeout` at most, keeping up to
/// `max_idle_per_host` idle connections per host.
pub fn client(connect_timeout: Duration, max_idle_per_host: usize) -> Client {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(max_idle_per_host)
        .build(connector)
}

/// Why an exchange gave no answer.
#[derive(Debug)]
pub enum Error {
    /// No connection: the name does not resolve, nothing listens, or connecting failed.
    Unreachable(String),
    /// Connected, but the exchange broke before the answer was read.
    Broken(String),
    /// The time limit passed.
    Timeout,
    /// The answer's body is larger than the limit (bytes).
    TooLarge(usize),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Unreachable(e) => write!(f, "connect: {e}"),
            Error::Broken(e) => write!(f, "request: {e}"),
            Error::Timeout => write!(f, "timed out"),
            Error::TooLarge(n) => write!(f, "answer larger than {n} bytes"),
        }
    }
}

/// A complete answer.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Sends `req` and waits for the answer's head (no time limit of its own: see [`send`]).
async fn request(client: &Client, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, Error> {
    client.request(req).await.map_err(|e| {
        if e.is_connect() { Error::Unreachable(e.to_string()) } else { Error::Broken(e.to_string()) }
    })
}

/// Reads an answer's body, `max_bytes` at most.
async fn read_body(resp: Response<Incoming>, max_bytes: usize) -> Result<Bytes, Error> {
    match Limited::new(resp.into_body(), max_bytes).collect().await {
        Ok(body) => Ok(body.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(Error::TooLarge(max_bytes)),
        Err(e) => Err(Error::Broken(format!("reading the answer: {e}"))),
    }
}

/// One exchange, all of it within `timeout`: the status, headers and body (`max_bytes` at most)
/// of the answer, whatever its status.
pub async fn send(
    client: &Client,
    req: Request<Full<Bytes>>,
    timeout: Duration,
    max_bytes: usize,
) -> Result<Reply, Error> {
    let exchange = async {
        let resp = request(client, req).await?;
        let (status, headers) = (resp.status(), resp.headers().clone());
        let body = read_body(resp, max_bytes).await?;
        Ok(Reply { status, headers, body })
    };
    tokio::time::timeout(timeout, exchange).await.unwrap_or(Err(Error::Timeout))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn post(addr: std::net::SocketAddr) -> Request<Full<Bytes>> {
        Request::post(format!("http://{addr}/x")).body(Full::new(Bytes::from_static(b"{}"))).unwrap()
    }

    /// A one-connection server answering `answer` (raw HTTP), or hanging/closing when `None`.
    async fn server(answer: Option<&'static str>, hang: bool) -> std::net::SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            if let Some(a) = answer {
                let _ = s.write_all(a.as_bytes()).await;
            }
            if hang {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn exchanges_are_classified() {
        let c = client(Duration::from_secs(2), 1);
        let t = Duration::from_secs(2);
        let ok =
            server(Some("HTTP/1.1 418 I'm a teapot\r\ncontent-length: 2\r\nx-a: b\r\n\r\nhi"), false).await;
        let r = send(&c, post(ok), t, 100).await.unwrap();
        assert_eq!(
            (r.status.as_u16(), &r.body[..], r.headers["x-a"].to_str().unwrap()),
            (418, &b"hi"[..], "b")
        );
        let big = server(Some("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n0123456789"), false).await;
        assert!(matches!(send(&c, post(big), t, 5).await, Err(Error::TooLarge(5))));
        let hung = server(None, true).await;
        let e = send(&c, post(hung), Duration::from_millis(200), 100).await.unwrap_err();
        assert!(matches!(e, Error::Timeout), "{e:?}");
        let closed = server(None, false).await;
        let e = send(&c, post(closed), t, 100).await.unwrap_err();
        assert!(matches!(e, Error::Broken(_)), "{e:?}");
        // Nothing listens on a port just freed.
        let free = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let e = send(&c, post(free), t, 100).await.unwrap_err();
        assert!(matches!(e, Error::Unreachable(_)), "{e:?}");
        let dns = Request::post("http://no-such-host.invalid/x").body(Full::new(Bytes::new())).unwrap();
        let e = send(&c, dns, t, 100).await.unwrap_err();
        assert!(matches!(e, Error::Unreachable(_)), "{e:?}");
    }
}
