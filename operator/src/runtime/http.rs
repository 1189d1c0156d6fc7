//! One plain-HTTP GET to a relay's internal listener, bounded in time and size. HTTP/1.0
//! with `Connection: close` keeps it to a single exchange without chunked bodies, so no
//! second HTTP stack is needed next to kube's client (the listener is cluster-internal and
//! never TLS).

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a GET gave no body.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("the answer is larger than {0} bytes")]
    TooLarge(u64),
    #[error("not an HTTP answer")]
    Malformed,
}

/// GETs `path` from `address`; the body of a 200 answer.
pub async fn get(
    address: SocketAddr,
    path: &str,
    timeout: Duration,
    limit: u64,
) -> Result<String, FetchError> {
    tokio::time::timeout(timeout, exchange(address, path, limit))
        .await
        .map_err(|_| FetchError::Timeout(timeout))?
}

async fn exchange(address: SocketAddr, path: &str, limit: u64) -> Result<String, FetchError> {
    let mut stream = TcpStream::connect(address).await?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {address}\r\nUser-Agent: relay-operator\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    // One byte over the limit tells "too large" from "exactly the limit".
    stream.take(limit + 1).read_to_end(&mut answer).await?;
    if answer.len() as u64 > limit {
        return Err(FetchError::TooLarge(limit));
    }
    body_of(&answer)
}

/// The body of a complete HTTP answer, if its status is 200.
fn body_of(answer: &[u8]) -> Result<String, FetchError> {
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").ok_or(FetchError::Malformed)?;
    let head = std::str::from_utf8(&answer[..split]).map_err(|_| FetchError::Malformed)?;
    let status_line = head.lines().next().ok_or(FetchError::Malformed)?;
    let mut parts = status_line.split_whitespace();
    if !parts.next().is_some_and(|version| version.starts_with("HTTP/1.")) {
        return Err(FetchError::Malformed);
    }
    let code: u16 = parts.next().and_then(|c| c.parse().ok()).ok_or(FetchError::Malformed)?;
    if code != 200 {
        return Err(FetchError::Status(code));
    }
    let chunked = head.lines().any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding")
                && value.to_ascii_lowercase().contains("chunked")
        })
    });
    if chunked {
        // An HTTP/1.0 request must not get one; refuse rather than misread it.
        return Err(FetchError::Malformed);
    }
    Ok(String::from_utf8_lossy(&answer[split + 4..]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn bodies_statuses_and_garbage() {
        assert_eq!(body_of(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi").ok().as_deref(), Some("hi"));
        assert!(matches!(
            body_of(b"HTTP/1.1 503 Service Unavailable\r\n\r\nno"),
            Err(FetchError::Status(503))
        ));
        assert!(matches!(
            body_of(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi"),
            Err(FetchError::Malformed)
        ));
        assert!(matches!(body_of(b"SSH-2.0-OpenSSH\r\n\r\n"), Err(FetchError::Malformed)));
        assert!(matches!(body_of(b"HTTP/1.1 200 OK\r\n"), Err(FetchError::Malformed)));
    }

    /// A one-shot server that records the request and sends `answer`.
    async fn serve_once(answer: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut request = vec![0u8; 1024];
            let read = socket.read(&mut request).await.expect("read");
            socket.write_all(answer).await.expect("write");
            String::from_utf8_lossy(&request[..read]).into_owned()
        });
        (address, task)
    }

    #[tokio::test]
    async fn one_exchange_against_a_server() {
        let (address, request) =
            serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nrelay_up 1\n\n\n").await;
        let body = get(address, "/metrics", Duration::from_secs(5), 1024).await.expect("body");
        assert_eq!(body, "relay_up 1\n\n\n");
        let request = request.await.expect("server");
        assert!(request.starts_with("GET /metrics HTTP/1.0\r\n"), "{request}");
    }

    #[tokio::test]
    async fn size_limit_and_refused_connections() {
        let (address, _request) = serve_once(b"HTTP/1.1 200 OK\r\n\r\n0123456789").await;
        assert!(matches!(
            get(address, "/metrics", Duration::from_secs(5), 16).await,
            Err(FetchError::TooLarge(16))
        ));
        let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("address");
        assert!(matches!(get(closed, "/metrics", Duration::from_secs(5), 16).await, Err(FetchError::Io(_))));
    }
}
