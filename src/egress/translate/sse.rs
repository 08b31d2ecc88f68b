//! An incremental server-sent events parser: bytes in arbitrary chunks in,
//! whole events out. It keeps only the unfinished line and the event being
//! built, so each chunk costs work in its own length.

/// One event: its `event:` name (if any) and its `data:` lines joined by
/// `\n`. Comments, `id:` and `retry:` are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field, if the event had one.
    pub event: Option<String>,
    /// The `data:` lines, joined by `\n`.
    pub data: String,
}

impl SseEvent {
    /// Whether this is OpenAI's end-of-stream `data: [DONE]`.
    pub fn is_done(&self) -> bool {
        self.data == "[DONE]"
    }
}

/// Splits a byte stream into [`SseEvent`]s; lines end in `\n` or `\r\n`.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    event: Option<String>,
    data: Option<String>,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// The events that `bytes` completes, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        let mut rest = bytes;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let (line, tail) = (&rest[..end], &rest[end + 1..]);
            if self.line.is_empty() {
                self.line_done(line, &mut events);
            } else {
                let mut whole = std::mem::take(&mut self.line);
                whole.extend_from_slice(line);
                self.line_done(&whole, &mut events);
            }
            rest = tail;
        }
        self.line.extend_from_slice(rest);
        events
    }

    /// The last event, if the stream ended without its blank line.
    pub fn finish(&mut self) -> Option<SseEvent> {
        let line = std::mem::take(&mut self.line);
        let mut events = Vec::new();
        if !line.is_empty() {
            self.line_done(&line, &mut events);
        }
        self.line_done(b"", &mut events);
        events.pop()
    }

    fn line_done(&mut self, line: &[u8], events: &mut Vec<SseEvent>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            let event = self.event.take();
            if let Some(data) = self.data.take() {
                events.push(SseEvent { event, data });
            }
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        let value = String::from_utf8_lossy(value);
        match field {
            b"data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(&value);
                }
                None => self.data = Some(value.into_owned()),
            },
            b"event" => self.event = Some(value.into_owned()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.map(str::to_owned),
            data: data.to_owned(),
        }
    }

    const STREAM: &str = ": keep-alive\n\nevent: message_start\ndata: {\"a\":1}\n\n\
        data: line one\ndata: line two\r\n\r\nid: 7\nretry: 10\ndata:[DONE]\n\n";

    fn expected() -> Vec<SseEvent> {
        vec![
            ev(Some("message_start"), "{\"a\":1}"),
            ev(None, "line one\nline two"),
            ev(None, "[DONE]"),
        ]
    }

    #[test]
    fn parses_events_comments_multiline_data_and_crlf() {
        let mut parser = SseParser::new();
        assert_eq!(parser.push(STREAM.as_bytes()), expected());
        assert!(parser.push(b"").is_empty());
        assert!(expected()[2].is_done());
    }

    #[test]
    fn finish_yields_an_unterminated_last_event() {
        let mut parser = SseParser::new();
        assert!(parser.push(b"data: tail").is_empty());
        assert_eq!(parser.finish(), Some(ev(None, "tail")));
        assert_eq!(parser.finish(), None);
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_events(cuts in proptest::collection::vec(0..STREAM.len(), 0..12)) {
            let bytes = STREAM.as_bytes();
            let mut cuts = cuts;
            cuts.sort_unstable();
            let mut parser = SseParser::new();
            let mut events = Vec::new();
            let mut start = 0;
            for cut in cuts.into_iter().chain([bytes.len()]) {
                events.extend(parser.push(&bytes[start..cut]));
                start = cut;
            }
            prop_assert_eq!(events, expected());
        }
    }
}
