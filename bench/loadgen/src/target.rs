//! The three servers under test: how to subscribe and how to publish.

use crate::http::{json_escape, pct_encode, HttpUrl};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Herald,
    Nchan,
    Pushpin,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Herald => "herald",
            Kind::Nchan => "nchan",
            Kind::Pushpin => "pushpin",
        }
    }
}

pub struct Target {
    pub kind: Kind,
    pub sub: HttpUrl,
    pub publ: HttpUrl,
    pub token: Option<String>,
    pub sub_token: Option<String>,
    pub run_id: String,
}

impl Target {
    pub fn topic(&self, n: u64) -> String {
        format!("bench-{}-{}", self.run_id, n)
    }

    /// The raw GET request that opens an SSE stream on topic `n`.
    pub fn subscribe_request(&self, n: u64) -> Vec<u8> {
        self.subscribe_request_many(&[n])
    }

    /// One SSE stream on several topics (Herald: one `topic=` parameter each;
    /// nchan and Pushpin: the first topic only).
    pub fn subscribe_request_many(&self, topics: &[u64]) -> Vec<u8> {
        let (path, token) = self.subscribe_path(topics);
        let auth = match token {
            Some(t) => format!("Authorization: Bearer {t}\r\n"),
            None => String::new(),
        };
        format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n{auth}User-Agent: herald-loadgen\r\n\r\n",
            self.sub.host
        )
        .into_bytes()
    }

    /// The path (and query) of a subscribe on `topics`, and the subscriber
    /// token to send, whatever the HTTP version.
    pub fn subscribe_path(&self, topics: &[u64]) -> (String, Option<&str>) {
        let topic = self.topic(topics.first().copied().unwrap_or(0));
        let base = &self.sub.base_path;
        let path = match self.kind {
            Kind::Herald => {
                let query: Vec<String> = topics
                    .iter()
                    .map(|&n| format!("topic={}", pct_encode(&self.topic(n))))
                    .collect();
                format!("{base}/.well-known/mercure?{}", query.join("&"))
            }
            Kind::Nchan => format!("{base}/sub/{}", pct_encode(&topic)),
            Kind::Pushpin => format!("{base}/stream/{}", pct_encode(&topic)),
        };
        (path, self.sub_token.as_deref())
    }

    /// The raw POST request that publishes `data` to topic `n`.
    pub fn publish_request(&self, n: u64, data: &str) -> Vec<u8> {
        let topic = self.topic(n);
        let base = &self.publ.base_path;
        let (path, ctype, body, auth) = match self.kind {
            Kind::Herald => (
                format!("{base}/.well-known/mercure"),
                "application/x-www-form-urlencoded",
                format!("topic={}&data={}", pct_encode(&topic), pct_encode(data)),
                self.token
                    .as_ref()
                    .map(|t| format!("Authorization: Bearer {t}\r\n")),
            ),
            Kind::Nchan => (
                format!("{base}/pub/{}", pct_encode(&topic)),
                "text/plain",
                data.to_string(),
                None,
            ),
            Kind::Pushpin => {
                let content = format!("event: message\ndata: {data}\n\n");
                (
                    format!("{base}/publish/"),
                    "application/json",
                    format!(
                        "{{\"items\":[{{\"channel\":\"{}\",\"formats\":{{\"http-stream\":{{\"content\":\"{}\"}}}}}}]}}",
                        json_escape(&topic),
                        json_escape(&content)
                    ),
                    None,
                )
            }
        };
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{}User-Agent: herald-loadgen\r\n\r\n",
            self.publ.host,
            body.len(),
            auth.unwrap_or_default()
        )
        .into_bytes();
        req.extend_from_slice(body.as_bytes());
        req
    }

    /// NDJSON body of a Herald batch publish: one `{"topic","data"}` object
    /// per `(topic number, data)` record, in order.
    pub fn batch_body(&self, records: &[(u64, String)]) -> String {
        let mut body = String::with_capacity(records.len() * 96);
        for (n, data) in records {
            body.push_str("{\"topic\":\"");
            body.push_str(&json_escape(&self.topic(*n)));
            body.push_str("\",\"data\":\"");
            body.push_str(&json_escape(data));
            body.push_str("\"}\n");
        }
        body
    }

    /// The raw POST request that publishes `records` in one Herald batch
    /// (`POST /.well-known/mercure/batch`, NDJSON). Herald only.
    pub fn batch_request(&self, records: &[(u64, String)]) -> Vec<u8> {
        let body = self.batch_body(records);
        let auth = self
            .token
            .as_ref()
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let mut req = format!(
            "POST {}/.well-known/mercure/batch HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n{auth}User-Agent: herald-loadgen\r\n\r\n",
            self.publ.base_path,
            self.publ.host,
            body.len(),
        )
        .into_bytes();
        req.extend_from_slice(body.as_bytes());
        req
    }

    /// Updates a publish answer accepted: a single publish is all or nothing;
    /// a batch's 200 answer lists one id per accepted record.
    pub fn accepted_updates(&self, batched: bool, status: u16, body: &[u8]) -> Option<u64> {
        if !self.publish_ok(status) {
            return None;
        }
        if !batched {
            return Some(1);
        }
        let ids = body
            .split(|&b| b == b'\n')
            .filter(|l| !l.trim_ascii().is_empty())
            .count();
        Some(ids as u64)
    }

    /// Whether a publish response status means "accepted".
    pub fn publish_ok(&self, status: u16) -> bool {
        match self.kind {
            Kind::Herald => status == 200,
            _ => (200..300).contains(&status),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(kind: Kind) -> Target {
        Target {
            kind,
            sub: HttpUrl::parse("http://127.0.0.1:7999").unwrap(),
            publ: HttpUrl::parse("http://127.0.0.1:5561").unwrap(),
            token: Some("JWT".into()),
            sub_token: None,
            run_id: "r1".into(),
        }
    }

    #[test]
    fn requests() {
        let s = String::from_utf8(t(Kind::Herald).subscribe_request(3)).unwrap();
        assert!(s.starts_with("GET /.well-known/mercure?topic=bench-r1-3 HTTP/1.1\r\n"));
        let p = String::from_utf8(t(Kind::Herald).publish_request(3, "1 2 3")).unwrap();
        assert!(p.contains("Authorization: Bearer JWT\r\n"));
        assert!(p.ends_with("\r\n\r\ntopic=bench-r1-3&data=1%202%203"));
        let p = String::from_utf8(t(Kind::Pushpin).publish_request(0, "9 0 5")).unwrap();
        assert!(p.starts_with("POST /publish/ HTTP/1.1\r\n"));
        assert!(p.ends_with(
            "{\"items\":[{\"channel\":\"bench-r1-0\",\"formats\":{\"http-stream\":{\"content\":\"event: message\\ndata: 9 0 5\\n\\n\"}}}]}"
        ));
        let s = String::from_utf8(t(Kind::Nchan).subscribe_request(1)).unwrap();
        assert!(s.starts_with("GET /sub/bench-r1-1 HTTP/1.1\r\n"));
        let p = String::from_utf8(t(Kind::Nchan).publish_request(1, "x")).unwrap();
        assert!(p.starts_with("POST /pub/bench-r1-1 HTTP/1.1\r\n"));
        assert!(p.ends_with("\r\n\r\nx"));
    }

    #[test]
    fn batch_body_is_ndjson_with_escaped_data() {
        let tricky = "q\"b\\s\nnl\rcr\ttab\u{1}\u{1f}é😀 </script>";
        let recs = vec![
            (0, "1 0 123".to_string()),
            (7, tricky.to_string()),
            (2, String::new()),
        ];
        let body = t(Kind::Herald).batch_body(&recs);
        assert!(body.ends_with("}\n"));
        let lines: Vec<&str> = body.lines().collect();
        assert_eq!(lines.len(), 3, "one line per record: {body:?}");
        assert_eq!(lines[0], r#"{"topic":"bench-r1-0","data":"1 0 123"}"#);
        assert_eq!(
            lines[1],
            r#"{"topic":"bench-r1-7","data":"q\"b\\s\nnl\rcr\ttab\u0001\u001fé😀 </script>"}"#
        );
        for (line, (n, data)) in lines.iter().zip(&recs) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["topic"], format!("bench-r1-{n}"));
            assert_eq!(v["data"].as_str(), Some(data.as_str()));
        }
        assert_eq!(t(Kind::Herald).batch_body(&[]), "");
    }

    #[test]
    fn batch_request_and_answer() {
        let recs = vec![(3, "a".to_string()), (4, "b".to_string())];
        let target = t(Kind::Herald);
        let req = String::from_utf8(target.batch_request(&recs)).unwrap();
        let body = target.batch_body(&recs);
        assert!(req.starts_with("POST /.well-known/mercure/batch HTTP/1.1\r\n"));
        assert!(req.contains("Content-Type: application/x-ndjson\r\n"));
        assert!(req.contains(&format!("Content-Length: {}\r\n", body.len())));
        assert!(req.contains("Authorization: Bearer JWT\r\n"));
        assert!(req.ends_with(&format!("\r\n\r\n{body}")));
        let ok = b"urn:uuid:1\nurn:uuid:2\n";
        assert_eq!(target.accepted_updates(true, 200, ok), Some(2));
        assert_eq!(target.accepted_updates(true, 200, b"a\r\nb\r\n\n"), Some(2));
        assert_eq!(target.accepted_updates(true, 400, b"line 1: bad"), None);
        assert_eq!(target.accepted_updates(false, 200, b"urn:uuid:1"), Some(1));
        assert_eq!(target.accepted_updates(false, 201, b""), None);
    }
}
