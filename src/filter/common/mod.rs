//! Pieces shared by the HTTP and network ext_proc filters.
//!
//! - [`side_stream`]: opening a side stream with Envoy's headers.
//! - [`metadata`]: dynamic metadata by namespace (what `metadata_options` reads and writes).
//! - [`attributes`]: the connection attribute paths of Envoy's CEL vocabulary.

pub mod attributes;
pub mod metadata;
pub mod side_stream;
pub mod string_matcher;
