//! A minimal Docker Engine API client over the host's unix socket (HTTP/1.0, one request per
//! connection). Enough for readiness pings and the swarm calls whose bodies carry join
//! tokens, which must never be put on a command line.

use crate::error::{LabError, Result};
use serde::de::DeserializeOwned;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Timeout for ordinary API calls.
pub const API_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct EngineApi {
    sock: PathBuf,
}

/// A raw API answer.
#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

impl EngineApi {
    pub fn new(sock: impl Into<PathBuf>) -> Self {
        EngineApi { sock: sock.into() }
    }

    pub fn sock(&self) -> &Path {
        &self.sock
    }

    fn err(&self, method: &str, path: &str, message: impl Into<String>) -> LabError {
        LabError::Engine {
            method: method.into(),
            path: path.into(),
            sock: self.sock.display().to_string(),
            message: message.into(),
        }
    }

    /// One request. The body is never included in any error.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<ApiResponse> {
        let mut s = UnixStream::connect(&self.sock)
            .map_err(|e| self.err(method, path, format!("connect: {e}")))?;
        s.set_read_timeout(Some(timeout))
            .and_then(|_| s.set_write_timeout(Some(timeout)))
            .map_err(|e| self.err(method, path, format!("socket timeout: {e}")))?;
        let body = body.unwrap_or(b"");
        let head = format!(
            "{method} {path} HTTP/1.0\r\nHost: docker\r\nUser-Agent: swarmstrap-lab\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes())
            .and_then(|_| s.write_all(body))
            .map_err(|e| self.err(method, path, format!("send: {e}")))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .map_err(|e| self.err(method, path, format!("receive: {e}")))?;
        parse_response(&raw).map_err(|m| self.err(method, path, m))
    }

    /// `GET /_ping` answered `200 OK`.
    pub fn ping(&self) -> Result<()> {
        let r = self.request("GET", "/_ping", None, Duration::from_secs(2))?;
        if r.status == 200 && r.body.starts_with(b"OK") {
            Ok(())
        } else {
            Err(self.err("GET", "/_ping", format!("status {}", r.status)))
        }
    }

    /// GET and decode JSON; a non-2xx status is an error carrying the engine's message.
    pub fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let r = self.request("GET", path, None, API_TIMEOUT)?;
        let body = self.check("GET", path, r)?;
        serde_json::from_slice(&body).map_err(|e| LabError::Parse {
            what: format!("engine answer to GET {path}"),
            message: e.to_string(),
        })
    }

    /// POST a JSON body; returns the answer body of a 2xx status.
    pub fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        let bytes = serde_json::to_vec(body).expect("a JSON value serializes");
        let r = self.request("POST", path, Some(&bytes), timeout)?;
        self.check("POST", path, r)
    }

    fn check(&self, method: &str, path: &str, r: ApiResponse) -> Result<Vec<u8>> {
        if (200..300).contains(&r.status) {
            return Ok(r.body);
        }
        let msg = serde_json::from_slice::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|v| v.get("message")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&r.body).trim().to_string());
        Err(self.err(method, path, format!("status {}: {msg}", r.status)))
    }
}

fn parse_response(raw: &[u8]) -> std::result::Result<ApiResponse, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("incomplete HTTP answer ({} bytes)", raw.len()))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = &raw[split + 4..];
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok(ApiResponse { status, body })
}

fn dechunk(mut b: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunked body")?;
        let size_s = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_s.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size_s:?}"))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&b[..size]);
        b = b.get(size + 2..).unwrap_or(&[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked() {
        let r = parse_response(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nOK").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"OK"[..]));
        let r = parse_response(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnope\r\n3\r\n!!!\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"nope!!!"[..]));
        assert!(parse_response(b"HTTP/1.0 200 OK\r\n").is_err());
    }

    #[test]
    fn request_to_missing_socket_names_the_socket() {
        let api = EngineApi::new("/nonexistent/docker.sock");
        let e = api.ping().unwrap_err().to_string();
        assert!(
            e.contains("/nonexistent/docker.sock") && e.contains("/_ping"),
            "{e}"
        );
    }
}
