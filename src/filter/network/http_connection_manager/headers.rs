//! Envoy's request and response header handling in the HCM, as pure functions over header maps:
//! hop-by-hop removal, `x-forwarded-for` / `x-forwarded-proto`, internal-header cleaning,
//! `x-request-id`, and the `date` / `server` response headers.

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

/// `x-envoy-*` headers only a trusted (internal) peer may send; removed from every request,
/// since no peer is internal by default in Envoy 1.40 (`internal_address_config` is empty).
const ENVOY_INTERNAL_HEADERS: [&str; 16] = [
    "x-envoy-internal",
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-force-trace",
    "x-envoy-ip-tags",
    "x-envoy-original-url",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-external-address",
];

/// Removed from edge requests (`use_remote_address`) only.
const ENVOY_EDGE_HEADERS: [&str; 3] = [
    "x-envoy-decorator-operation",
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
];

/// The request settings of the HCM that shape headers.
#[derive(Debug, Clone)]
pub struct RequestHeaderPolicy {
    /// `use_remote_address`.
    pub use_remote_address: bool,
    /// `xff_num_trusted_hops`.
    pub xff_num_trusted_hops: u32,
    /// `skip_xff_append`.
    pub skip_xff_append: bool,
    /// `generate_request_id`.
    pub generate_request_id: bool,
    /// `preserve_external_request_id`.
    pub preserve_external_request_id: bool,
    /// `route_config.internal_only_headers`.
    pub internal_only_headers: Vec<HeaderName>,
}

/// Removes the request's hop-by-hop headers: `connection` and what it nominates, `keep-alive`,
/// `proxy-connection`, `upgrade`, `transfer-encoding`, `expect` (the HCM answers
/// `100-continue` itself), `host` (the authority lives in the URI) and `te` unless it is
/// `trailers`.
pub fn strip_request_hop_by_hop(headers: &mut HeaderMap) {
    crate::filter::http::router::strip_hop_by_hop(headers);
    let te_trailers = headers.get_all(http::header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    crate::filter::http::router::retain_headers(headers, |n| {
        n != http::header::EXPECT
            && n != http::header::HOST
            && (te_trailers || n != http::header::TE)
    });
    if te_trailers {
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The address Envoy appends to `x-forwarded-for` for loopback peers: the host's first
/// non-loopback address (found once, through the routing table, without sending anything).
fn local_address() -> IpAddr {
    static ADDR: OnceLock<IpAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        std::net::UdpSocket::bind("0.0.0.0:0")
            .and_then(|s| s.connect("192.0.2.255:9").map(|_| s))
            .and_then(|s| s.local_addr())
            .map(|a| a.ip())
            .ok()
            .filter(|ip| !ip.is_unspecified() && !ip.is_loopback())
            .or_else(|| {
                std::net::UdpSocket::bind("0.0.0.0:0")
                    .and_then(|s| s.connect("8.8.8.8:53").map(|_| s))
                    .and_then(|s| s.local_addr())
                    .map(|a| a.ip())
                    .ok()
            })
            .unwrap_or(IpAddr::from([127, 0, 0, 1]))
    })
}

/// Envoy's `mutateRequestHeaders`: `x-forwarded-for`, `x-forwarded-proto`, internal-header
/// cleaning, `x-envoy-external-address` and `x-request-id`, in Envoy's order. `scheme` is the
/// downstream connection's (`https` over TLS).
pub fn mutate_request_headers(
    headers: &mut HeaderMap,
    policy: &RequestHeaderPolicy,
    peer: SocketAddr,
    scheme: &'static str,
) {
    let xff = HeaderName::from_static("x-forwarded-for");
    let mut remote = None;
    if policy.use_remote_address {
        if policy.xff_num_trusted_hops > 0 {
            remote = nth_last_xff(headers, policy.xff_num_trusted_hops as usize - 1);
        }
        if remote.is_none() {
            remote = Some(peer.ip());
        }
        if !policy.skip_xff_append {
            let ip = if peer.ip().is_loopback() {
                local_address()
            } else {
                peer.ip()
            };
            append_xff(headers, &xff, ip);
        }
        if policy.xff_num_trusted_hops == 0 || !headers.contains_key("x-forwarded-proto") {
            headers.insert("x-forwarded-proto", HeaderValue::from_static(scheme));
        }
    }
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", HeaderValue::from_static(scheme));
    }
    let edge = policy.use_remote_address;
    crate::filter::http::router::retain_headers(headers, |n| {
        let n = n.as_str();
        !(ENVOY_INTERNAL_HEADERS.contains(&n)
            || (edge && ENVOY_EDGE_HEADERS.contains(&n))
            || policy.internal_only_headers.iter().any(|h| h.as_str() == n))
    });
    if edge {
        if let Some(ip) = remote {
            if let Ok(v) = HeaderValue::from_str(&ip.to_string()) {
                headers.insert("x-envoy-external-address", v);
            }
        }
    }
    if policy.generate_request_id {
        let keep =
            headers.contains_key("x-request-id") && (!edge || policy.preserve_external_request_id);
        if !keep {
            headers.insert("x-request-id", request_id());
        }
    }
}

/// A random (version 4) UUID for `x-request-id`, from the thread's user-space generator:
/// `Uuid::new_v4` asks the kernel (`getrandom`) for every request; Envoy does not either.
fn request_id() -> HeaderValue {
    let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = id.hyphenated().encode_lower(&mut buf);
    // A hyphenated UUID is ASCII hex and '-': always a valid header value.
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

fn append_xff(headers: &mut HeaderMap, xff: &HeaderName, ip: IpAddr) {
    let ip = ip.to_string();
    match headers.get_mut(xff) {
        Some(v) if !v.is_empty() => {
            let mut joined = v.as_bytes().to_vec();
            joined.push(b',');
            joined.extend_from_slice(ip.as_bytes());
            if let Ok(nv) = HeaderValue::from_bytes(&joined) {
                *v = nv;
            }
        }
        _ => {
            if let Ok(v) = HeaderValue::from_str(&ip) {
                headers.insert(xff.clone(), v);
            }
        }
    }
}

/// The address `n` hops from the right of `x-forwarded-for` (0 = last).
fn nth_last_xff(headers: &HeaderMap, n: usize) -> Option<IpAddr> {
    let v = headers.get("x-forwarded-for")?.to_str().ok()?;
    let parts: Vec<&str> = v.split(',').map(str::trim).collect();
    let i = parts.len().checked_sub(n + 1)?;
    parts.get(i)?.parse().ok()
}

/// Formats a time as an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn http_date(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let wd = WEEKDAYS[days.rem_euclid(7) as usize];
    let mon = MONTHS[(month - 1) as usize];
    format!("{wd}, {day:02} {mon} {year} {h:02}:{m:02}:{s:02} GMT")
}

/// The current `date` header value, formatted at most once per second per thread.
pub fn date_header() -> HeaderValue {
    thread_local! {
        static CACHE: std::cell::RefCell<(u64, HeaderValue)> =
            const { std::cell::RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            if let Ok(v) = HeaderValue::from_str(&http_date(now)) {
                *c = (secs, v);
            }
        }
        c.1.clone()
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn policy(use_remote: bool) -> RequestHeaderPolicy {
        RequestHeaderPolicy {
            use_remote_address: use_remote,
            xff_num_trusted_hops: 0,
            skip_xff_append: false,
            generate_request_id: true,
            preserve_external_request_id: false,
            internal_only_headers: vec![],
        }
    }

    #[test]
    fn http_date_formats_imf_fixdate() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(784_111_777);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_709_251_199);
        assert_eq!(http_date(t), "Thu, 29 Feb 2024 23:59:59 GMT");
    }

    #[test]
    fn without_remote_address_xff_is_kept_and_envoy_headers_cleaned() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-request-id", HeaderValue::from_static("abc"));
        h.insert("x-envoy-retry-on", HeaderValue::from_static("5xx"));
        h.insert("x-envoy-internal", HeaderValue::from_static("true"));
        mutate_request_headers(
            &mut h,
            &policy(false),
            "10.1.1.1:5".parse().unwrap(),
            "http",
        );
        assert_eq!(h["x-forwarded-for"], "1.2.3.4");
        assert_eq!(h["x-request-id"], "abc");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(h.get("x-envoy-retry-on").is_none() && h.get("x-envoy-internal").is_none());
    }

    #[test]
    fn edge_requests_append_xff_and_regenerate_the_request_id() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert("x-request-id", HeaderValue::from_static("abc"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        mutate_request_headers(&mut h, &policy(true), "10.1.1.1:5".parse().unwrap(), "http");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1,10.1.1.1");
        assert_eq!(h["x-envoy-external-address"], "10.1.1.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_ne!(h["x-request-id"], "abc");
        assert_eq!(h["x-request-id"].len(), 36);
        let id = uuid::Uuid::parse_str(h["x-request-id"].to_str().unwrap()).unwrap();
        assert_eq!(id.get_version(), Some(uuid::Version::Random));
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        assert_ne!(request_id(), request_id());
    }

    #[test]
    fn te_survives_only_as_trailers() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive, x-foo"));
        h.insert("x-foo", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers, deflate"));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        strip_request_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["te"], "trailers");
    }
}
