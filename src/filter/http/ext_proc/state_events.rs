//! The HTTP side of the state machine: what headers, body data and trailers of each direction
//! do (§4.3 – §4.6, §4.19), as more `impl Core`. The processor's side is in `state_replies.rs`.

use super::*;

impl Core {
    /// Headers of a direction arrived (`eos`: no body and no trailers follow).
    pub fn on_headers(&mut self, d: Dir, mut head: Head, eos: bool) {
        {
            let ds = self.ds(d);
            ds.started = true;
            ds.head_eos = eos;
            ds.input_done = eos;
        }
        if self.done {
            self.out.push_back(Action::Headers(d, head, eos));
            if eos {
                self.emit_end(d);
            }
            return;
        }
        let m = self.mode(d);
        // The processor still sees `content-length`; it is removed from what is forwarded.
        let strip = self.should_strip_cl(d);
        if self.policy.observability_mode {
            if m.send_headers {
                let msg = self.headers_msg(d, &head, eos);
                self.send(d, msg);
            }
            self.out.push_back(Action::Headers(d, head, eos));
            if eos {
                self.emit_end(d);
            }
            return;
        }
        if !m.send_headers {
            if strip {
                head.headers_mut().remove(http::header::CONTENT_LENGTH);
            }
            self.out.push_back(Action::Headers(d, head, eos));
            if eos {
                self.emit_end(d);
            }
            self.may_close_early();
            return;
        }
        let msg = self.headers_msg(d, &head, eos);
        if strip {
            head.headers_mut().remove(http::header::CONTENT_LENGTH);
        }
        let ds = self.ds(d);
        ds.head = Some(head);
        ds.cb = Callback::Headers;
        self.send(d, msg);
        if !self.done {
            self.start_timer(d);
        }
    }

    /// Body bytes of a direction arrived; `eos` ends the message (no trailers).
    pub fn on_data(&mut self, d: Dir, data: Bytes, eos: bool) {
        {
            let ds = self.ds(d);
            if ds.input_done {
                return;
            }
            ds.input_done = eos;
            ds.data_seen |= !data.is_empty();
        }
        if self.done || self.ds_ref(d).passthrough {
            let ds = self.ds_ref(d);
            if ds.head.is_some() || !ds.queue.is_empty() || !ds.inflight.is_empty() {
                self.queue_data(d, data);
                return;
            }
            self.emit_data(d, data);
            if eos {
                self.emit_end(d);
            }
            return;
        }
        if self.ds_ref(d).drop_body {
            if eos {
                self.emit_end(d);
            }
            return;
        }
        let m = self.mode(d);
        if self.policy.observability_mode {
            if m.body == BodyMode::Streamed {
                let msg = Self::body_msg(d, &data, eos);
                self.send(d, msg);
            }
            self.emit_data(d, data);
            if eos {
                self.emit_end(d);
            }
            return;
        }
        match m.body {
            BodyMode::None => {
                if self.ds_ref(d).head.is_some() || self.ds_ref(d).cb != Callback::Idle {
                    self.queue_data(d, data);
                } else {
                    self.emit_data(d, data);
                    if eos {
                        self.advance(d);
                    }
                }
            }
            BodyMode::Buffered | BodyMode::BufferedPartial => {
                if self.ds_ref(d).body_sent {
                    // After the BUFFERED_PARTIAL reply (or skipped body): pass through.
                    self.queue_data(d, data);
                    self.advance(d);
                    return;
                }
                self.queue_data(d, data);
                if m.body == BodyMode::Buffered && self.ds_ref(d).queued > self.policy.buffer_limit
                {
                    self.overflow(d);
                    return;
                }
                self.advance(d);
            }
            BodyMode::Streamed => {
                let waiting = self.ds_ref(d).cb == Callback::Headers
                    && !self.policy.send_body_without_waiting;
                if waiting || !self.ds_ref(d).queue.is_empty() {
                    self.queue_data(d, data);
                    self.advance(d);
                } else {
                    self.send_chunk(d, data, eos);
                }
            }
            BodyMode::FullDuplex => {
                self.fd_seen = true;
                let msg = Self::body_msg(d, &data, eos);
                self.ds(d).eos_sent = eos;
                self.send(d, msg);
            }
        }
    }

    pub(super) fn queue_data(&mut self, d: Dir, data: Bytes) {
        let ds = self.ds(d);
        ds.queued += data.len();
        if !data.is_empty() {
            ds.queue.push_back(data);
        }
    }

    pub(super) fn send_chunk(&mut self, d: Dir, data: Bytes, eos: bool) {
        let msg = Self::body_msg(d, &data, eos);
        let ds = self.ds(d);
        ds.inflight.push_back(data);
        ds.eos_sent |= eos;
        if ds.cb == Callback::Idle {
            ds.cb = Callback::StreamedBody;
        }
        self.send(d, msg);
        if !self.done {
            self.start_timer(d);
        }
    }

    /// Trailers of a direction arrived (the message ends with them).
    pub fn on_trailers(&mut self, d: Dir, trailers: HeaderMap) {
        {
            let ds = self.ds(d);
            if ds.input_done {
                return;
            }
            ds.input_done = true;
            ds.got_trailers = true;
        }
        let ds = self.ds_ref(d);
        if self.done || ds.drop_body || (ds.passthrough && ds.head.is_none() && ds.queue.is_empty())
        {
            if ds.head.is_some() || !ds.queue.is_empty() {
                self.ds(d).trailers = Some(trailers);
                self.flush(d);
                return;
            }
            self.emit_trailers(d, trailers);
            return;
        }
        let m = self.mode(d);
        if self.policy.observability_mode {
            if m.send_trailers {
                let msg = self.trailers_msg(d, &trailers);
                self.send(d, msg);
            }
            self.emit_trailers(d, trailers);
            return;
        }
        if m.body == BodyMode::FullDuplex
            && !m.send_trailers
            && !self.ds_ref(d).passthrough
            && !self.ds_ref(d).drop_body
        {
            if self.ds_ref(d).fd_body_done {
                self.emit_trailers(d, trailers);
            } else {
                self.ds(d).trailers = Some(trailers);
            }
            return;
        }
        if m.body == BodyMode::FullDuplex && m.send_trailers {
            let msg = self.trailers_msg(d, &trailers);
            let ds = self.ds(d);
            ds.trailers = Some(trailers);
            ds.trailers_sent = true;
            self.send(d, msg);
            return;
        }
        self.ds(d).trailers = Some(trailers);
        self.advance(d);
    }

    /// Moves a direction forward after an event or a reply: sends what is ready, forwards
    /// what may go, ends the direction when everything is out.
    pub(super) fn advance(&mut self, d: Dir) {
        if self.done || self.local_response {
            // A streamed local response is being received: the request goes nowhere.
            return;
        }
        if self.ds_ref(d).cb != Callback::Idle || self.ds_ref(d).ended || !self.ds_ref(d).started {
            return;
        }
        let m = self.mode(d);
        let ds = self.ds_ref(d);
        // BUFFERED / BUFFERED_PARTIAL: the body message goes first, headers are held for it.
        if matches!(m.body, BodyMode::Buffered | BodyMode::BufferedPartial)
            && !ds.body_sent
            && !ds.head_eos
            && !ds.passthrough
            && !ds.drop_body
        {
            let ready = ds.input_done
                || (m.body == BodyMode::BufferedPartial && ds.queued > self.policy.buffer_limit);
            if !ready {
                return;
            }
            if !ds.data_seen && ds.trailers.is_some() {
                // Envoy sends no body message when trailers come without any data.
                self.ds(d).body_sent = true;
            } else {
                let body = self.ds(d).take_queue();
                let eos = self.ds_ref(d).input_done && self.ds_ref(d).trailers.is_none();
                let msg = Self::body_msg(d, &body, eos);
                let ds = self.ds(d);
                ds.inflight.push_back(body);
                ds.body_sent = true;
                ds.eos_sent = eos;
                ds.cb = if m.body == BodyMode::Buffered {
                    Callback::BufferedBody
                } else {
                    Callback::PartialBody
                };
                self.send(d, msg);
                if !self.done {
                    self.start_timer(d);
                }
                return;
            }
        }
        self.emit_head(d);
        let ds = self.ds_ref(d);
        if m.body == BodyMode::FullDuplex && !ds.head_eos && !ds.passthrough && !ds.drop_body {
            // FULL_DUPLEX_STREAMED output is driven by the processor's replies.
            return;
        }
        // Queued data.
        let streamed =
            m.body == BodyMode::Streamed && !ds.passthrough && !ds.drop_body && !ds.head_eos;
        if streamed && (!ds.queue.is_empty() || (ds.input_done && !ds.got_trailers && !ds.eos_sent))
        {
            let eos = ds.input_done && ds.trailers.is_none();
            let chunk = self.ds(d).take_queue();
            self.send_chunk(d, chunk, eos);
            return;
        }
        if !streamed {
            let q = self.ds(d).take_queue();
            self.emit_data(d, q);
        }
        // Trailers.
        if let Some(t) = self.ds(d).trailers.take() {
            let ds = self.ds_ref(d);
            if m.send_trailers && !ds.trailers_sent && !ds.drop_body && !ds.passthrough {
                let msg = self.trailers_msg(d, &t);
                let ds = self.ds(d);
                ds.trailers = Some(t);
                ds.trailers_sent = true;
                ds.cb = Callback::Trailers;
                self.send(d, msg);
                if !self.done {
                    self.start_timer(d);
                }
                return;
            }
            self.emit_trailers(d, t);
        } else if self.ds_ref(d).input_done {
            self.emit_end(d);
        }
        self.may_close_early();
    }
}
