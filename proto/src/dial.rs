//! Dialing the coordinator, shared by `freqsweep-worker` and `freqsweep status`: one place decides
//! plain HTTP/2 or TLS from the URL and turns a failed connection into one line naming the likely
//! cause, separating "nobody answers (yet)" (worth retrying) from "TLS is set up wrong on one
//! side" (retrying cannot help).

use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Why a connection could not be made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DialError {
    /// Nothing answered, or the connection broke: the coordinator may be starting or restarting.
    Unreachable(String),
    /// The URL, CA or TLS handshake is wrong: the same call will fail the same way.
    Misconfigured(String),
}

impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DialError::Unreachable(s) | DialError::Misconfigured(s) => f.write_str(s),
        }
    }
}

/// The endpoint for `url`: `https://` dials TLS, trusting `ca_pem` (PEM, one or more CA
/// certificates) or else the system's roots; `http://` dials plain HTTP/2 and refuses a CA (a CA
/// with a plain URL is a mistake worth naming, not something to ignore).
pub fn endpoint(url: &str, ca_pem: Option<&[u8]>) -> Result<Endpoint, DialError> {
    let bad = |why: String| DialError::Misconfigured(why);
    let endpoint =
        Channel::from_shared(url.to_string()).map_err(|e| bad(format!("invalid coordinator URL {url}: {e}")))?;
    if !url.starts_with("https://") {
        return match ca_pem {
            Some(_) => Err(bad(format!("--tls-ca is given but {url} is not https://: dial https://HOST:PORT"))),
            None => Ok(endpoint),
        };
    }
    let tls = match ca_pem {
        Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
        None => ClientTlsConfig::new().with_native_roots(),
    };
    endpoint.tls_config(tls).map_err(|e| bad(format!("TLS set-up for {url}: {}", chain(&e))))
}

/// Connect to `url` (see [`endpoint`]) within `timeout`. A plain connection succeeds before the
/// server has said anything, so a failure of the first call on it goes through [`explain_status`].
pub async fn connect(url: &str, ca_pem: Option<&[u8]>, timeout: Duration) -> Result<Channel, DialError> {
    let endpoint = endpoint(url, ca_pem)?.connect_timeout(timeout);
    match endpoint.connect().await {
        Ok(channel) => Ok(channel),
        Err(e) => Err(explain(url, &chain(&e)).await),
    }
}

/// Name the cause of a failed call that never reached the service (connection-level codes);
/// `None` for an answer from the service itself (wrong token, bad request, …).
pub async fn explain_status(url: &str, status: &tonic::Status) -> Option<DialError> {
    use tonic::Code;
    if !matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled) {
        return None;
    }
    let mut detail = status.message().to_string();
    if let Some(source) = std::error::Error::source(status) {
        let more = chain(source);
        if !detail.contains(&more) {
            detail = format!("{detail}: {more}");
        }
    }
    Some(explain(url, &detail).await)
}

/// An error and its sources as `a: b: c`, skipping a source that repeats its parent's text.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.last().is_some_and(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// Name the cause of a failed connection whose error reads `detail`.
pub async fn explain(url: &str, detail: &str) -> DialError {
    let lower = detail.to_lowercase();
    if url.starts_with("https://") {
        // rustls reports certificate problems as "invalid peer certificate: UnknownIssuer" etc.
        if lower.contains("certificate") {
            return DialError::Misconfigured(format!(
                "TLS: the coordinator at {url} presented a certificate this client does not trust ({detail}); \
                 pass the CA that signed it with --tls-ca CA.pem"
            ));
        }
        // A plain HTTP/2 server answers a ClientHello with something that is not TLS.
        if lower.contains("corrupt message")
            || lower.contains("invalidcontenttype")
            || lower.contains("tls handshake eof")
        {
            return DialError::Misconfigured(format!(
                "TLS: the coordinator at {url} does not speak TLS ({detail}); dial http:// or start it with --tls-cert/--tls-key"
            ));
        }
    } else if speaks_tls(url).await {
        return DialError::Misconfigured(format!(
            "the coordinator at {url} serves TLS: dial https:// (with --tls-ca CA.pem unless the system trusts its certificate)"
        ));
    }
    DialError::Unreachable(detail.to_string())
}

/// Whether the server at a plain `http://host:port` URL answers like a TLS server: sent the
/// HTTP/2 preface, a TLS server replies with an alert record (content type 21, version 3.x)
/// before hanging up. A precise probe rather than a guess from h2's error text, so a coordinator
/// that is merely restarting is never mistaken for a TLS one.
async fn speaks_tls(url: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(authority) = url.strip_prefix("http://").map(|rest| rest.split('/').next().unwrap_or(rest)) else {
        return false;
    };
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(authority).await.ok()?;
        stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.ok()?;
        let mut head = [0u8; 2];
        stream.read_exact(&mut head).await.ok()?;
        Some(head == [21, 3])
    };
    tokio::time::timeout(Duration::from_secs(2), probe).await.ok().flatten().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_with_a_plain_url_is_refused_in_one_line() {
        let err = endpoint("http://127.0.0.1:1", Some(b"pem")).unwrap_err();
        assert!(
            matches!(&err, DialError::Misconfigured(s) if s.contains("not https://") && !s.contains('\n')),
            "{err}"
        );
        assert!(endpoint("http://127.0.0.1:1", None).is_ok());
        assert!(matches!(endpoint("not a url", None), Err(DialError::Misconfigured(_))));
    }

    #[tokio::test]
    async fn nothing_listening_is_unreachable_not_misconfigured() {
        // Bind and drop to get a port that refuses connections.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("http://127.0.0.1:{port}");
        let err = connect(&url, None, Duration::from_secs(2)).await.unwrap_err();
        assert!(matches!(err, DialError::Unreachable(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_server_that_answers_with_a_tls_alert_is_named() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // What rustls answers to a non-TLS first record: a fatal decode_error alert, then close.
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 64];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(&[21, 3, 3, 0, 2, 2, 50]).await;
            }
        });
        let url = format!("http://{addr}");
        // The connection itself succeeds (the server has not spoken yet); the first call fails.
        let channel = connect(&url, None, Duration::from_secs(2)).await.unwrap();
        let status = crate::v1::coordinator_client::CoordinatorClient::new(channel)
            .status(crate::v1::StatusRequest {})
            .await
            .unwrap_err();
        let err = explain_status(&url, &status).await.expect("a connection-level failure");
        assert!(matches!(&err, DialError::Misconfigured(s) if s.contains("serves TLS: dial https://")), "{err:?}");
        let refused = tonic::Status::unauthenticated("wrong token");
        assert_eq!(explain_status(&url, &refused).await, None, "the service's own answers are not dial errors");
    }
}
