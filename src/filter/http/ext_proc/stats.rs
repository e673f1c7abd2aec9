//! The 17 counters of Envoy 1.40's HTTP ext_proc filter, under
//! `http.<hcm_prefix>.ext_proc.[<stat_prefix>.]`, registered at build time.

use crate::stats::{Counter, Store};

macro_rules! stats {
    ($($(#[$m:meta])* $name:ident),+ $(,)?) => {
        /// The filter's counters.
        #[derive(Debug, Clone)]
        pub struct Stats {
            $($(#[$m])* pub $name: Counter,)+
        }

        impl Stats {
            /// Registers every counter under `prefix` (ending with `.`).
            pub fn new(store: &Store, prefix: &str) -> Stats {
                Stats { $($name: store.counter(&format!("{prefix}{}", stringify!($name))),)+ }
            }
        }
    };
}

stats!(
    /// A side stream was started.
    streams_started,
    /// A `ProcessingRequest` was sent.
    stream_msgs_sent,
    /// A response was processed.
    stream_msgs_received,
    /// An unexpected response arrived.
    spurious_msgs_received,
    /// A side stream was closed normally.
    streams_closed,
    /// A side stream failed (gRPC error, connect failure).
    streams_failed,
    /// An error was ignored because of `failure_mode_allow`.
    failure_mode_allowed,
    /// A message timer fired.
    message_timeouts,
    /// A header mutation was ignored or failed.
    rejected_header_mutations,
    /// An `override_message_timeout` was applied.
    override_message_timeout_received,
    /// An `override_message_timeout` was ignored.
    override_message_timeout_ignored,
    /// `clear_route_cache` without a header mutation.
    clear_route_cache_ignored,
    /// `clear_route_cache` while the action is RETAIN.
    clear_route_cache_disabled,
    /// `clear_route_cache` in an upstream filter chain.
    clear_route_cache_upstream_ignored,
    /// HTTP-service transport errors (the transport is not supported; stays 0).
    http_not_ok_resp_received,
    /// A local reply was sent by the filter (immediate responses and errors).
    immediate_responses_sent,
    /// The processor ended its side of the stream.
    server_half_closed,
);

impl Stats {
    /// The prefix for a filter: `http.<hcm>.ext_proc.[<stat_prefix>.]`.
    pub fn prefix(hcm_stat_prefix: &str, stat_prefix: &str) -> String {
        if stat_prefix.is_empty() {
            format!("http.{hcm_stat_prefix}.ext_proc.")
        } else {
            format!("http.{hcm_stat_prefix}.ext_proc.{stat_prefix}.")
        }
    }

    /// Counters in a private store, for unit tests.
    pub fn detached() -> Stats {
        Stats::new(&Store::new(), "test.")
    }
}
