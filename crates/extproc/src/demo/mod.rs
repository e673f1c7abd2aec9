//! Ready-made processors: the logic behind `examples/`, reusable as is (e.g. by a proxy's demo).
//!
//! | Processor | Kind | What it does | Filter config it expects |
//! |-----------|------|--------------|--------------------------|
//! | [`AddHeaders`] | HTTP | request gets `x-ext-proc-header: hello-to-asm`, response `hello-from-asm` | default mode |
//! | [`AuthGate`] | HTTP | 401 unless `authorization: Bearer <token>` with a known token | default mode |
//! | [`RedactBody`] | HTTP | masks card-number-like digit runs in bodies, fixes `content-length` | `BUFFERED` bodies |
//! | [`StreamingUpper`] | HTTP | upper-cases body chunks as they pass | `STREAMED` or `FULL_DUPLEX_STREAMED` |
//! | [`TcpInspect`] | network | resets a connection whose first line matches a deny rule | default (`STREAMED`) |

mod add_headers;
mod auth_gate;
mod redact_body;
mod streaming_upper;
mod tcp_inspect;

pub use add_headers::AddHeaders;
pub use auth_gate::AuthGate;
pub use redact_body::{mask_card_numbers, RedactBody};
pub use streaming_upper::StreamingUpper;
pub use tcp_inspect::{TcpInspect, MAX_FIRST_LINE};
