//! Bootstrap YAML → parse → `--mode validate` (build every cluster and filter chain, bind
//! nothing). Checks: no panic, and every error past the YAML syntax names the field's path.
#![no_main]

use extproxy::config::ConfigError;
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

/// Building filters creates lazily connecting gRPC channels, which need a runtime context.
static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A document that is not a mapping fails as a whole (no field to name).
    let Ok(serde_json::Value::Object(_)) = serde_yaml_ng::from_str::<serde_json::Value>(text) else {
        let _ = extproxy::config::parse(text);
        return;
    };
    let bootstrap = match extproxy::config::parse(text) {
        Ok(b) => b,
        Err(e) => return check_error(&e),
    };
    let _guard = RT.enter();
    if let Err(e) = extproxy::server::validate(&bootstrap, &extproxy::Options::default()) {
        check_error(&e);
    }
});

fn check_error(e: &ConfigError) {
    // An empty key at the document root has no path but the empty one; the message names it.
    let empty_root_key = e.message.starts_with("unknown field ``");
    assert!(!e.path.is_empty() || empty_root_key, "config error without a path: {e:?}");
    assert!(!e.message.is_empty(), "config error without a message: {e:?}");
}
