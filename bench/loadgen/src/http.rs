//! Minimal HTTP/1.1 client pieces: URL parsing, request building, response
//! head parsing and an incremental chunked transfer-encoding decoder.

use std::net::{SocketAddr, ToSocketAddrs};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// `http://host:port/base/path` (or https://) split into its parts.
#[derive(Clone, Debug)]
pub struct HttpUrl {
    pub addr: SocketAddr,
    /// https: the connection is TLS.
    pub tls: bool,
    /// Value for the Host header.
    pub host: String,
    /// Path prefix without trailing slash ("" for the root).
    pub base_path: String,
}

impl HttpUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(r), _) => (false, r),
            (_, Some(r)) => (true, r),
            _ => {
                return Err(format!(
                    "{url}: only http:// and https:// URLs are supported"
                ))
            }
        };
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if hostport.is_empty() {
            return Err(format!("{url}: no host"));
        }
        let with_port = if hostport.contains(':') {
            hostport.to_string()
        } else {
            format!("{hostport}:{}", if tls { 443 } else { 80 })
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| format!("{url}: {e}"))?
            .find(|a| a.is_ipv4())
            .ok_or_else(|| format!("{url}: no IPv4 address"))?;
        if !addr.ip().is_loopback() {
            return Err(format!(
                "{url}: only loopback (127.0.0.0/8) targets are allowed"
            ));
        }
        Ok(HttpUrl {
            addr,
            tls,
            host: hostport.to_string(),
            base_path: path.trim_end_matches('/').to_string(),
        })
    }
}

impl HttpUrl {
    /// The host without its port (the TLS server name).
    pub fn host_name(&self) -> &str {
        match self.host.rsplit_once(':') {
            Some((h, _)) => h,
            None => &self.host,
        }
    }
}

/// Percent-encode everything except RFC 3986 unreserved characters.
pub fn pct_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Escape a string for inclusion in a JSON string literal.
pub fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// How the response body is delimited.
#[derive(Debug)]
pub enum BodyKind {
    Chunked(ChunkedDecoder),
    Length(u64),
    /// Until the server closes the connection.
    Eof,
}

#[derive(Debug)]
pub struct ResponseHead {
    pub status: u16,
    pub body: BodyKind,
    /// The server asked to close the connection after this response.
    pub close: bool,
    /// Bytes after the head that were already read (start of the body).
    pub leftover: Vec<u8>,
}

#[derive(Debug)]
pub enum HeadError {
    Io(std::io::Error),
    /// The connection closed before a full response head arrived.
    Closed,
    Malformed(String),
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeadError::Io(e) => write!(f, "io: {e}"),
            HeadError::Closed => write!(f, "connection closed before response head"),
            HeadError::Malformed(m) => write!(f, "malformed response: {m}"),
        }
    }
}

const MAX_HEAD: usize = 32 * 1024;

/// Parse a complete response head in `buf`; `Ok(None)` when more bytes are needed.
pub fn parse_head(
    buf: &[u8],
    request_was_head: bool,
) -> Result<Option<(ResponseHead, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD {
                return Err(HeadError::Malformed("response head too large".into()));
            }
            return Ok(None);
        }
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    let status = resp.code.unwrap_or(0);
    let mut chunked = false;
    let mut length = None;
    let mut close = resp.version == Some(0);
    for h in resp.headers.iter() {
        let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if v.split(',').any(|t| t.trim() == "chunked") {
                chunked = true;
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            length = v.trim().parse::<u64>().ok();
        } else if h.name.eq_ignore_ascii_case("connection") {
            if v.split(',').any(|t| t.trim() == "close") {
                close = true;
            } else if v.split(',').any(|t| t.trim() == "keep-alive") {
                close = false;
            }
        }
    }
    let no_body =
        request_was_head || status == 204 || status == 304 || (100..200).contains(&status);
    let body = if no_body {
        BodyKind::Length(0)
    } else if chunked {
        BodyKind::Chunked(ChunkedDecoder::new())
    } else if let Some(l) = length {
        BodyKind::Length(l)
    } else {
        close = true;
        BodyKind::Eof
    };
    Ok(Some((
        ResponseHead {
            status,
            body,
            close,
            leftover: buf[n..].to_vec(),
        },
        n,
    )))
}

/// Read from `stream` until a full response head has arrived.
pub async fn read_head(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    buf: &mut Vec<u8>,
) -> Result<ResponseHead, HeadError> {
    buf.clear();
    let mut tmp = [0u8; 4096];
    loop {
        let n = stream.read(&mut tmp).await.map_err(HeadError::Io)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some((head, _)) = parse_head(buf, false)? {
            return Ok(head);
        }
    }
}

/// Read a full (small) response: head and body. Returns (status, body, close).
pub async fn read_response(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    buf: &mut Vec<u8>,
) -> Result<(u16, Vec<u8>, bool), HeadError> {
    let head = read_head(stream, buf).await?;
    let mut body = Vec::new();
    let mut tmp = [0u8; 4096];
    match head.body {
        BodyKind::Length(len) => {
            body.extend_from_slice(&head.leftover[..head.leftover.len().min(len as usize)]);
            while (body.len() as u64) < len {
                let n = stream.read(&mut tmp).await.map_err(HeadError::Io)?;
                if n == 0 {
                    return Err(HeadError::Closed);
                }
                let want = (len as usize - body.len()).min(n);
                body.extend_from_slice(&tmp[..want]);
            }
        }
        BodyKind::Chunked(mut dec) => {
            let mut input = head.leftover;
            loop {
                dec.feed(&input, &mut |c| body.extend_from_slice(c))
                    .map_err(|e| HeadError::Malformed(e.to_string()))?;
                if dec.is_done() {
                    break;
                }
                let n = stream.read(&mut tmp).await.map_err(HeadError::Io)?;
                if n == 0 {
                    return Err(HeadError::Closed);
                }
                input = tmp[..n].to_vec();
            }
        }
        BodyKind::Eof => {
            body.extend_from_slice(&head.leftover);
            loop {
                let n = stream.read(&mut tmp).await.map_err(HeadError::Io)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&tmp[..n]);
            }
        }
    }
    Ok((head.status, body, head.close))
}

/// Send one request on a keep-alive connection and read its response.
pub async fn roundtrip(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    req: &[u8],
    buf: &mut Vec<u8>,
) -> Result<(u16, Vec<u8>, bool), HeadError> {
    stream.write_all(req).await.map_err(HeadError::Io)?;
    read_response(stream, buf).await
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ChunkState {
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// After the last (zero) chunk: trailer lines until an empty line.
    Trailer {
        line_start: bool,
    },
    Done,
}

/// Incremental decoder for `Transfer-Encoding: chunked`. Tolerates bare LF.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
    size: u64,
    digits: u32,
}

#[derive(Debug, PartialEq)]
pub struct ChunkError(pub &'static str);

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "chunked encoding: {}", self.0)
    }
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder {
            state: ChunkState::Size,
            size: 0,
            digits: 0,
        }
    }

    /// The terminating zero-size chunk and trailer have been read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    fn end_size_line(&mut self) -> Result<(), ChunkError> {
        if self.digits == 0 {
            return Err(ChunkError("empty chunk size"));
        }
        self.state = if self.size == 0 {
            ChunkState::Trailer { line_start: true }
        } else {
            ChunkState::Data
        };
        Ok(())
    }

    /// Decode `input`, passing payload slices to `out`.
    pub fn feed<F: FnMut(&[u8]) + ?Sized>(
        &mut self,
        mut input: &[u8],
        out: &mut F,
    ) -> Result<(), ChunkError> {
        while !input.is_empty() {
            match self.state {
                ChunkState::Data => {
                    let take = (self.size as usize).min(input.len());
                    out(&input[..take]);
                    input = &input[take..];
                    self.size -= take as u64;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::Done => return Ok(()),
                _ => {}
            }
            let b = input[0];
            input = &input[1..];
            match self.state {
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).unwrap() as u64;
                        if self.digits >= 15 {
                            return Err(ChunkError("chunk size too large"));
                        }
                        self.size = self.size * 16 + d;
                        self.digits += 1;
                    }
                    b';' | b' ' | b'\t' => self.state = ChunkState::Ext,
                    b'\r' => self.state = ChunkState::SizeLf,
                    b'\n' => self.end_size_line()?,
                    _ => return Err(ChunkError("bad chunk size")),
                },
                ChunkState::Ext => match b {
                    b'\r' => self.state = ChunkState::SizeLf,
                    b'\n' => self.end_size_line()?,
                    _ => {}
                },
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError("expected LF after chunk size"));
                    }
                    self.end_size_line()?;
                }
                ChunkState::DataCr => match b {
                    b'\r' => self.state = ChunkState::DataLf,
                    b'\n' => self.next_chunk(),
                    _ => return Err(ChunkError("expected CRLF after chunk data")),
                },
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError("expected LF after chunk data"));
                    }
                    self.next_chunk();
                }
                ChunkState::Trailer { line_start } => match b {
                    b'\n' if line_start => self.state = ChunkState::Done,
                    b'\n' => self.state = ChunkState::Trailer { line_start: true },
                    b'\r' => {}
                    _ => self.state = ChunkState::Trailer { line_start: false },
                },
                ChunkState::Data | ChunkState::Done => unreachable!(),
            }
        }
        Ok(())
    }

    fn next_chunk(&mut self) {
        self.state = ChunkState::Size;
        self.size = 0;
        self.digits = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(chunks: &[&[u8]]) -> (Vec<u8>, bool) {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        for c in chunks {
            d.feed(c, &mut |s| out.extend_from_slice(s)).unwrap();
        }
        (out, d.is_done())
    }

    #[test]
    fn urls_name_their_scheme_port_and_host() {
        let u = HttpUrl::parse("https://127.0.0.1/base/").unwrap();
        assert!(u.tls);
        assert_eq!(u.addr.port(), 443);
        assert_eq!(
            (u.host_name(), u.base_path.as_str()),
            ("127.0.0.1", "/base")
        );
        let u = HttpUrl::parse("http://localhost:8080").unwrap();
        assert!(!u.tls);
        assert_eq!((u.addr.port(), u.host_name()), (8080, "localhost"));
        assert!(HttpUrl::parse("ftp://127.0.0.1").is_err());
    }

    #[test]
    fn chunked_simple() {
        let (out, done) = decode_all(&[b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"]);
        assert_eq!(out, b"hello world");
        assert!(done);
    }

    #[test]
    fn chunked_every_split() {
        let src: &[u8] = b"1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\nA\r\n0123456789\r\n0\r\nX-Trailer: y\r\n\r\n";
        for i in 0..=src.len() {
            for j in i..=src.len() {
                let (out, done) = decode_all(&[&src[..i], &src[i..j], &src[j..]]);
                assert_eq!(
                    out, b"abcdefghijklmnopqrstuvwxyz0123456789",
                    "split {i},{j}"
                );
                assert!(done);
            }
        }
    }

    #[test]
    fn chunked_bare_lf_and_open_stream() {
        let (out, done) = decode_all(&[b"3\nabc\n", b"2\r\nde\r\n"]);
        assert_eq!(out, b"abcde");
        assert!(!done);
    }

    #[test]
    fn chunked_errors() {
        let mut d = ChunkedDecoder::new();
        assert!(d.feed(b"zz\r\n", &mut |_| {}).is_err());
        let mut d = ChunkedDecoder::new();
        assert!(d.feed(b"2\r\nabX", &mut |_| {}).is_err());
    }

    #[test]
    fn chunked_into_sse() {
        // SSE split arbitrarily across chunk boundaries.
        let body = b"7\r\ndata: 1\r\n3\r\n\r\n\r\r\n4\r\n\ndat\r\n6\r\na: 2\n\n\r\n";
        let mut d = ChunkedDecoder::new();
        let mut p = crate::sse::SseParser::new();
        let mut got = Vec::new();
        for piece in body.chunks(3) {
            d.feed(piece, &mut |c| {
                got.extend(p.feed(c).into_iter().map(|e| e.data));
            })
            .unwrap();
        }
        assert_eq!(got, ["1", "2"]);
    }

    #[test]
    fn head_parsing() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n";
        let (h, n) = parse_head(raw, false).unwrap().unwrap();
        assert_eq!(h.status, 200);
        assert!(matches!(h.body, BodyKind::Chunked(_)));
        assert_eq!(&raw[n..], b"5\r\n");
        assert_eq!(h.leftover, b"5\r\n");
        assert!(!h.close);
        let raw = b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc";
        let (h, _) = parse_head(raw, false).unwrap().unwrap();
        assert_eq!(h.status, 201);
        assert!(matches!(h.body, BodyKind::Length(3)));
        assert!(h.close);
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n";
        let (h, _) = parse_head(raw, false).unwrap().unwrap();
        assert!(matches!(h.body, BodyKind::Eof));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nFoo:", false)
            .unwrap()
            .is_none());
    }

    #[test]
    fn url_and_encoding() {
        let u = HttpUrl::parse("http://127.0.0.1:8081/base/").unwrap();
        assert_eq!(u.addr.port(), 8081);
        assert_eq!(u.base_path, "/base");
        assert_eq!(u.host, "127.0.0.1:8081");
        assert!(HttpUrl::parse("http://10.0.0.1:80/").is_err());
        assert_eq!(pct_encode("https://a.b/c d"), "https%3A%2F%2Fa.b%2Fc%20d");
        assert_eq!(json_escape("a\"b\n"), "a\\\"b\\n");
    }
}
