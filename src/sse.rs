//! Server-Sent Events wire format (WHATWG HTML, "server-sent events").
//!
//! Two halves live here because they must agree byte for byte:
//! - [`encode_event`] turns one update into the exact bytes every subscriber
//!   receives. It runs once per update; the resulting `Bytes` are shared by
//!   all subscribers (cloning `Bytes` is a reference-count bump).
//! - [`SseParser`] is a spec-complete incremental parser, used by the CLI
//!   (`herald subscribe`), the load generator and the tests, so that what we
//!   assert is what a browser's `EventSource` would see.
//!
//! Field injection is prevented upstream: publish rejects ids and types that
//! contain CR, LF or NUL (see [`validate_field_value`]). `data` may contain
//! any line breaks; it is split into one `data:` line per line here.

use bytes::{BufMut, Bytes, BytesMut};

/// A keep-alive comment. Comments are ignored by every SSE parser but keep
/// proxies and load balancers from closing an idle connection.
pub const KEEP_ALIVE: &[u8] = b":\n\n";

/// Encode one event. `data` is split on CRLF, CR and LF into one `data:` line
/// per line, so a browser rebuilds exactly the published string (line breaks
/// normalised to LF, as the SSE spec does). An empty `data` still produces a
/// `data:` line: without one, a browser would not dispatch the event at all.
pub fn encode_event(id: &str, event_type: Option<&str>, retry: Option<u64>, data: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(id.len() + data.len() + 32);
    if let Some(t) = event_type {
        out.put_slice(b"event: ");
        out.put_slice(t.as_bytes());
        out.put_u8(b'\n');
    }
    if let Some(r) = retry {
        out.put_slice(b"retry: ");
        out.put_slice(r.to_string().as_bytes());
        out.put_u8(b'\n');
    }
    out.put_slice(b"id: ");
    out.put_slice(id.as_bytes());
    out.put_u8(b'\n');
    for line in split_lines(data) {
        out.put_slice(b"data: ");
        out.put_slice(line.as_bytes());
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.freeze()
}

/// Split on CRLF, lone CR and lone LF, the three line endings of the SSE
/// grammar. Always yields at least one (possibly empty) line.
pub fn split_lines(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let r = rest?;
        match r.find(['\r', '\n']) {
            None => {
                rest = None;
                Some(r)
            }
            Some(i) => {
                let skip = if r[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&r[i + skip..]);
                Some(&r[..i])
            }
        }
    })
}

/// Why a value cannot go into an `id:` or `event:` field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("must not contain line breaks (CR or LF): that would inject SSE fields")]
    LineBreak,
    #[error("must not contain NUL, control or Unicode format characters")]
    Control,
}

/// A single-line SSE field value (`id`, `event`) must not contain CR, LF
/// (field injection), NUL (browsers drop ids containing NUL) or other control
/// and format characters (invisible, and a source of confusion in logs).
pub fn validate_field_value(v: &str) -> Result<(), FieldError> {
    if v.contains(['\r', '\n']) {
        return Err(FieldError::LineBreak);
    }
    if v.chars().any(is_control_or_format) {
        return Err(FieldError::Control);
    }
    Ok(())
}

/// Unicode general categories Cc (control) and the common Cf (format)
/// characters: zero-width and bidirectional controls, BOM, soft hyphen.
pub fn is_control_or_format(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}' | '\u{0600}'..='\u{0605}' | '\u{061C}' | '\u{06DD}' | '\u{070F}'
            | '\u{08E2}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}' | '\u{110BD}' | '\u{110CD}' | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}' | '\u{1D173}'..='\u{1D17A}' | '\u{E0001}'
            | '\u{E0020}'..='\u{E007F}')
}

/// One event as a browser's `EventSource` would dispatch it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field, `"message"` when absent.
    pub event_type: String,
    pub data: String,
    /// The last event id in force when this event was dispatched.
    pub id: String,
    pub retry: Option<u64>,
}

/// Incremental SSE parser following the WHATWG "interpret an event stream"
/// algorithm: UTF-8 with an optional leading BOM, CRLF/CR/LF line endings
/// (a CR at the end of one chunk followed by LF at the start of the next is
/// one line ending), comments, unknown fields ignored, `id` containing NUL
/// ignored, `retry` digits only, and no dispatch for an event without data.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    started: bool,
    last_was_cr: bool,
    data: String,
    data_seen: bool,
    event_type: String,
    last_id: String,
    retry: Option<u64>,
    comments: u64,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of comment lines seen (keep-alives).
    pub fn comments(&self) -> u64 {
        self.comments
    }

    /// The last event id string, as a browser would send in `Last-Event-ID`.
    pub fn last_event_id(&self) -> &str {
        &self.last_id
    }

    /// Feed bytes; returns the events completed by them.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        // An empty read changes nothing. Without this, it cleared
        // `last_was_cr`, so "data: a\r" + "" + "\n\n" read the CRLF as two
        // line ends and dispatched an extra event (found by fuzz/sse_parse).
        if chunk.is_empty() {
            return events;
        }
        let mut chunk = chunk;
        if !self.started {
            // Hold back until we know whether a BOM is present.
            self.buf.extend_from_slice(chunk);
            if self.buf.len() < 3 && b"\xEF\xBB\xBF".starts_with(&self.buf) {
                return events;
            }
            self.started = true;
            let pending = std::mem::take(&mut self.buf);
            let body = pending.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&pending);
            self.process(body, &mut events);
            return events;
        }
        if self.last_was_cr && chunk.first() == Some(&b'\n') {
            chunk = &chunk[1..];
        }
        self.process(chunk, &mut events);
        events
    }

    fn process(&mut self, mut chunk: &[u8], events: &mut Vec<SseEvent>) {
        self.last_was_cr = false;
        while let Some(pos) = chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
            let mut line = std::mem::take(&mut self.buf);
            line.extend_from_slice(&chunk[..pos]);
            let was_cr = chunk[pos] == b'\r';
            let mut next = pos + 1;
            if was_cr {
                if chunk.get(next) == Some(&b'\n') {
                    next += 1;
                } else if next == chunk.len() {
                    self.last_was_cr = true;
                }
            }
            chunk = &chunk[next..];
            self.line(&line, events);
        }
        self.buf.extend_from_slice(chunk);
    }

    fn line(&mut self, line: &[u8], events: &mut Vec<SseEvent>) {
        let line = String::from_utf8_lossy(line);
        if line.is_empty() {
            self.dispatch(events);
            return;
        }
        if line.starts_with(':') {
            self.comments += 1;
            return;
        }
        let (field, value) = match line.find(':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (&line[..], ""),
        };
        match field {
            "event" => self.event_type = value.to_string(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
                self.data_seen = true;
            }
            "id" if !value.contains('\0') => self.last_id = value.to_string(),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry = value.parse().ok();
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, events: &mut Vec<SseEvent>) {
        let event_type = std::mem::take(&mut self.event_type);
        if !self.data_seen {
            self.data.clear();
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        self.data_seen = false;
        if data.ends_with('\n') {
            data.pop();
        }
        events.push(SseEvent {
            event_type: if event_type.is_empty() {
                "message".into()
            } else {
                event_type
            },
            data,
            id: self.last_id.clone(),
            retry: self.retry,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(bytes: &[u8]) -> Vec<SseEvent> {
        SseParser::new().feed(bytes)
    }

    #[test]
    fn encodes_single_line() {
        let b = encode_event("urn:uuid:1", None, None, "hello");
        assert_eq!(&b[..], b"id: urn:uuid:1\ndata: hello\n\n");
    }

    #[test]
    fn encodes_type_retry_and_multiline_data() {
        let b = encode_event("x", Some("ping"), Some(3000), "a\nb\r\nc\rd");
        assert_eq!(
            &b[..],
            b"event: ping\nretry: 3000\nid: x\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
    }

    #[test]
    fn empty_data_still_dispatches() {
        let b = encode_event("x", None, None, "");
        let ev = parse_all(&b);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].data, "");
    }

    #[test]
    fn trailing_newline_in_data_survives_round_trip() {
        let b = encode_event("x", None, None, "a\n");
        assert_eq!(&b[..], b"id: x\ndata: a\ndata: \n\n");
        assert_eq!(parse_all(&b)[0].data, "a\n");
    }

    #[test]
    fn round_trip_every_line_ending() {
        for data in [
            "",
            "one",
            "a\nb",
            "a\r\nb",
            "a\rb",
            "\n\n",
            "x\r\n\r\ny",
            " lead",
            "colon: x",
        ] {
            let b = encode_event("id-1", Some("t"), None, data);
            let ev = parse_all(&b);
            assert_eq!(ev.len(), 1, "{data:?}");
            let expected = data.replace("\r\n", "\n").replace('\r', "\n");
            assert_eq!(ev[0].data, expected);
            assert_eq!(ev[0].event_type, "t");
            assert_eq!(ev[0].id, "id-1");
        }
    }

    #[test]
    fn parser_handles_split_chunks_and_crlf_across_chunks() {
        let stream = b"id: 1\r\ndata: a\r\n\r\nid: 2\rdata: b\r\r";
        for split in 0..stream.len() {
            let mut p = SseParser::new();
            let mut ev = p.feed(&stream[..split]);
            ev.extend(p.feed(&stream[split..]));
            assert_eq!(ev.len(), 2, "split at {split}");
            assert_eq!((ev[0].id.as_str(), ev[0].data.as_str()), ("1", "a"));
            assert_eq!((ev[1].id.as_str(), ev[1].data.as_str()), ("2", "b"));
        }
    }

    #[test]
    fn empty_chunk_between_cr_and_lf_is_one_line_end() {
        // fuzz/sse_parse regression: an empty read between the CR and the
        // LF of a CRLF used to turn it into two line ends.
        let mut p = SseParser::new();
        let mut ev = p.feed(b"data: a\r");
        ev.extend(p.feed(b""));
        ev.extend(p.feed(b"\ndata: b\n\n"));
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0].data, "a\nb");
    }

    #[test]
    fn parser_byte_by_byte_with_bom() {
        let stream = "\u{FEFF}: comment\n\ndata: é\n\n".as_bytes();
        let mut p = SseParser::new();
        let mut ev = Vec::new();
        for b in stream {
            ev.extend(p.feed(std::slice::from_ref(b)));
        }
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].data, "é");
        assert_eq!(p.comments(), 1);
    }

    #[test]
    fn parser_ignores_nul_ids_bad_retry_and_unknown_fields() {
        let ev = parse_all(b"id: a\0b\nretry: 12x\nfoo: bar\ndata\n\n");
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].id, "");
        assert_eq!(ev[0].retry, None);
        assert_eq!(ev[0].data, "");
    }

    #[test]
    fn no_dispatch_without_data_but_id_persists() {
        let ev = parse_all(b"id: 7\n\ndata: x\n\n");
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].id, "7");
    }

    #[test]
    fn field_validation() {
        assert!(validate_field_value("urn:uuid:abc").is_ok());
        assert_eq!(validate_field_value("a\nb"), Err(FieldError::LineBreak));
        assert_eq!(validate_field_value("a\rb"), Err(FieldError::LineBreak));
        assert_eq!(validate_field_value("a\0b"), Err(FieldError::Control));
        assert_eq!(validate_field_value("a\u{200B}b"), Err(FieldError::Control));
        assert_eq!(validate_field_value("a\u{202E}b"), Err(FieldError::Control));
        assert!(validate_field_value("émoji 🎉").is_ok());
    }

    #[test]
    fn split_lines_cases() {
        let v: Vec<_> = split_lines("a\r\n\rb\n").collect();
        assert_eq!(v, ["a", "", "b", ""]);
        assert_eq!(split_lines("").collect::<Vec<_>>(), [""]);
    }
}
