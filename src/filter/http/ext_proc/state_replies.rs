//! The processor's side of the state machine: what each `ProcessingResponse` does (§4.2, §4.8 –
//! §4.12), as more `impl Core`.

use super::*;

impl Core {
    /// A message arrived from the processor.
    pub fn on_response(&mut self, resp: pb::ProcessingResponse) {
        if self.done || self.policy.observability_mode {
            // Messages after completion are ignored (§4.2); observability ignores everything.
            return;
        }
        if let Some(t) = resp.override_message_timeout {
            self.on_override_timeout(t);
            return;
        }
        let Some(r) = resp.response else {
            if let Some(mo) = &resp.mode_override {
                if self.standalone_override(mo) {
                    self.stats().stream_msgs_received.inc();
                    return;
                }
            }
            return self.spurious("unhandled message");
        };
        if let Some(mo) = &resp.mode_override {
            self.maybe_override(mo);
        }
        let metadata = resp.dynamic_metadata;
        // Metadata must be in place before the headers it comes with are forwarded.
        let mark = self.out.len();
        let outcome = match r {
            Resp::RequestHeaders(h) => {
                self.on_headers_reply(Dir::Request, h.response.unwrap_or_default())
            }
            Resp::ResponseHeaders(h) => {
                self.on_headers_reply(Dir::Response, h.response.unwrap_or_default())
            }
            Resp::RequestBody(b) => {
                self.on_body_reply(Dir::Request, b.response.unwrap_or_default())
            }
            Resp::ResponseBody(b) => {
                self.on_body_reply(Dir::Response, b.response.unwrap_or_default())
            }
            Resp::RequestTrailers(t) => self.on_trailers_reply(Dir::Request, t.header_mutation),
            Resp::ResponseTrailers(t) => self.on_trailers_reply(Dir::Response, t.header_mutation),
            Resp::ImmediateResponse(i) => {
                if self.policy.disable_immediate_response {
                    Err(Failure::Spurious(
                        "unhandled immediate response due to config disabled it",
                    ))
                } else {
                    self.apply_metadata(metadata);
                    self.stats().stream_msgs_received.inc();
                    self.immediate(i);
                    return;
                }
            }
            Resp::StreamedImmediateResponse(sir) => self.on_streamed_immediate(sir),
        };
        match outcome {
            Ok(()) => {
                self.stats().stream_msgs_received.inc();
                let tail: Vec<Action> = self.out.drain(mark..).collect();
                self.apply_metadata(metadata);
                self.out.extend(tail);
                self.advance(Dir::Request);
                self.advance(Dir::Response);
                self.may_close_early();
            }
            Err(Failure::Spurious(msg)) => self.spurious(msg),
            Err(Failure::Mutation(e)) => {
                self.stats().stream_msgs_received.inc();
                let status = self.policy.status_on_error;
                self.error_reply(status, &e.to_string());
            }
            Err(Failure::Other(msg)) => {
                self.stats().stream_msgs_received.inc();
                let status = self.policy.status_on_error;
                self.error_reply(status, msg);
            }
        }
    }

    /// `StreamedImmediateResponse` (§4.12): allowed in reply to the request headers with body
    /// mode NONE or FULL_DUPLEX_STREAMED. Streamed downstream as Envoy does: the headers go as a
    /// local reply whose body is the response direction's output, then each body chunk, then
    /// the optional trailers. Counted in neither `immediate_responses_sent` nor anywhere but
    /// `stream_msgs_received`, as Envoy.
    fn on_streamed_immediate(&mut self, sir: pb::StreamedImmediateResponse) -> Result<(), Failure> {
        use pb::streamed_immediate_response::Response as Sir;
        let finished = match sir.response {
            Some(Sir::HeadersResponse(h)) => {
                let allowed = !self.local_response
                    && self.req.cb == Callback::Headers
                    && matches!(self.req.mode.body, BodyMode::None | BodyMode::FullDuplex);
                if !allowed {
                    return Err(Failure::Spurious("unhandled message"));
                }
                self.stop_timer(Dir::Request);
                self.req.cb = Callback::Idle;
                let mut reply = LocalReply {
                    status: StatusCode::OK,
                    details: "ext_proc_local_response".into(),
                    ..Default::default()
                };
                let mut status = None;
                let mut set_headers = Vec::new();
                for header in h.headers.map(|m| m.headers).unwrap_or_default() {
                    if header.key.eq_ignore_ascii_case(":status") {
                        status = Some(if header.raw_value.is_empty() {
                            header.value.into_bytes()
                        } else {
                            header.raw_value
                        });
                    } else {
                        // A repeated name adds a value (a pseudo-header is set, not appended).
                        let append = (!header.key.starts_with(':')).then_some(
                            envoy_types::pb::google::protobuf::BoolValue { value: true },
                        );
                        #[allow(deprecated)] // `append` is what Envoy honours
                        set_headers.push(core::HeaderValueOption {
                            header: Some(header),
                            append,
                            ..Default::default()
                        });
                    }
                }
                // The other headers pass the configured mutation rules, as in an
                // `ImmediateResponse` (Envoy drops `host`, `x-envoy-*` by default and counts them).
                let mutation = pb::HeaderMutation {
                    set_headers,
                    remove_headers: Vec::new(),
                };
                mutation::apply(
                    Target::Trailers(&mut reply.headers),
                    &mutation,
                    &self.policy.checker,
                    Context::default(),
                    &self.policy.stats,
                )
                .map_err(Failure::Mutation)?;
                // As Envoy: a `:status` that is not a number of at least 200 fails the headers
                // (a rejected mutation, then `status_on_error`); none at all is the HCM's 502.
                match status.as_deref().map(streamed_status) {
                    Some(Some(code)) => reply.status = code,
                    Some(None) => {
                        self.stats().rejected_header_mutations.inc();
                        return Err(Failure::Mutation(MutationError::SetFailed));
                    }
                    None => {
                        self.missing_status();
                        return Ok(());
                    }
                }
                if h.end_of_stream {
                    self.out.push_back(Action::LocalReply(reply));
                    self.finish_local_response();
                } else {
                    self.local_response = true;
                    self.out.push_back(Action::LocalStream(reply));
                }
                return Ok(());
            }
            Some(Sir::BodyResponse(b)) => {
                if !self.local_response {
                    return Err(Failure::Spurious("unhandled message"));
                }
                if !b.body.is_empty() {
                    self.out.push_back(Action::Data(Dir::Response, b.body));
                }
                b.end_of_stream
            }
            Some(Sir::TrailersResponse(t)) => {
                if !self.local_response {
                    return Err(Failure::Spurious("unhandled message"));
                }
                let mut trailers = HeaderMap::new();
                for (name, value) in proto_headers(Some(t)) {
                    if let (Ok(k), Ok(v)) = (
                        http::header::HeaderName::from_bytes(name.as_bytes()),
                        http::HeaderValue::from_bytes(&value),
                    ) {
                        trailers.append(k, v);
                    }
                }
                self.out
                    .push_back(Action::Trailers(Dir::Response, trailers));
                true
            }
            None => return Err(Failure::Spurious("unhandled message")),
        };
        if finished {
            self.out.push_back(Action::End(Dir::Response));
            self.finish_local_response();
        }
        Ok(())
    }

    /// Streamed local-response headers without `:status`: Envoy's filter manager refuses them
    /// with its own 502 (not counted as an ext_proc immediate response) and the stream ends.
    fn missing_status(&mut self) {
        self.done = true;
        self.close();
        self.stop_timer(Dir::Response);
        self.out.push_back(Action::LocalReply(LocalReply::new(
            StatusCode::BAD_GATEWAY,
            "missing required header: :status",
            "filter_removed_required_response_headers{missing_required_header:_:status}",
        )));
    }

    /// The streamed local response is complete: processing ends.
    fn finish_local_response(&mut self) {
        self.local_response = false;
        self.done = true;
        self.close();
        self.stop_timer(Dir::Response);
    }

    fn apply_metadata(&mut self, md: Option<Struct>) {
        let Some(md) = md else { return };
        let fields: std::collections::BTreeMap<_, _> = md
            .fields
            .into_iter()
            .filter(|(k, _)| self.receiving.iter().any(|n| n == k))
            .collect();
        if !fields.is_empty() {
            self.out.push_back(Action::Metadata(Struct {
                fields: fields.into_iter().collect(),
            }));
        }
    }

    fn spurious(&mut self, msg: &'static str) {
        self.stats().spurious_msgs_received.inc();
        if self.fail_open && !self.fd_seen {
            self.stats().failure_mode_allowed.inc();
            self.finish_processing();
        } else {
            let status = self.policy.status_on_error;
            self.error_reply(status, msg);
        }
    }

    fn on_override_timeout(&mut self, t: envoy_types::pb::google::protobuf::Duration) {
        let v = Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32);
        let max = self.policy.max_message_timeout;
        let dir = [Dir::Request, Dir::Response]
            .into_iter()
            .find(|d| self.ds_ref(*d).timer);
        match dir {
            Some(d)
                if !max.is_zero()
                    && v >= Duration::from_millis(1)
                    && v <= max
                    && !self.ds_ref(d).override_used =>
            {
                self.ds(d).override_used = true;
                self.stats().override_message_timeout_received.inc();
                self.out.push_back(Action::Timer(d, Some(v)));
            }
            _ => self.stats().override_message_timeout_ignored.inc(),
        }
    }

    fn override_allowed(&self, mo: &PbMode) -> bool {
        let p = &self.policy;
        let fd = |m: Mode| {
            m.request.body == BodyMode::FullDuplex || m.response.body == BodyMode::FullDuplex
        };
        p.allow_mode_override
            && !p.send_body_without_waiting
            && !fd(self.initial_mode)
            && (self.req.cb == Callback::Headers || self.resp.cb == Callback::Headers)
            && (p.allowed_override_modes.is_empty()
                || p.allowed_override_modes.contains(&raw_mode_key(mo)))
    }

    fn maybe_override(&mut self, mo: &PbMode) {
        if !self.override_allowed(mo) {
            return;
        }
        let cur = Mode {
            request: self.req.mode,
            response: self.resp.mode,
        };
        let new = cur.overridden(mo);
        // The request path cannot change once its headers reply is in.
        if self.req.cb == Callback::Headers {
            self.req.mode = new.request;
        }
        self.resp.mode = new.response;
    }

    /// A message with only `mode_override` before the request-headers reply: only a switch of
    /// the request body from NONE/STREAMED to FULL_DUPLEX_STREAMED with trailers SEND.
    fn standalone_override(&mut self, mo: &PbMode) -> bool {
        let ok = self.req.cb == Callback::Headers
            && matches!(self.req.mode.body, BodyMode::None | BodyMode::Streamed)
            && mo.request_body_mode == BodyMode::FullDuplex.number()
            && mo.request_trailer_mode == 1;
        if ok {
            self.req.mode.body = BodyMode::FullDuplex;
            self.req.mode.send_trailers = true;
            // The request will now stream: content-length no longer holds.
            if let Some(h) = self.req.head.as_mut() {
                if !self.policy.allow_content_length_header {
                    h.headers_mut().remove(http::header::CONTENT_LENGTH);
                }
            }
            // Data that arrived before the switch goes to the processor now (Envoy may skip the
            // first chunk here, #40340).
            let ds = &self.req;
            if !ds.head_eos && (!ds.queue.is_empty() || (ds.input_done && !ds.got_trailers)) {
                let eos = ds.input_done && !ds.got_trailers;
                let q = self.req.take_queue();
                self.fd_seen = true;
                self.req.eos_sent = eos;
                let msg = Self::body_msg(Dir::Request, &q, eos);
                self.send(Dir::Request, msg);
            }
            if let Some(t) = self.req.trailers.take() {
                let msg = self.trailers_msg(Dir::Request, &t);
                self.req.trailers = Some(t);
                self.req.trailers_sent = true;
                self.send(Dir::Request, msg);
            }
        }
        ok
    }

    fn on_headers_reply(&mut self, d: Dir, common: pb::CommonResponse) -> Result<(), Failure> {
        if self.ds_ref(d).cb != Callback::Headers {
            return Err(Failure::Spurious("spurious message"));
        }
        self.stop_timer(d);
        // STREAMED with send_body_without_waiting_for_header_response: chunks already sent
        // now await their replies.
        let ds = self.ds(d);
        ds.cb = if ds.inflight.is_empty() {
            Callback::Idle
        } else {
            Callback::StreamedBody
        };
        if ds.cb == Callback::StreamedBody {
            self.start_timer(d);
        }
        let replace =
            common.status == pb::common_response::ResponseStatus::ContinueAndReplace as i32;
        let strip = self.should_strip_cl(d);
        let has_mutation = common.header_mutation.is_some();
        let cl_before = self.ds_ref(d).head.as_ref().and_then(Head::content_length);
        if let Some(hm) = &common.header_mutation {
            let policy = self.policy.clone();
            let head = self.ds(d).head.as_mut();
            if let Some(head) = head {
                mutation::apply(
                    Target::Head(head),
                    hm,
                    &policy.checker,
                    Context {
                        replace,
                        strip_content_length: strip,
                    },
                    &policy.stats,
                )
                .map_err(Failure::Mutation)?;
            }
        }
        if !replace && self.mode(d).body == BodyMode::None {
            // Envoy forwards a processor-set content-length that disagrees with the body,
            // truncating it (quirk H3); refuse it where the body length is known.
            let ds = self.ds_ref(d);
            let cl_after = ds.head.as_ref().and_then(Head::content_length);
            let known_len = if ds.head_eos { Some(0) } else { cl_before };
            if let (Some(after), Some(len)) = (cl_after, known_len) {
                if after != len && cl_after != cl_before {
                    return Err(Failure::Other(
                        "mismatch between content length and the length of the mutated body",
                    ));
                }
            }
        }
        if d == Dir::Request {
            self.route_cache(common.clear_route_cache, has_mutation);
        }
        if replace {
            let ds = self.ds(d);
            ds.mode.body = BodyMode::None;
            ds.mode.send_trailers = false;
            let new_body = match common.body_mutation.and_then(|b| b.mutation) {
                Some(BodyMut::Body(b)) => Some(b),
                Some(BodyMut::ClearBody(_)) => Some(Bytes::new()),
                _ => None,
            };
            match new_body {
                Some(body) => {
                    if let Some(h) = ds.head.as_mut() {
                        h.headers_mut().remove(http::header::CONTENT_LENGTH);
                    }
                    ds.drop_body = true;
                    ds.queue.clear();
                    ds.queued = 0;
                    ds.trailers = None;
                    self.emit_head(d);
                    self.emit_data(d, body);
                    self.emit_end(d);
                }
                None => self.ds(d).passthrough = true,
            }
        } else if !matches!(
            self.mode(d).body,
            BodyMode::Buffered | BodyMode::BufferedPartial
        ) {
            // The headers go on now; body replies (STREAMED chunks sent early, FULL_DUPLEX
            // responses) may follow right away.
            self.emit_head(d);
        }
        Ok(())
    }

    fn route_cache(&mut self, clear: bool, has_mutation: bool) {
        match self.policy.route_cache_action {
            RouteCacheAction::Default => {
                if clear && !has_mutation {
                    self.stats().clear_route_cache_ignored.inc();
                } else if clear {
                    self.out.push_back(Action::ClearRouteCache);
                }
            }
            RouteCacheAction::Clear => {
                if has_mutation {
                    self.out.push_back(Action::ClearRouteCache);
                }
            }
            RouteCacheAction::Retain => {
                if clear {
                    self.stats().clear_route_cache_disabled.inc();
                }
            }
        }
    }

    fn on_body_reply(&mut self, d: Dir, common: pb::CommonResponse) -> Result<(), Failure> {
        let m = self.mode(d);
        let mutation = common.body_mutation.and_then(|b| b.mutation);
        if m.body == BodyMode::FullDuplex {
            let ds = self.ds_ref(d);
            if ds.cb == Callback::Headers || !ds.started || ds.fd_body_done {
                return Err(Failure::Spurious("spurious message"));
            }
            return match mutation {
                Some(BodyMut::StreamedResponse(s)) => {
                    self.emit_data(d, s.body);
                    if s.end_of_stream {
                        self.ds(d).fd_body_done = true;
                        if !self.ds_ref(d).trailers_sent {
                            match self.ds(d).trailers.take() {
                                Some(t) => self.emit_trailers(d, t),
                                None => self.emit_end(d),
                            }
                        }
                    }
                    Ok(())
                }
                Some(_) => Err(Failure::Spurious(
                    "spurious message: Normal body mutation response is received while body_mode_ is FULL_DUPLEX_STREAMED",
                )),
                None => Ok(()),
            };
        }
        if matches!(mutation, Some(BodyMut::StreamedResponse(_))) {
            return Err(Failure::Spurious(
                "spurious message: streamed_response is received while body_mode_ is not FULL_DUPLEX_STREAMED",
            ));
        }
        let mutated = mutation.is_some();
        // Called once on each path below: the mutation's body moves into the output, uncopied.
        let replace = move |chunk: Bytes| match mutation {
            Some(BodyMut::Body(b)) => b,
            Some(BodyMut::ClearBody(true)) => Bytes::new(),
            _ => chunk,
        };
        match self.ds_ref(d).cb {
            Callback::StreamedBody => {
                let chunk = self.ds(d).inflight.pop_front().unwrap_or_default();
                let out = replace(chunk);
                self.emit_data(d, out);
                if self.ds_ref(d).inflight.is_empty() {
                    self.ds(d).cb = Callback::Idle;
                    self.stop_timer(d);
                } else {
                    self.start_timer(d);
                }
                Ok(())
            }
            Callback::BufferedBody | Callback::PartialBody => {
                self.stop_timer(d);
                let policy = self.policy.clone();
                let strip = self.should_strip_cl(d);
                let ds = self.ds(d);
                let partial = ds.cb == Callback::PartialBody;
                ds.cb = Callback::Idle;
                if let (Some(hm), Some(head)) = (&common.header_mutation, ds.head.as_mut()) {
                    mutation::apply(
                        Target::Head(head),
                        hm,
                        &policy.checker,
                        Context {
                            replace: false,
                            strip_content_length: strip,
                        },
                        &policy.stats,
                    )
                    .map_err(Failure::Mutation)?;
                }
                let body = concat(ds.inflight.drain(..));
                let body = replace(body);
                if mutated && !partial {
                    if let Some(cl) = ds.head.as_ref().and_then(Head::content_length) {
                        if cl != body.len() as u64 {
                            return Err(Failure::Other("mismatch between content length and the length of the mutated body"));
                        }
                    }
                }
                if partial {
                    ds.passthrough = true;
                }
                if d == Dir::Request && common.header_mutation.is_some() {
                    self.route_cache(common.clear_route_cache, true);
                }
                self.emit_head(d);
                self.emit_data(d, body);
                Ok(())
            }
            _ => Err(Failure::Spurious("spurious message")),
        }
    }

    fn on_trailers_reply(&mut self, d: Dir, hm: Option<pb::HeaderMutation>) -> Result<(), Failure> {
        let ds = self.ds_ref(d);
        let fd_ok =
            ds.mode.body == BodyMode::FullDuplex && ds.trailers_sent && ds.cb == Callback::Idle;
        if ds.cb != Callback::Trailers && !fd_ok {
            return Err(Failure::Spurious("spurious message"));
        }
        self.stop_timer(d);
        let policy = self.policy.clone();
        let ds = self.ds(d);
        ds.cb = Callback::Idle;
        let mut t = ds.trailers.take().unwrap_or_default();
        if let Some(hm) = &hm {
            mutation::apply(
                Target::Trailers(&mut t),
                hm,
                &policy.checker,
                Context::default(),
                &policy.stats,
            )
            .map_err(Failure::Mutation)?;
        }
        self.emit_trailers(d, t);
        Ok(())
    }

    fn immediate(&mut self, i: pb::ImmediateResponse) {
        let code = i.status.map(|s| s.code).unwrap_or(0);
        let status = u16::try_from(code)
            .ok()
            .filter(|c| *c >= 200)
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::OK);
        let mut headers = HeaderMap::new();
        if let Some(hm) = &i.headers {
            // A failed mutation stops the remaining ones; the reply is still sent (§4.11).
            let _ = mutation::apply(
                Target::Trailers(&mut headers),
                hm,
                &self.policy.checker,
                Context::default(),
                &self.policy.stats,
            );
        }
        let reply = LocalReply {
            status,
            headers,
            body: i.body,
            details: underscore(&i.details),
            grpc_status: i.grpc_status.map(|g| g.status),
            stream: None,
        };
        self.done = true;
        self.close();
        self.stop_timer(Dir::Request);
        self.stop_timer(Dir::Response);
        self.stats().immediate_responses_sent.inc();
        self.out.push_back(Action::LocalReply(reply));
    }
}

/// The status of a streamed local response: a number of at least 200, as Envoy's mutation
/// checker wants. Envoy writes a number past 999 as is (an invalid status line, which HTTP/2
/// clients refuse); `http` cannot carry one, so it becomes 200 as in an `ImmediateResponse`.
fn streamed_status(value: &[u8]) -> Option<StatusCode> {
    let code: u32 = std::str::from_utf8(value).ok()?.parse().ok()?;
    if code < 200 {
        return None;
    }
    Some(
        u16::try_from(code)
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::OK),
    )
}

/// Lower-cased names and values (`raw_value`, else `value`) of a processor's header map.
fn proto_headers(
    map: Option<envoy_types::pb::envoy::config::core::v3::HeaderMap>,
) -> impl Iterator<Item = (String, Vec<u8>)> {
    map.map(|m| m.headers)
        .unwrap_or_default()
        .into_iter()
        .map(|hv| {
            let value = if hv.raw_value.is_empty() {
                hv.value.into_bytes()
            } else {
                hv.raw_value
            };
            (hv.key.to_ascii_lowercase(), value)
        })
}
