//! Ready-made processors: the logic behind `examples/`, reusable as is (e.g. by a proxy's demo).
//!
//! | Processor | Kind | What it does |
//! |-----------|------|--------------|
//! | [`AddHeaders`] | HTTP | request gets `x-ext-proc-header: hello-to-asm`, response `hello-from-asm` |

mod add_headers;

pub use add_headers::AddHeaders;
