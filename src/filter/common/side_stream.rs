//! Opening an ext_proc side stream the way Envoy's gRPC client does.

use crate::config::core::GrpcService;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;
use tonic::metadata::{AsciiMetadataValue, MetadataMap, MetadataValue};

/// Wraps the outbound message stream of a side stream in a `tonic::Request` carrying Envoy's
/// side-stream headers: the configured `initial_metadata`, `x-envoy-internal: true` and
/// `x-forwarded-for: <local address>` (unless `skip_envoy_headers`), and `grpc-timeout` when the
/// service has a `timeout`.
pub fn request<T>(
    messages: T,
    service: &GrpcService,
    local: Option<SocketAddr>,
) -> tonic::Request<T> {
    Headers::new(service).request(messages, local)
}

/// A service's side-stream headers, parsed once (at config-build time) and copied into each
/// side stream's request: per stream only `x-forwarded-for` is built, and only when the local
/// address differs from the first one seen (the listener's, in practice).
#[derive(Debug, Clone)]
pub struct Headers {
    /// `x-envoy-internal` (unless `skip_envoy_headers`); `x-forwarded-for` goes after it.
    head: MetadataMap,
    /// The `initial_metadata`, after `x-forwarded-for`.
    tail: MetadataMap,
    /// Add `x-forwarded-for`.
    forwarded_for: bool,
    /// `x-forwarded-for` of the first local address seen.
    cached_ip: OnceLock<(IpAddr, AsciiMetadataValue)>,
    /// `grpc-timeout`.
    timeout: Option<Duration>,
}

impl Headers {
    /// Parses the headers of `service`.
    pub fn new(service: &GrpcService) -> Headers {
        let skip = service
            .envoy_grpc
            .as_ref()
            .is_some_and(|g| g.skip_envoy_headers);
        let mut head = MetadataMap::new();
        if !skip {
            head.insert("x-envoy-internal", MetadataValue::from_static("true"));
        }
        let mut tail = MetadataMap::new();
        for h in &service.initial_metadata {
            let key = h.key.to_ascii_lowercase();
            if key.ends_with("-bin") {
                if let Ok(k) = tonic::metadata::BinaryMetadataKey::from_bytes(key.as_bytes()) {
                    tail.append_bin(
                        k,
                        tonic::metadata::BinaryMetadataValue::from_bytes(h.bytes()),
                    );
                }
            } else if let (Ok(k), Ok(v)) = (
                tonic::metadata::AsciiMetadataKey::from_bytes(key.as_bytes()),
                AsciiMetadataValue::try_from(h.bytes()),
            ) {
                tail.append(k, v);
            }
        }
        Headers {
            head,
            tail,
            forwarded_for: !skip,
            cached_ip: OnceLock::new(),
            timeout: service.timeout.map(|t| t.get()).filter(|t| !t.is_zero()),
        }
    }

    /// The request of one side stream.
    pub fn request<T>(&self, messages: T, local: Option<SocketAddr>) -> tonic::Request<T> {
        let mut md = self.head.clone();
        if let (true, Some(ip)) = (self.forwarded_for, local.map(|a| a.ip())) {
            let value = |ip: IpAddr| ip.to_string().parse::<AsciiMetadataValue>().ok();
            let cached = self.cached_ip.get().or_else(|| {
                let v = value(ip)?;
                Some(self.cached_ip.get_or_init(|| (ip, v)))
            });
            match cached {
                Some((c, v)) if *c == ip => {
                    md.insert("x-forwarded-for", v.clone());
                }
                _ => {
                    if let Some(v) = value(ip) {
                        md.insert("x-forwarded-for", v);
                    }
                }
            }
        }
        if !self.tail.is_empty() {
            let mut map = md.into_headers();
            for (k, v) in self.tail.as_ref() {
                map.append(k.clone(), v.clone());
            }
            md = MetadataMap::from_headers(map);
        }
        let mut req = tonic::Request::from_parts(md, tonic::Extensions::new(), messages);
        if let Some(t) = self.timeout {
            req.set_timeout(t);
        }
        req
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(yaml: &str) -> GrpcService {
        serde_yaml_ng::from_str(yaml).expect("valid GrpcService")
    }

    fn names(req: &tonic::Request<()>) -> Vec<(String, String)> {
        req.metadata()
            .as_ref()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn envoy_headers_then_initial_metadata_in_order() {
        let s = service(
            "envoy_grpc: {cluster_name: proc}\ntimeout: 2s\ninitial_metadata: [{key: X-A, value: '1'}, {key: x-b-bin, value: 'hi'}]",
        );
        let local: SocketAddr = "127.0.0.2:80".parse().expect("addr");
        let h = Headers::new(&s);
        let cold = names(&h.request((), Some(local)));
        let warm = h.request((), Some(local));
        assert_eq!(cold, names(&warm));
        assert_eq!(
            cold.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            [
                "x-envoy-internal",
                "x-forwarded-for",
                "x-a",
                "x-b-bin",
                "grpc-timeout"
            ]
        );
        assert_eq!(cold[1].1, "127.0.0.2");
        // A different local address than the cached one.
        let other: SocketAddr = "127.0.0.3:80".parse().expect("addr");
        assert_eq!(names(&h.request((), Some(other)))[1].1, "127.0.0.3");
    }

    #[test]
    fn skip_envoy_headers() {
        let s = service("envoy_grpc: {cluster_name: proc, skip_envoy_headers: true}");
        let req = Headers::new(&s).request((), Some("127.0.0.1:1".parse().expect("addr")));
        assert!(names(&req).is_empty());
    }
}
