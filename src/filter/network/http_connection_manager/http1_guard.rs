//! HTTP/1.1 request framing checks in front of hyper, without I/O.
//!
//! hyper is more lenient than Envoy where leniency lets a request be smuggled: it reads a
//! request with both `Content-Length` and `Transfer-Encoding: chunked` as chunked, accepts
//! repeated equal `Content-Length`s and codings before `chunked`, and reports chunked-body errors
//! only after the request head has been handed to the filters (and forwarded upstream). The
//! guard sees every byte before hyper does: it holds each request head until it is complete and
//! checks it, then follows the body's framing (Content-Length countdown, chunk-size lines,
//! trailers) so that the next head is found exactly where hyper will look for it. A request
//! that Envoy refuses is refused here, before hyper (and so the upstream) sees any of it.
//!
//! Anything httparse (hyper's own parser) refuses is handed to hyper unchanged: hyper answers it
//! and the HCM rewrites the answer into Envoy's (see `downstream_io`).

/// Why a request is refused, with Envoy's status, body and response code details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reject {
    /// 400 `Bad Request` (a codec error).
    BadRequest(&'static str),
    /// 501 `Not Implemented`: a transfer coding other than `chunked`.
    NotImplemented,
    /// 426 `Upgrade Required`: an HTTP version other than 1.1.
    UpgradeRequired,
    /// 408: the request head did not arrive in time (which timer fired).
    Timeout(HeadTimeout),
    /// 400 with an empty body: a fragment (`#`) in the request target, which Envoy's path
    /// normalisation refuses (the `http` crate would drop it silently).
    PathFragment,
}

/// The timers that can cut a request whose head is still arriving (Envoy starts them on the
/// request's first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HeadTimeout {
    /// `request_headers_timeout`: 408 `request header timeout`.
    Headers,
    /// `request_timeout`: 408 `request timeout`.
    Request,
    /// `stream_idle_timeout`: 408 `stream timeout`.
    Idle,
}

impl Reject {
    /// Status line (code and reason) and body of Envoy's reply.
    pub(super) fn reply(self) -> (&'static str, &'static str) {
        match self {
            Reject::BadRequest(_) => ("400 Bad Request", "Bad Request"),
            Reject::NotImplemented => ("501 Not Implemented", "Not Implemented"),
            Reject::UpgradeRequired => ("426 Upgrade Required", "Upgrade Required"),
            Reject::Timeout(HeadTimeout::Headers) => {
                ("408 Request Timeout", "request header timeout")
            }
            Reject::Timeout(HeadTimeout::Request) => ("408 Request Timeout", "request timeout"),
            Reject::Timeout(HeadTimeout::Idle) => ("408 Request Timeout", "stream timeout"),
            Reject::PathFragment => ("400 Bad Request", ""),
        }
    }

    /// Envoy's response code details.
    pub(super) fn details(self) -> &'static str {
        match self {
            Reject::BadRequest(d) => d,
            Reject::NotImplemented => "http1.invalid_transfer_encoding",
            Reject::UpgradeRequired => "low_version",
            Reject::Timeout(HeadTimeout::Headers) => "request_header_timeout",
            Reject::Timeout(HeadTimeout::Request) => "request_overall_timeout",
            Reject::Timeout(HeadTimeout::Idle) => "stream_idle_timeout",
            Reject::PathFragment => "path_normalization_failed",
        }
    }

    /// Whether Envoy counts it as a codec (protocol) error.
    pub(super) fn is_codec_error(self) -> bool {
        !matches!(self, Reject::Timeout(_) | Reject::PathFragment)
    }
}

/// What [`Guard::advance`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Step {
    /// Bytes at the front of the held buffer that hyper may read now.
    pub release: usize,
    /// The request after those bytes is refused.
    pub reject: Option<Reject>,
    /// No byte of the refused message was released: the HCM answers it itself.
    pub whole: bool,
}

/// Limits the guard applies.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// `max_request_headers_kb` in bytes: a longer head is left to hyper (431).
    pub max_head: usize,
    /// `max_headers_count`: more headers are left to hyper (431).
    pub max_headers: usize,
    /// `http_protocol_options.allow_chunked_length`: accept `Content-Length` with chunked
    /// (the length is dropped, as Envoy does).
    pub allow_chunked_length: bool,
}

/// Where in the request stream the next byte belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A request head; `scanned` bytes of it were searched for its end already.
    Head { scanned: usize },
    /// `Content-Length` body bytes still to come.
    Body(u64),
    /// A chunk-size line.
    ChunkSize,
    /// Chunk data bytes still to come.
    ChunkData(u64),
    /// The CRLF after chunk data.
    ChunkEnd,
    /// Trailer lines up to the empty line.
    Trailers,
    /// No more checks: CONNECT tunnels, or input hyper itself refuses.
    Passthrough,
}

/// Longest chunk-size line accepted (the size plus extensions).
const MAX_CHUNK_LINE: usize = 4096;

/// Methods Envoy's HTTP/1 codec accepts; anything else is a 400.
const METHODS: &[&str] = &[
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "CONNECT",
    "OPTIONS",
    "TRACE",
    "PATCH",
    "ACL",
    "BIND",
    "CHECKOUT",
    "COPY",
    "LINK",
    "LOCK",
    "MERGE",
    "MKACTIVITY",
    "MKCALENDAR",
    "MKCOL",
    "MOVE",
    "MSEARCH",
    "M-SEARCH",
    "NOTIFY",
    "PROPFIND",
    "PROPPATCH",
    "PURGE",
    "REBIND",
    "REPORT",
    "SEARCH",
    "SOURCE",
    "SUBSCRIBE",
    "UNBIND",
    "UNLINK",
    "UNLOCK",
    "UNSUBSCRIBE",
];

/// The framing tracker of one HTTP/1.1 connection.
#[derive(Debug)]
pub(super) struct Guard {
    state: State,
    limits: Limits,
    /// Request heads released to hyper so far.
    heads: usize,
}

impl Guard {
    /// A guard expecting the first request head.
    pub(super) fn new(limits: Limits) -> Self {
        Guard {
            state: State::Head { scanned: 0 },
            limits,
            heads: 0,
        }
    }

    /// The number of request heads released to hyper so far.
    pub(super) fn heads(&self) -> usize {
        self.heads
    }

    /// True while part of a request head is held (the head timers run).
    pub(super) fn in_head(&self, held: &[u8]) -> bool {
        matches!(self.state, State::Head { .. }) && !held.is_empty()
    }

    /// Examines `held` (bytes read from the client that hyper has not seen yet, the same front
    /// as last time plus whatever arrived since the last released prefix) and says how many of
    /// them, from the front, hyper may see now. The rest stays held until more arrives.
    pub(super) fn advance(&mut self, held: &[u8]) -> Step {
        let mut pos = 0;
        // Where the message whose head was checked in this call starts.
        let mut msg_start = None;
        let r = self.scan(held, &mut pos, &mut msg_start);
        match r {
            Ok(()) => Step {
                release: pos,
                reject: None,
                whole: false,
            },
            // A refused head, or a body error in a message whose head is still held: hyper
            // sees nothing of the message.
            Err(e) if matches!(self.state, State::Head { .. }) => Step {
                release: pos,
                reject: Some(e),
                whole: true,
            },
            Err(e) => match msg_start {
                Some(s) => {
                    self.heads -= 1;
                    Step {
                        release: s,
                        reject: Some(e),
                        whole: true,
                    }
                }
                None => Step {
                    release: pos,
                    reject: Some(e),
                    whole: false,
                },
            },
        }
    }

    fn scan(
        &mut self,
        held: &[u8],
        pos: &mut usize,
        msg_start: &mut Option<usize>,
    ) -> Result<(), Reject> {
        loop {
            let rest = &held[*pos..];
            match self.state {
                State::Passthrough => {
                    *pos = held.len();
                    return Ok(());
                }
                State::Head { scanned } => {
                    // Empty lines before a request line are ignored (RFC 9112 §2.2); hyper
                    // skips them too.
                    if scanned == 0 {
                        let blank = rest
                            .iter()
                            .take_while(|b| matches!(b, b'\r' | b'\n'))
                            .count();
                        *pos += blank;
                        if blank > 0 {
                            continue;
                        }
                    }
                    if rest.is_empty() {
                        return Ok(());
                    }
                    match head_end(rest, scanned) {
                        Some(end) => {
                            self.state = self.head(&rest[..end])?;
                            *msg_start = Some(*pos);
                            if self.state != State::Passthrough {
                                *pos += end;
                                self.heads += 1;
                            }
                        }
                        None if rest.len() > self.limits.max_head => {
                            self.state = State::Passthrough
                        }
                        None => {
                            self.state = State::Head {
                                scanned: rest.len(),
                            };
                            return Ok(());
                        }
                    }
                }
                State::Body(n) | State::ChunkData(n) => {
                    let take = n.min(rest.len() as u64);
                    *pos += take as usize;
                    let left = n - take;
                    self.state = match (self.state, left) {
                        (State::Body(_), 0) => State::Head { scanned: 0 },
                        (State::Body(_), _) => State::Body(left),
                        (_, 0) => State::ChunkEnd,
                        _ => State::ChunkData(left),
                    };
                    if left > 0 {
                        return Ok(());
                    }
                }
                State::ChunkSize => {
                    let Some(line) = line(rest, MAX_CHUNK_LINE)? else {
                        return Ok(());
                    };
                    let size = chunk_size(&rest[..line.0])?;
                    *pos += line.1;
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkEnd => {
                    if rest.len() < 2 {
                        if rest.first().is_some_and(|b| *b != b'\r') {
                            return Err(Reject::BadRequest("http1.codec_error"));
                        }
                        return Ok(());
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(Reject::BadRequest("http1.codec_error"));
                    }
                    *pos += 2;
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    let Some(line) = line(rest, self.limits.max_head)? else {
                        return Ok(());
                    };
                    let text = &rest[..line.0];
                    *pos += line.1;
                    if text.is_empty() {
                        self.state = State::Head { scanned: 0 };
                    } else if !valid_field_line(text) {
                        return Err(Reject::BadRequest("http1.codec_error"));
                    }
                }
            }
        }
    }

    /// Checks a complete request head and returns the state for what follows it.
    fn head(&self, head: &[u8]) -> Result<State, Reject> {
        // The version first: Envoy answers 426 to any version but 1.1 (httparse would refuse
        // 1.2 or 2.0 as a parse error).
        let first = head.split(|b| *b == b'\n').next().unwrap_or_default();
        let first = first.strip_suffix(b"\r").unwrap_or(first);
        if let Some(v) = first.rsplit(|b| *b == b' ').next() {
            if v.len() == 8
                && v.starts_with(b"HTTP/")
                && v[5].is_ascii_digit()
                && v[6] == b'.'
                && v[7].is_ascii_digit()
                && v != b"HTTP/1.1"
            {
                // Envoy's parser checks the method first: `PRI * HTTP/2.0` (an HTTP/2 preface
                // on the HTTP/1 codec) is a 400, `GET / HTTP/2.0` a 426.
                let method = first.split(|b| *b == b' ').next().unwrap_or_default();
                if !METHODS.iter().any(|m| m.as_bytes() == method) {
                    return Err(Reject::BadRequest("http1.codec_error"));
                }
                return Err(Reject::UpgradeRequired);
            }
        }
        let mut headers = vec![httparse::EMPTY_HEADER; self.limits.max_headers];
        let mut req = httparse::Request::new(&mut headers);
        // hyper refuses whatever httparse refuses, with its own 400 / 431.
        let Ok(httparse::Status::Complete(_)) = req.parse(head) else {
            return Ok(State::Passthrough);
        };
        let method = req.method.unwrap_or_default();
        if !METHODS.contains(&method) {
            return Err(Reject::BadRequest("http1.codec_error"));
        }
        if method == "CONNECT" {
            return Ok(State::Passthrough);
        }
        if req.path.is_some_and(|p| p.contains('#')) {
            return Err(Reject::PathFragment);
        }
        // Envoy's codec checks the authority's characters (RFC 3986: unreserved, sub-delims,
        // `:`, `@`, `[`, `]`, `%`).
        let authority_ok = |v: &[u8]| {
            v.iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@[]%".contains(b))
        };
        if req
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("host") && !authority_ok(h.value))
        {
            return Err(Reject::BadRequest("http1.invalid_characters"));
        }
        let mut te = None;
        let mut te_count = 0;
        let mut cl = None;
        let mut cl_count = 0;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                te_count += 1;
                te = Some(h.value);
            } else if h.name.eq_ignore_ascii_case("content-length") {
                cl_count += 1;
                cl = Some(h.value);
            }
        }
        if let Some(te) = te {
            if te_count > 1 || !te.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(Reject::NotImplemented);
            }
            if cl.is_some() && !self.limits.allow_chunked_length {
                return Err(Reject::BadRequest(
                    "http1.content_length_and_chunked_not_allowed",
                ));
            }
            return Ok(State::ChunkSize);
        }
        let Some(cl) = cl else {
            return Ok(State::Head { scanned: 0 });
        };
        if cl_count > 1 {
            return Err(Reject::BadRequest("http1.content_length_not_allowed"));
        }
        let cl = cl.trim_ascii();
        if cl.is_empty() || cl.len() > 19 || !cl.iter().all(u8::is_ascii_digit) {
            return Err(Reject::BadRequest("http1.codec_error"));
        }
        match std::str::from_utf8(cl)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
        {
            Some(0) => Ok(State::Head { scanned: 0 }),
            Some(n) => Ok(State::Body(n)),
            None => Err(Reject::BadRequest("http1.codec_error")),
        }
    }
}

/// The length of the request head in `buf` (through its empty line), searching from about
/// `scanned` on so that a head arriving a byte at a time is not rescanned.
fn head_end(buf: &[u8], scanned: usize) -> Option<usize> {
    let mut from = scanned.saturating_sub(2);
    // A loop, not recursion: a head made of `\n\rX` triples would recurse once per triple and
    // overflow the stack (an abort of the whole process).
    loop {
        let i = buf
            .get(from..)?
            .windows(2)
            .position(|w| w == b"\n\n" || (w[0] == b'\n' && w[1] == b'\r'))?
            + from;
        // In bounds: `i` starts a two-byte window.
        if buf[i + 1] == b'\n' {
            return Some(i + 2);
        }
        match buf.get(i + 2) {
            Some(b'\n') => return Some(i + 3),
            // `\n\r` then something else: not the end; keep looking after it.
            Some(_) => from = i + 1,
            None => return None,
        }
    }
}

/// A CRLF-terminated line at the front of `buf`: `(text length, length with CRLF)`, or `None`
/// if it is not complete yet. A bare LF, or a line longer than `max`, is a 400.
fn line(buf: &[u8], max: usize) -> Result<Option<(usize, usize)>, Reject> {
    match buf.iter().position(|b| *b == b'\n') {
        Some(0) => Err(Reject::BadRequest("http1.codec_error")),
        Some(nl) if buf[nl - 1] == b'\r' => Ok(Some((nl - 1, nl + 1))),
        Some(_) => Err(Reject::BadRequest("http1.codec_error")),
        None if buf.len() > max => Err(Reject::BadRequest("http1.codec_error")),
        None => Ok(None),
    }
}

/// The size of a chunk-size line (`1*HEXDIG [ BWS ";" chunk-ext ]`), refusing sizes over 64 bits
/// and CR or NUL in extensions.
fn chunk_size(line: &[u8]) -> Result<u64, Reject> {
    let bad = Reject::BadRequest("http1.codec_error");
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(bad);
    }
    let rest = &line[digits..];
    let ext = rest.trim_ascii_start();
    if !(rest.is_empty() || ext.first() == Some(&b';'))
        || ext.iter().any(|b| matches!(b, b'\r' | b'\0'))
    {
        return Err(bad);
    }
    let hex = std::str::from_utf8(&line[..digits]).map_err(|_| bad)?;
    u64::from_str_radix(hex, 16).map_err(|_| bad)
}

/// `field-name ":" OWS field-value OWS` with a token name and no controls but HTAB in the value.
fn valid_field_line(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|b| *b == b':') else {
        return false;
    };
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    !name.is_empty()
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b))
        && value
            .iter()
            .all(|b| *b == b'\t' || (*b >= 0x20 && *b != 0x7f))
}

#[cfg(test)]
#[path = "http1_guard_tests.rs"]
mod tests;
