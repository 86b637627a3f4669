//! The real binary: bootstrap from stdin, JSON logs, production key
//! checks, and no acknowledged write lost to SIGKILL.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::both_backends;
use crate::harness::{self, Backend, REDIS_URL};

both_backends!(
    acknowledged_writes_survive_sigkill,
    keys_rotate_while_serving
);

const BINARY: &str = env!("CARGO_BIN_EXE_botserver");
const PASSWORD: &str = "binary admin password 1";

/// Returns a private copy of the binary, checked to have the server
/// commands. Builds share one target directory, so a later `cargo build`
/// without the `server` feature can replace the file these tests were
/// compiled for. The copy keeps a run consistent.
fn server_binary() -> &'static std::path::Path {
    static COPY: std::sync::OnceLock<(tempfile::TempDir, std::path::PathBuf)> =
        std::sync::OnceLock::new();
    let (_, path) = COPY.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("botserver");
        std::fs::copy(BINARY, &path).unwrap();
        let help = Command::new(&path)
            .args(["serve", "--help"])
            .output()
            .unwrap();
        assert!(
            help.status.success(),
            "`{BINARY}` has no `serve` command: it was rebuilt without the `server` feature"
        );
        (dir, path)
    });
    path
}

/// Data directory and environment for one run of the binary.
struct Deployment {
    data_dir: tempfile::TempDir,
    env: HashMap<&'static str, String>,
    pg_database: Option<String>,
}

impl Deployment {
    async fn new(backend: Backend) -> Self {
        let mut env = HashMap::new();
        let mut pg_database = None;
        if backend == Backend::Postgres {
            let (name, url) = harness::create_pg_database().await;
            env.insert("DATABASE_URL", url);
            env.insert("BOTSERVER_REDIS_URL", REDIS_URL.to_owned());
            env.insert(
                "BOTSERVER_REDIS_KEY_PREFIX",
                format!("bs-test-{}:", uuid::Uuid::new_v4().simple()),
            );
            pg_database = Some(name);
        }
        Self {
            data_dir: tempfile::tempdir().unwrap(),
            env,
            pg_database,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(server_binary());
        command
            .args(args)
            .arg("--data-dir")
            .arg(self.data_dir.path().join("data"));
        for name in [
            "DATABASE_URL",
            "BOTSERVER_REDIS_URL",
            "BOTSERVER_ENV",
            "RUST_LOG",
        ] {
            command.env_remove(name);
        }
        command.envs(&self.env);
        command
    }

    fn bootstrap(&self) {
        let mut child = self
            .command(&[
                "admin",
                "bootstrap",
                "--tenant",
                "tenant-a",
                "--username",
                "root",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{PASSWORD}\n").as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "bootstrap failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Starts `serve` on a free port and returns the child and base URL.
    /// Also returns the log lines printed before the address.
    fn serve(&self) -> (Child, String, mpsc::Receiver<String>, Vec<String>) {
        let mut child = self
            .command(&["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (lines, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Keep draining after the receiver is gone, so the server
                // never writes into a closed pipe.
                let _ = lines.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut early = Vec::new();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = receiver.recv_timeout(remaining) else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("server did not report its address in time: {early:?}");
            };
            if let Some(address) = line.strip_prefix("botserver listening on ") {
                return (child, address.trim().to_owned(), receiver, early);
            }
            early.push(line);
        }
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        if let Some(name) = self.pg_database.take() {
            harness::drop_pg_database(&name);
        }
        if let Some(prefix) = self.env.get("BOTSERVER_REDIS_KEY_PREFIX") {
            harness::drop_redis_prefix(prefix);
        }
    }
}

async fn login(client: &reqwest::Client, base: &str) -> String {
    let body = json!({"tenant": "tenant-a", "username": "root", "password": PASSWORD});
    let response = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let tokens: serde_json::Value = response.json().await.unwrap();
    harness::access(&tokens)
}

async fn acknowledged_writes_survive_sigkill(backend: Backend) {
    let deployment = Deployment::new(backend).await;
    deployment.bootstrap();
    let (mut child, base, logs, early_logs) = deployment.serve();
    let client = reqwest::Client::new();
    let token = login(&client, &base).await;

    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut writers = Vec::new();
    for writer in 0..8 {
        let (client, base, token) = (client.clone(), base.clone(), token.clone());
        let acknowledged = Arc::clone(&acknowledged);
        writers.push(tokio::spawn(async move {
            for index in 0..1000 {
                let name = format!("burst-{writer}-{index}");
                let sent = client
                    .post(format!("{base}/api/v1/tenants"))
                    .bearer_auth(&token)
                    .json(&json!({"name": name}))
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status().is_success() => {
                        acknowledged.lock().unwrap().push(name)
                    }
                    Ok(response) => panic!("write failed with {}", response.status()),
                    Err(_) => return,
                }
            }
        }));
    }
    let enough = harness::eventually(Duration::from_secs(60), || {
        let acknowledged = Arc::clone(&acknowledged);
        async move { acknowledged.lock().unwrap().len() >= 40 }
    })
    .await;
    assert!(enough, "the burst did not get going");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for writer in writers {
        writer.await.unwrap();
    }

    // The JSON log format was in force: every record parses.
    let records: Vec<String> = early_logs.into_iter().chain(logs.try_iter()).collect();
    assert!(records.iter().any(|line| line.contains("server listening")));
    for line in records.iter().filter(|line| line.starts_with('{')) {
        serde_json::from_str::<serde_json::Value>(line).expect("JSON log record");
    }

    let (mut child, base, _, _) = deployment.serve();
    let token = login(&client, &base).await;
    let response = client
        .get(format!("{base}/api/v1/tenants"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let tenants: Vec<serde_json::Value> = response.json().await.unwrap();
    let stored: std::collections::HashSet<&str> =
        tenants.iter().filter_map(|t| t["name"].as_str()).collect();
    let acknowledged = acknowledged.lock().unwrap().clone();
    for name in &acknowledged {
        assert!(
            stored.contains(name.as_str()),
            "acknowledged tenant `{name}` lost"
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn production_mode_refuses_missing_keys() {
    let data_dir = tempfile::tempdir().unwrap();
    let output = Command::new(server_binary())
        .args(["serve", "--production", "--data-dir"])
        .arg(data_dir.path())
        .env_remove("DATABASE_ENCRYPTION_KEY")
        .env_remove("BOTSERVER_ENCRYPTION_KEY")
        .env_remove("BOTSERVER_JWT_KEY")
        .env_remove("BOTSERVER_JWT_SECRET")
        .env("BOTSERVER_SESSION_TIMEOUT", "soon")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "invalid `BOTSERVER_SESSION_TIMEOUT`",
        "missing `DATABASE_ENCRYPTION_KEY` or `BOTSERVER_ENCRYPTION_KEY`",
        "missing `BOTSERVER_JWT_KEY`",
        "missing `BOTSERVER_JWT_SECRET`",
    ] {
        assert!(stderr.contains(expected), "`{expected}` not in:\n{stderr}");
    }
    assert_eq!(
        std::fs::read_dir(data_dir.path()).unwrap().count(),
        0,
        "no key was generated"
    );
}

#[test]
fn migrate_creates_private_data_dir() {
    use std::os::unix::fs::PermissionsExt as _;
    let parent = tempfile::tempdir().unwrap();
    let data_dir = parent.path().join("data");
    let output = Command::new(server_binary())
        .args(["migrate", "--data-dir"])
        .arg(&data_dir)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data_dir), 0o700);
    assert_eq!(mode(&data_dir.join("botserver.sqlite3")), 0o600);
}

#[test]
fn bootstrap_rejects_empty_password() {
    let data_dir = tempfile::tempdir().unwrap();
    let output = Command::new(server_binary())
        .args([
            "admin",
            "bootstrap",
            "--tenant",
            "t",
            "--username",
            "root",
            "--data-dir",
        ])
        .arg(data_dir.path())
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("missing password"));
}

async fn keys_rotate_while_serving(backend: Backend) {
    let deployment = Deployment::new(backend).await;
    deployment.bootstrap();
    let (mut child, base, _, _) = deployment.serve();
    let client = reqwest::Client::new();
    let token = login(&client, &base).await;
    let users = format!("{base}/api/v1/tenants/tenant-a/users");
    let create = |name: &'static str| {
        let body = json!({"username": name, "password": format!("{name} password 123"),
                          "email": format!("{name}@rotate.test")});
        client.post(&users).bearer_auth(&token).json(&body).send()
    };
    let before: serde_json::Value = create("mona").await.unwrap().json().await.unwrap();

    let output = deployment.command(&["keys", "rotate"]).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = String::from_utf8_lossy(&output.stderr);
    assert!(
        report.contains("1 tenants got a new data key version"),
        "{report}"
    );

    // The running server reads values sealed before the rotation, and keeps
    // sealing new ones.
    let read = client
        .get(format!("{users}/{}", before["id"].as_str().unwrap()))
        .bearer_auth(&token)
        .send();
    let read: serde_json::Value = read.await.unwrap().json().await.unwrap();
    assert_eq!(read["email"], "mona@rotate.test");
    let after = create("nina").await.unwrap();
    assert_eq!(after.status(), StatusCode::CREATED);
    child.kill().unwrap();
    child.wait().unwrap();
}
