//! Opening an ext_proc side stream the way Envoy's gRPC client does.

use crate::config::core::GrpcService;
use std::net::SocketAddr;

/// Wraps the outbound message stream of a side stream in a `tonic::Request` carrying Envoy's
/// side-stream headers: the configured `initial_metadata`, `x-envoy-internal: true` and
/// `x-forwarded-for: <local address>` (unless `skip_envoy_headers`), and `grpc-timeout` when the
/// service has a `timeout`.
pub fn request<T>(messages: T, service: &GrpcService, local: Option<SocketAddr>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(messages);
    let skip = service.envoy_grpc.as_ref().is_some_and(|g| g.skip_envoy_headers);
    let md = req.metadata_mut();
    if !skip {
        md.insert("x-envoy-internal", tonic::metadata::MetadataValue::from_static("true"));
        if let Some(ip) = local.map(|a| a.ip().to_string()) {
            if let Ok(v) = ip.parse() {
                md.insert("x-forwarded-for", v);
            }
        }
    }
    for h in &service.initial_metadata {
        let key = h.key.to_ascii_lowercase();
        if key.ends_with("-bin") {
            if let Ok(k) = tonic::metadata::BinaryMetadataKey::from_bytes(key.as_bytes()) {
                md.append_bin(k, tonic::metadata::BinaryMetadataValue::from_bytes(h.bytes()));
            }
        } else if let (Ok(k), Ok(v)) = (
            tonic::metadata::AsciiMetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::AsciiMetadataValue::try_from(h.bytes()),
        ) {
            md.append(k, v);
        }
    }
    if let Some(t) = service.timeout.filter(|t| !t.get().is_zero()) {
        req.set_timeout(t.get());
    }
    req
}
