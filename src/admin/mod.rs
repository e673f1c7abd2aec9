//! The admin endpoint, with Envoy's paths: `/ready`, `/stats`, `/stats/prometheus`,
//! `/listeners`, `/server_info`, `/quitquitquit`. A plain `match` on the path.

use crate::stats::Store;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What admin handlers can see.
#[derive(Debug)]
pub struct AdminState {
    /// All stats.
    pub stats: Store,
    /// `(name, bound address)` of every listener, for `/listeners`.
    pub listeners: Vec<(String, SocketAddr)>,
    /// Cancelled by `POST /quitquitquit`.
    pub shutdown: CancellationToken,
    /// When the server started, for `/server_info`.
    pub started: std::time::Instant,
}

/// Serves admin requests on `socket` until `shutdown`.
pub async fn serve(socket: TcpListener, state: Arc<AdminState>, shutdown: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = socket.accept() => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&state, req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn text(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then_some(v)
    })
}

fn handle(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let query = req.uri().query().unwrap_or("");
    let plain = "text/plain; charset=UTF-8";
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/ready") => {
            if state.shutdown.is_cancelled() {
                text(StatusCode::SERVICE_UNAVAILABLE, plain, "DRAINING\n")
            } else {
                text(StatusCode::OK, plain, "LIVE\n")
            }
        }
        (&Method::GET, "/stats") => {
            let filter = match query_param(query, "filter").map(regex::Regex::new) {
                Some(Ok(re)) => Some(re),
                Some(Err(e)) => return text(StatusCode::BAD_REQUEST, plain, format!("Invalid regex: {e}\n")),
                None => None,
            };
            let used_only = query_param(query, "usedonly").is_some();
            if query_param(query, "format") == Some("json") {
                text(StatusCode::OK, "application/json", state.stats.render_json(filter.as_ref(), used_only))
            } else {
                text(StatusCode::OK, plain, state.stats.render_text(filter.as_ref(), used_only))
            }
        }
        (&Method::GET, "/stats/prometheus") => text(StatusCode::OK, "text/plain; charset=UTF-8", state.stats.render_prometheus()),
        (&Method::GET, "/listeners") => {
            if query_param(query, "format") == Some("json") {
                let statuses: Vec<serde_json::Value> = state
                    .listeners
                    .iter()
                    .map(|(name, addr)| {
                        serde_json::json!({
                            "name": name,
                            "local_address": {"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}},
                        })
                    })
                    .collect();
                text(StatusCode::OK, "application/json", serde_json::json!({"listener_statuses": statuses}).to_string())
            } else {
                let body: String = state.listeners.iter().map(|(n, a)| format!("{n}::{a}\n")).collect();
                text(StatusCode::OK, plain, body)
            }
        }
        (&Method::GET, "/server_info") => {
            let info = serde_json::json!({
                "version": concat!("extproxy/", env!("CARGO_PKG_VERSION")),
                "state": if state.shutdown.is_cancelled() { "DRAINING" } else { "LIVE" },
                "uptime_current_epoch": format!("{}s", state.started.elapsed().as_secs()),
            });
            text(StatusCode::OK, "application/json", info.to_string())
        }
        (&Method::POST, "/quitquitquit") => {
            state.shutdown.cancel();
            text(StatusCode::OK, plain, "OK\n")
        }
        (_, "/quitquitquit") => text(StatusCode::METHOD_NOT_ALLOWED, plain, "This endpoint requires POST\n"),
        _ => text(StatusCode::NOT_FOUND, plain, "invalid path. admin commands are: /ready /stats /stats/prometheus /listeners /server_info /quitquitquit\n"),
    }
}
