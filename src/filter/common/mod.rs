//! Pieces shared by the HTTP and network ext_proc filters.

pub mod side_stream;
