//! The filter's counters: Envoy 1.40's 17 under `network_ext_proc.<stat_prefix>.`, plus two
//! extproxy adds to make a silent Envoy drop visible (quirk N7).

use crate::stats::{Counter, Store};

macro_rules! stats {
    ($($(#[$m:meta])* $name:ident),+ $(,)?) => {
        /// Counters shared by every connection (and every filter with the same prefix).
        #[derive(Debug, Clone, Default)]
        pub struct Stats { $($(#[$m])* pub $name: Counter),+ }
        impl Stats {
            /// Registers every counter (they show as 0 before traffic, as in Envoy).
            pub fn new(store: &Store, stat_prefix: &str) -> Self {
                Stats { $($name: store.counter(&format!("network_ext_proc.{stat_prefix}.{}", stringify!($name)))),+ }
            }
        }
    };
}

stats!(
    /// A side stream was started (once per connection, at the first processed byte).
    streams_started,
    /// A `ProcessingRequest` was sent.
    stream_msgs_sent,
    /// A response arrived while processing was active.
    stream_msgs_received,
    /// A request carried `read_data`.
    read_data_sent,
    /// A request carried `write_data`.
    write_data_sent,
    /// A response's `read_data` was injected.
    read_data_injected,
    /// A response's `write_data` was injected.
    write_data_injected,
    /// A response carried neither `read_data` nor `write_data`.
    empty_response_received,
    /// A response arrived after processing completed.
    spurious_msgs_received,
    /// The filter closed an open side stream.
    streams_closed,
    /// The side stream ended with a non-OK status.
    streams_grpc_error,
    /// The side stream ended with status OK.
    streams_grpc_close,
    /// The filter closed the connection (any reason).
    connections_closed,
    /// The filter reset the connection (CLOSE_RST).
    connections_reset,
    /// A failure was swallowed because of `failure_mode_allow`.
    failure_mode_allowed,
    /// The side stream could not be started.
    stream_open_failures,
    /// A message timer fired.
    message_timeouts,
    /// extproxy only: `read_data` injected after the processor had already ended the read
    /// direction (`end_of_stream`), dropped (Envoy drops it without a trace).
    read_data_dropped_after_eos,
    /// extproxy only: the same for `write_data`.
    write_data_dropped_after_eos,
);
