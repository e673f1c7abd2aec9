use super::*;

fn guard() -> Guard {
    Guard::new(Limits {
        max_head: 1024,
        max_headers: 100,
        allow_chunked_length: false,
    })
}

/// Feeds `input` in pieces of `step` bytes the way the connection does (released bytes leave
/// the held buffer) and returns the bytes released, or the rejection.
fn run(g: &mut Guard, input: &[u8], step: usize) -> Result<Vec<u8>, Reject> {
    let mut held = Vec::new();
    let mut out = Vec::new();
    for piece in input.chunks(step.max(1)) {
        held.extend_from_slice(piece);
        let step = g.advance(&held);
        out.extend(held.drain(..step.release));
        if let Some(r) = step.reject {
            return Err(r);
        }
    }
    Ok(out)
}

fn all_steps(input: &[u8]) -> Result<Vec<u8>, Reject> {
    let whole = run(&mut guard(), input, input.len());
    for step in [1, 2, 3, 7] {
        assert_eq!(run(&mut guard(), input, step), whole, "step {step}");
    }
    whole
}

#[test]
fn well_formed_requests_pass_whole() {
    for input in [
        &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nx-t: 1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tCHUNKED \r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\nHost: a\n\n",
    ] {
        assert_eq!(all_steps(input).as_deref(), Ok(input), "{}", String::from_utf8_lossy(input));
    }
}

#[test]
fn an_incomplete_head_is_held() {
    let mut g = guard();
    assert_eq!(g.advance(b"GET / HTTP/1.1\r\nHost: a\r\n").release, 0);
    assert!(g.in_head(b"x"));
    assert_eq!(g.advance(b"GET / HTTP/1.1\r\nHost: a\r\n\r").release, 0);
    assert_eq!(
        g.advance(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST").release,
        27
    );
}

#[test]
fn smuggling_shapes_are_refused() {
    let cases: &[(&[u8], Reject)] = &[
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", Reject::BadRequest("http1.content_length_and_chunked_not_allowed")),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", Reject::BadRequest("http1.content_length_and_chunked_not_allowed")),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", Reject::NotImplemented),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", Reject::NotImplemented),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", Reject::NotImplemented),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", Reject::BadRequest("http1.content_length_not_allowed")),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello", Reject::BadRequest("http1.codec_error")),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", Reject::BadRequest("http1.codec_error")),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\n", Reject::BadRequest("http1.codec_error")),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", Reject::BadRequest("http1.codec_error")),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello", Reject::BadRequest("http1.codec_error")),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX", Reject::BadRequest("http1.codec_error")),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a\0b\r\nhello\r\n", Reject::BadRequest("http1.codec_error")),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nx a: b\r\n\r\n", Reject::BadRequest("http1.codec_error")),
        (b"FOO / HTTP/1.1\r\nHost: a\r\n\r\n", Reject::BadRequest("http1.codec_error")),
        (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", Reject::UpgradeRequired),
        (b"GET / HTTP/1.0\r\nHost: a\r\n\r\n", Reject::UpgradeRequired),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Reject::BadRequest("http1.codec_error")),
        (b"GET /x HTTP/1.1\r\nHost: a b\r\n\r\n", Reject::BadRequest("http1.invalid_characters")),
        (b"GET /x#frag HTTP/1.1\r\nHost: a\r\n\r\n", Reject::PathFragment),
        // The second, pipelined request is the smuggled one.
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", Reject::BadRequest("http1.content_length_and_chunked_not_allowed")),
    ];
    for (input, want) in cases {
        assert_eq!(
            all_steps(input),
            Err(*want),
            "{}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn the_bytes_before_a_refused_request_are_released() {
    let mut g = guard();
    let first = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut input = first.to_vec();
    input.extend_from_slice(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n");
    let step = g.advance(&input);
    assert_eq!(
        step,
        Step {
            release: first.len(),
            reject: Some(Reject::BadRequest("http1.content_length_not_allowed")),
            whole: true
        }
    );
    let mut g = guard();
    assert_eq!(g.advance(&input[..first.len() + 4]).release, first.len());
    // A chunk error in a body whose head is in the same read: nothing of it is released.
    let mut g = guard();
    let bad = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
    assert_eq!(
        g.advance(bad),
        Step {
            release: 0,
            reject: Some(Reject::BadRequest("http1.codec_error")),
            whole: true
        }
    );
    // ... and in a later read: the head was released, so the HCM cannot answer it cleanly.
    let mut g = guard();
    assert_eq!(g.advance(&bad[..bad.len() - 4]).release, bad.len() - 4);
    assert_eq!(
        g.advance(b"zz\r\n"),
        Step {
            release: 0,
            reject: Some(Reject::BadRequest("http1.codec_error")),
            whole: false
        }
    );
}

#[test]
fn allow_chunked_length_accepts_both() {
    let mut g = Guard::new(Limits {
        max_head: 1024,
        max_headers: 100,
        allow_chunked_length: true,
    });
    let input = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(run(&mut g, input, 4).map(|v| v.len()), Ok(input.len()));
}

#[test]
fn what_hyper_refuses_is_left_to_hyper() {
    // httparse refuses these; hyper answers them (400 / 431) from the same bytes.
    for input in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nx a: b\r\n\r\nrest",
    ] {
        assert_eq!(all_steps(input).as_deref(), Ok(input));
    }
    // A head longer than the limit goes to hyper (431) without waiting for its end.
    let mut g = guard();
    let long = [b"GET /".as_slice(), &[b'a'; 2000]].concat();
    assert_eq!(g.advance(&long).release, long.len());
    // CONNECT switches the checks off (the HCM answers it and closes).
    let mut g = guard();
    assert_eq!(
        g.advance(b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\n\r\nxx")
            .release,
        37
    );
}

#[test]
fn head_end_finds_both_line_endings() {
    assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nX", 0), Some(18));
    assert_eq!(head_end(b"GET / HTTP/1.1\n\nX", 0), Some(16));
    assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\n\r\nX", 0), Some(23));
    assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r", 0), None);
    assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\n", 20), Some(24));
}
