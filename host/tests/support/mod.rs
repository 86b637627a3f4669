//! Shared helpers for the integration tests: paths to the built plugins, the
//! `botserver` binary, and a small HTTP server on loopback.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Returns the cargo target directory these tests were built into.
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    // The test binary lives in `<target>/<profile>/deps/`.
    let exe = std::env::current_exe().unwrap_or_default();
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Path of a built plugin component, `target/plugins/<name>.wasm`.
///
/// When the plugins have not been built yet, builds them once with
/// `scripts/build-plugins` into a separate cargo target directory, so that
/// the nested cargo does not wait for the lock of the one running the tests.
pub fn plugin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let plugins = target_dir().join("plugins");
    let path = plugins.join(format!("{name}.wasm"));
    if path.exists() {
        return path;
    }
    let built = BUILT.get_or_init(|| {
        let status = Command::new(workspace_root().join("scripts/build-plugins"))
            .env("CARGO_TARGET_DIR", target_dir().join("plugin-build"))
            .env("BOTSERVER_PLUGIN_DIR", &plugins)
            .status()
            .map_err(|error| format!("failed to run scripts/build-plugins: {error}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("scripts/build-plugins failed with {status}"))
        }
    });
    if let Err(error) = built {
        panic!("{error}; build the plugins with `scripts/build-plugins` and rerun the tests");
    }
    assert!(
        path.exists(),
        "plugin `{name}` was not built to {}",
        path.display()
    );
    path
}

/// Runs `botserver` with `args` and returns its output.
pub fn botserver(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_botserver"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap_or_else(|error| panic!("failed to start botserver: {error}"))
}

/// Runs `botserver plugin run <plugin> <args...>`.
pub fn run_plugin(name: &str, args: &[&str]) -> Output {
    run_plugin_logged(name, args, "warn")
}

/// Runs `botserver plugin run` with `RUST_LOG` set to `filter`.
pub fn run_plugin_logged(name: &str, args: &[&str], filter: &str) -> Output {
    let path = plugin(name);
    let path = path.to_string_lossy().into_owned();
    let mut all = vec!["plugin", "run", path.as_str()];
    all.extend_from_slice(args);
    Command::new(env!("CARGO_BIN_EXE_botserver"))
        .args(&all)
        .env("RUST_LOG", filter)
        .output()
        .unwrap_or_else(|error| panic!("failed to start botserver: {error}"))
}

/// Standard output as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Standard error as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A response the test server sends for a path.
#[derive(Clone, Debug)]
pub enum Route {
    /// `200 OK` with this body.
    Body(String),
    /// `302 Found` to this location.
    Redirect(String),
}

/// An HTTP/1.1 server on 127.0.0.1 that serves each request from a fixed
/// route table and counts the connections it accepted.
pub struct TestServer {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    paths: Arc<Mutex<Vec<String>>>,
}

impl TestServer {
    /// Starts the server on a free port.
    pub fn start(routes: Vec<(&str, Route)>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local_addr: {e}"));
        let connections = Arc::new(AtomicUsize::new(0));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let routes: Vec<(String, Route)> = routes
            .into_iter()
            .map(|(path, route)| (path.to_owned(), route))
            .collect();
        let (counter, seen) = (Arc::clone(&connections), Arc::clone(&paths));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                let mut reader = BufReader::new(match stream.try_clone() {
                    Ok(clone) => clone,
                    Err(_) => continue,
                });
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let mut header = String::new();
                while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                    header.clear();
                }
                let path = request_line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .to_owned();
                if let Ok(mut seen) = seen.lock() {
                    seen.push(path.clone());
                }
                let response = match routes.iter().find(|(p, _)| *p == path).map(|(_, r)| r) {
                    Some(Route::Body(body)) => format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                    Some(Route::Redirect(location)) => format!(
                        "HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    ),
                    None => {
                        "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                            .to_owned()
                    }
                };
                let _ = stream.write_all(response.as_bytes());
            }
        });
        Self {
            addr,
            connections,
            paths,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Request paths seen so far.
    pub fn paths(&self) -> Vec<String> {
        self.paths.lock().map(|p| p.clone()).unwrap_or_default()
    }
}
