//! The network ext_proc filters of one connection, between the sockets: routes chunks through
//! the filters (read path in config order, write path in reverse, as Envoy's filter manager
//! does), carries out their actions, and collects what must reach each socket.

use crate::filter::common::attributes::ConnectionInfo;
use crate::filter::common::metadata::DynamicMetadata;
use crate::filter::network::ext_proc::state::{
    Action, Chunk, CloseKind, Direction, ExtProcState, OpenError,
};
use crate::filter::network::ext_proc::stream::{Event, SideStream, Tagged};
use crate::filter::network::ext_proc::{Filter, Target};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// One ext_proc filter on this connection.
#[derive(Debug)]
struct Slot {
    filter: Arc<Filter>,
    state: ExtProcState,
    /// The side stream while open.
    stream: Option<SideStream>,
}

/// What the chain asks of the sockets after an event.
#[derive(Debug, Default)]
pub struct Effects {
    /// Chunks for the upstream socket, in order.
    pub to_upstream: Vec<Chunk>,
    /// Chunks for the downstream socket, in order.
    pub to_downstream: Vec<Chunk>,
    /// A filter closed the connection (the first request wins).
    pub close: Option<(CloseKind, &'static str)>,
}

/// The ext_proc filters of one connection and the connection's dynamic metadata.
#[derive(Debug)]
pub struct Chain {
    slots: Vec<Slot>,
    /// Shared by the filters: one writes a namespace, a later one forwards it.
    pub metadata: DynamicMetadata,
    events: mpsc::Sender<Tagged>,
    /// Envoy's local address of the downstream connection (`x-forwarded-for` of side streams).
    local: SocketAddr,
    /// Reused for every state-machine call.
    actions: Vec<Action>,
}

impl Chain {
    /// The chain for a new connection; side-stream events arrive on the returned receiver.
    pub fn new(
        filters: &[Arc<Filter>],
        info: &ConnectionInfo,
        local: SocketAddr,
    ) -> (Self, mpsc::Receiver<Tagged>) {
        // Bounded: a processor flooding responses is slowed by HTTP/2 flow control.
        let (tx, rx) = mpsc::channel(64);
        let slots = filters
            .iter()
            .map(|f| Slot {
                filter: f.clone(),
                state: f.new_connection(info.clone()),
                stream: None,
            })
            .collect();
        (
            Chain {
                slots,
                metadata: DynamicMetadata::default(),
                events: tx,
                local,
                actions: Vec::new(),
            },
            rx,
        )
    }

    /// Whether there are any filters at all.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Bytes read from a socket: `Read` from downstream enters the first filter, `Write` from
    /// upstream enters the last.
    pub fn ingress(&mut self, dir: Direction, chunk: Chunk, now: Instant, fx: &mut Effects) {
        self.deliver(dir, None, chunk, now, fx);
    }

    /// Hands `chunk` to the filter after `from` in `dir` (or to the socket).
    fn deliver(
        &mut self,
        dir: Direction,
        from: Option<usize>,
        chunk: Chunk,
        now: Instant,
        fx: &mut Effects,
    ) {
        let n = self.slots.len();
        let next = match (dir, from) {
            (Direction::Read, None) => Some(0),
            (Direction::Read, Some(i)) => Some(i + 1),
            (Direction::Write, None) => n.checked_sub(1),
            (Direction::Write, Some(i)) => i.checked_sub(1),
        }
        .filter(|i| *i < n);
        let Some(idx) = next else {
            match dir {
                Direction::Read => fx.to_upstream.push(chunk),
                Direction::Write => fx.to_downstream.push(chunk),
            }
            return;
        };
        let mut actions = std::mem::take(&mut self.actions);
        let Slot {
            filter,
            state,
            stream,
        } = &mut self.slots[idx];
        let open = || match &filter.target {
            Target::Missing(_) => Err(OpenError::ClusterMissing),
            Target::Cluster(channel) => {
                *stream = Some(SideStream::open(
                    channel.pick(),
                    &filter.grpc_service,
                    self.local,
                    idx,
                    self.events.clone(),
                ));
                Ok(())
            }
        };
        state.on_data(dir, chunk, &self.metadata, now, open, &mut actions);
        self.apply(idx, &mut actions, now, fx);
        self.actions = actions;
    }

    /// Carries out a filter's actions in order.
    fn apply(&mut self, idx: usize, actions: &mut Vec<Action>, now: Instant, fx: &mut Effects) {
        // Forwarding may run other filters, which reuse `self.actions`; keep ours apart.
        let mine: Vec<Action> = std::mem::take(actions);
        for action in mine {
            match action {
                Action::Send(req) => {
                    if let Some(s) = &self.slots[idx].stream {
                        s.send(req);
                    }
                }
                Action::Forward(dir, chunk) => self.deliver(dir, Some(idx), chunk, now, fx),
                Action::CloseStream => self.slots[idx].stream = None,
                Action::CloseConnection(kind, reason) => {
                    fx.close.get_or_insert((kind, reason));
                }
            }
        }
    }

    /// A side-stream event for filter `idx`.
    pub fn on_event(&mut self, (idx, event): Tagged, now: Instant, fx: &mut Effects) {
        // Events of a stream the filter already dropped are stale (Envoy's callbacks are gone).
        if self.slots.get(idx).is_none_or(|s| s.stream.is_none()) {
            return;
        }
        let mut actions = Vec::new();
        let slot = &mut self.slots[idx];
        match event {
            Event::Message(resp) => {
                slot.state
                    .on_response(resp, &mut self.metadata, now, &mut actions)
            }
            Event::End(end) => slot.state.on_stream_end(end, &mut actions),
        }
        self.apply(idx, &mut actions, now, fx);
    }

    /// Fires due message timers.
    pub fn on_timer(&mut self, now: Instant, fx: &mut Effects) {
        for idx in 0..self.slots.len() {
            let mut actions = Vec::new();
            self.slots[idx].state.on_timer(now, &mut actions);
            self.apply(idx, &mut actions, now, fx);
        }
    }

    /// The connection is closing: every filter closes its side stream.
    pub fn on_connection_closed(&mut self) {
        for slot in &mut self.slots {
            let mut actions = Vec::new();
            slot.state.on_connection_closed(&mut actions);
            slot.stream = None;
        }
    }

    /// The earliest message timer of any filter.
    pub fn deadline(&self) -> Option<Instant> {
        self.slots.iter().filter_map(|s| s.state.deadline()).min()
    }

    /// Unanswered bytes held by the processors in `dir`, over all filters.
    pub fn in_flight(&self, dir: Direction) -> usize {
        self.slots.iter().map(|s| s.state.in_flight(dir)).sum()
    }

    /// Whether any filter awaits an answer (the close waits for it, N4).
    pub fn has_pending(&self) -> bool {
        self.slots.iter().any(|s| s.state.has_pending())
    }
}
