//! A minimal blocking HTTP/1.1 client for `padv serve`: enough for the
//! integration tests, the load generator and scripts, without pulling an
//! HTTP client stack into the crate. One keep-alive connection per
//! [`Client`], reopened when the server has closed it; bodies framed by
//! `Content-Length` or chunked; no TLS, no redirects.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

/// One answer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Lower-cased names, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> io::Result<Value> {
        serde_json::from_slice(&self.body).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "status {}: body is not JSON ({e}): {}",
                    self.status,
                    self.text()
                ),
            )
        })
    }
}

pub struct Client {
    addr: SocketAddr,
    timeout: Duration,
    /// Sent as `Authorization: Bearer KEY` (a server started with `--api-key`).
    api_key: Option<String>,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client {
            addr,
            timeout: Duration::from_secs(120),
            api_key: None,
            conn: None,
        }
    }

    /// Read and write timeout of the connection (default 120 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// Send `Authorization: Bearer key` with every request.
    pub fn with_api_key(mut self, key: impl Into<String>) -> Client {
        self.api_key = Some(key.into());
        self
    }

    pub fn get(&mut self, path: &str) -> io::Result<Response> {
        self.request("GET", path, None)
    }

    pub fn delete(&mut self, path: &str) -> io::Result<Response> {
        self.request("DELETE", path, None)
    }

    pub fn post_json(&mut self, path: &str, body: &Value) -> io::Result<Response> {
        self.request("POST", path, Some(body.to_string().as_bytes()))
    }

    /// Send raw bytes (malformed JSON, oversized bodies…).
    pub fn post_bytes(&mut self, path: &str, body: &[u8]) -> io::Result<Response> {
        self.request("POST", path, Some(body))
    }

    /// One request on the kept connection; a connection the server closed
    /// while idle is reopened once (nothing of the request was read then).
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> io::Result<Response> {
        let reused = self.conn.is_some();
        match self.try_request(method, path, body) {
            Err(e) if reused && is_stale(&e) => {
                self.conn = None;
                self.try_request(method, path, body)
            }
            r => r,
        }
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> io::Result<Response> {
        if self.conn.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, self.timeout)?;
            s.set_read_timeout(Some(self.timeout))?;
            s.set_write_timeout(Some(self.timeout))?;
            s.set_nodelay(true)?;
            self.conn = Some(BufReader::new(s));
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(bad("not connected".into()));
        };
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\naccept: */*\r\n",
            self.addr
        );
        if let Some(key) = &self.api_key {
            head.push_str(&format!("authorization: Bearer {key}\r\n"));
        }
        if let Some(b) = body {
            head.push_str(&format!(
                "content-type: application/json\r\ncontent-length: {}\r\n",
                b.len()
            ));
        }
        head.push_str("\r\n");
        let stream = conn.get_mut();
        let mut sent = stream.write_all(head.as_bytes());
        if let (Ok(()), Some(b)) = (&sent, body) {
            sent = stream.write_all(b);
        }
        // The server may answer (413) and close before reading all of a
        // large body: read its answer even when the write failed.
        let resp = read_response(conn);
        let resp = match (resp, sent) {
            (Ok(r), _) => r,
            (Err(_), Err(w)) => {
                self.conn = None;
                return Err(w);
            }
            (Err(e), Ok(())) => {
                self.conn = None;
                return Err(e);
            }
        };
        if resp
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"))
        {
            self.conn = None;
        }
        Ok(resp)
    }
}

fn is_stale(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

fn read_response(r: &mut impl BufRead) -> io::Result<Response> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the server closed the connection",
        ));
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad(format!("bad status line `{}`", line.trim_end())))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| bad(format!("bad header `{l}`")))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad(format!("bad chunk size `{}`", line.trim())))?;
            if size == 0 {
                // Trailers, then the blank line.
                loop {
                    line.clear();
                    if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            line.clear();
            r.read_line(&mut line)?;
        }
    } else if let Some(n) = get("content-length") {
        let n: usize = n
            .parse()
            .map_err(|_| bad(format!("bad content-length `{n}`")))?;
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else if status >= 200 && status != 204 && status != 304 {
        r.read_to_end(&mut body)?;
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_and_sized_bodies_are_read_to_their_end() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n\
HTTP/1.1 429 Too Many Requests\r\ncontent-length: 2\r\nretry-after: 1\r\n\r\n{}";
        let mut r = BufReader::new(&raw[..]);
        let a = read_response(&mut r).unwrap();
        assert_eq!((a.status, a.body.as_slice()), (200, &b"abcde"[..]));
        assert_eq!(a.header("X-A"), Some("1"));
        let b = read_response(&mut r).unwrap();
        assert_eq!(b.status, 429);
        assert_eq!(b.header("Retry-After"), Some("1"));
        assert_eq!(b.json().unwrap(), serde_json::json!({}));
        assert!(read_response(&mut r).is_err());
    }
}
