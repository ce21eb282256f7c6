//! Incremental Server-Sent Events parser (WHATWG HTML "event stream
//! interpretation"): lines end in CR, LF or CRLF (a CRLF may be split across
//! reads), `data:` lines are joined with LF, one leading space after the colon
//! is stripped, comments start with `:`, a blank line dispatches the event.

/// One dispatched event. `event` is empty when the stream gave no type
/// (the spec's default type is "message").
#[derive(Debug)]
#[allow(dead_code)] // id and event are part of the parser's API; the load generator only needs data
pub struct Event<'a> {
    pub id: &'a [u8],
    pub event: &'a [u8],
    pub data: &'a [u8],
}

#[derive(Default)]
pub struct SseParser {
    /// The current, incomplete line.
    line: Vec<u8>,
    /// The previous byte was a CR: a following LF belongs to the same line end.
    after_cr: bool,
    /// No line has been completed yet (a leading UTF-8 BOM is stripped).
    started: bool,
    data: Vec<u8>,
    event: Vec<u8>,
    last_id: Vec<u8>,
    /// Last `retry:` value seen, in milliseconds.
    pub retry_ms: Option<u64>,
    /// Number of comment lines seen (heartbeats).
    pub comments: u64,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// The last event id seen (persists across events, as in the spec).
    #[allow(dead_code)]
    pub fn last_event_id(&self) -> &[u8] {
        &self.last_id
    }

    /// Feed raw body bytes; `on_event` is called for every dispatched event.
    pub fn feed<F: FnMut(Event<'_>)>(&mut self, mut input: &[u8], on_event: &mut F) {
        while !input.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if input[0] == b'\n' {
                    input = &input[1..];
                    continue;
                }
            }
            match input.iter().position(|&b| b == b'\r' || b == b'\n') {
                None => {
                    self.line.extend_from_slice(input);
                    return;
                }
                Some(i) => {
                    if self.line.is_empty() {
                        self.process_line(&input[..i], on_event);
                    } else {
                        self.line.extend_from_slice(&input[..i]);
                        let line = std::mem::take(&mut self.line);
                        self.process_line(&line, on_event);
                        self.line = line;
                        self.line.clear();
                    }
                    self.after_cr = input[i] == b'\r';
                    input = &input[i + 1..];
                }
            }
        }
    }

    fn process_line<F: FnMut(Event<'_>)>(&mut self, mut line: &[u8], on_event: &mut F) {
        if !self.started {
            self.started = true;
            if line.starts_with(b"\xEF\xBB\xBF") {
                line = &line[3..];
            }
        }
        if line.is_empty() {
            self.dispatch(on_event);
            return;
        }
        if line[0] == b':' {
            self.comments += 1;
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(c) => {
                let v = &line[c + 1..];
                (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
            }
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
            }
            b"id" if !value.contains(&0) => {
                self.last_id.clear();
                self.last_id.extend_from_slice(value);
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                self.retry_ms = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok());
            }
            _ => {}
        }
    }

    fn dispatch<F: FnMut(Event<'_>)>(&mut self, on_event: &mut F) {
        if self.data.is_empty() {
            self.event.clear();
            return;
        }
        let len = self.data.len() - 1; // drop the trailing LF
        on_event(Event {
            id: &self.last_id,
            event: &self.event,
            data: &self.data[..len],
        });
        self.data.clear();
        self.event.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Ev {
        id: String,
        event: String,
        data: String,
    }

    fn collect(p: &mut SseParser, chunks: &[&[u8]]) -> Vec<Ev> {
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut |e: Event<'_>| {
                out.push(Ev {
                    id: String::from_utf8_lossy(e.id).into(),
                    event: String::from_utf8_lossy(e.event).into(),
                    data: String::from_utf8_lossy(e.data).into(),
                })
            });
        }
        out
    }

    fn ev(id: &str, event: &str, data: &str) -> Ev {
        Ev {
            id: id.into(),
            event: event.into(),
            data: data.into(),
        }
    }

    #[test]
    fn lf_line_endings() {
        let mut p = SseParser::new();
        let got = collect(&mut p, &[b"id: 1\ndata: hello\n\ndata: a\ndata: b\n\n"]);
        assert_eq!(got, vec![ev("1", "", "hello"), ev("1", "", "a\nb")]);
    }

    #[test]
    fn cr_line_endings() {
        let mut p = SseParser::new();
        let got = collect(&mut p, &[b"event: x\rdata: one\r\rdata:two\r\r"]);
        assert_eq!(got, vec![ev("", "x", "one"), ev("", "", "two")]);
    }

    #[test]
    fn crlf_line_endings() {
        let mut p = SseParser::new();
        let got = collect(&mut p, &[b"id:7\r\ndata: x\r\ndata:  y\r\n\r\n"]);
        // Only one leading space is stripped.
        assert_eq!(got, vec![ev("7", "", "x\n y")]);
    }

    #[test]
    fn mixed_endings_and_crlf_split_across_reads() {
        let mut p = SseParser::new();
        // CR at the end of one read, LF at the start of the next: one line end.
        let got = collect(
            &mut p,
            &[
                b"data: a\r",
                b"\ndata: b\r",
                b"\n\r",
                b"\n",
                b"data: c\n\r\n",
            ],
        );
        assert_eq!(got, vec![ev("", "", "a\nb"), ev("", "", "c")]);
    }

    #[test]
    fn byte_by_byte() {
        let src =
            b"\xEF\xBB\xBFid: 42\r\nevent: upd\r\ndata: {\"seq\":1}\r\n\r\n: ping\n\ndata: z\n\n";
        let mut p = SseParser::new();
        let chunks: Vec<&[u8]> = src.chunks(1).collect();
        let got = collect(&mut p, &chunks);
        assert_eq!(got, vec![ev("42", "upd", "{\"seq\":1}"), ev("42", "", "z")]);
        assert_eq!(p.comments, 1);
    }

    #[test]
    fn every_split_point() {
        let src: &[u8] = b"id: a\r\ndata: 1 2 3\r\n\r\n:c\rdata: x\rdata\r\r";
        let mut reference = SseParser::new();
        let want = collect(&mut reference, &[src]);
        assert_eq!(want, vec![ev("a", "", "1 2 3"), ev("a", "", "x\n")]);
        for i in 0..=src.len() {
            for j in i..=src.len() {
                let mut p = SseParser::new();
                let got = collect(&mut p, &[&src[..i], &src[i..j], &src[j..]]);
                assert_eq!(got, want, "split at {i},{j}");
            }
        }
    }

    #[test]
    fn comments_and_unknown_fields_ignored() {
        let mut p = SseParser::new();
        let got = collect(&mut p, &[b": hi\n\n:\nfoo: bar\nretry: 1500\ndata\n\n"]);
        // `data` with no colon is a data field with an empty value.
        assert_eq!(got, vec![ev("", "", "")]);
        assert_eq!(p.comments, 2);
        assert_eq!(p.retry_ms, Some(1500));
    }

    #[test]
    fn blank_event_without_data_is_not_dispatched() {
        let mut p = SseParser::new();
        let got = collect(&mut p, &[b"event: x\nid: 3\n\ndata: y\n\n"]);
        // event type was reset by the empty dispatch, the id persists.
        assert_eq!(got, vec![ev("3", "", "y")]);
    }

    #[test]
    fn incomplete_event_not_dispatched() {
        let mut p = SseParser::new();
        let got = collect(&mut p, &[b"data: partial\n"]);
        assert!(got.is_empty());
        let got = collect(&mut p, &[b"\n"]);
        assert_eq!(got, vec![ev("", "", "partial")]);
    }

    #[test]
    fn id_with_nul_ignored() {
        let mut p = SseParser::new();
        let got = collect(&mut p, &[b"id: 1\n\nid: a\0b\ndata: d\n\n"]);
        assert_eq!(got, vec![ev("1", "", "d")]);
    }
}
