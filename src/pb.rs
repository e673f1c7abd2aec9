//! The ext_proc service messages as the proxy sends and receives them: generated at build time
//! (`build.rs`) from the `.proto` files of the `envoy-types` package, with `bytes::Bytes` for
//! body fields (`HttpBody.body`, `BodyMutation.body`, `StreamedBodyResponse.body`,
//! `network_ext_proc Data.data`, ...), so a body chunk is sliced, never copied into a `Vec`, on
//! its way to the processor and back. Nested types (header maps, metadata, processing modes) are
//! `envoy-types`'s own; the wire format is the same as `envoy-types`'s messages.

/// `envoy.service.ext_proc.v3`.
#[allow(missing_docs, clippy::all)]
pub mod ext_proc {
    include!(concat!(env!("OUT_DIR"), "/envoy.service.ext_proc.v3.rs"));
}

/// `envoy.service.network_ext_proc.v3`.
#[allow(missing_docs, clippy::all)]
pub mod network_ext_proc {
    include!(concat!(
        env!("OUT_DIR"),
        "/envoy.service.network_ext_proc.v3.rs"
    ));
}
