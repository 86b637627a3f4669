//! `botserver plugin run` and `inspect` against the example and hostile
//! plugins, through the real binary.

mod support;

use support::{Route, TestServer, run_plugin, stderr, stdout};

const GRANT_MISSING: i32 = 3;
const LIMIT: i32 = 4;
const DENIED: i32 = 5;

#[test]
fn echo_replies_with_its_input() {
    let output = run_plugin("echo", &["--message", "hello, bot"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "hello, bot\n");
}

#[test]
fn counter_counts_across_runs_with_kv_dir() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let kv_dir = dir.path().to_string_lossy().into_owned();
    for expected in ["1", "2", "3"] {
        let output = run_plugin(
            "counter",
            &["--message", "+1", "--grant", "kv", "--kv-dir", &kv_dir],
        );
        assert!(output.status.success(), "{}", stderr(&output));
        assert_eq!(stdout(&output).trim(), expected);
    }
    // Another user has a counter of their own.
    let other = run_plugin(
        "counter",
        &[
            "--message",
            "+1",
            "--grant",
            "kv",
            "--kv-dir",
            &kv_dir,
            "--user",
            "someone-else",
        ],
    );
    assert_eq!(stdout(&other).trim(), "1");
}

#[test]
fn counter_without_kv_grant_fails_to_load() {
    let output = run_plugin("counter", &["--message", "+1"]);
    assert_eq!(output.status.code(), Some(GRANT_MISSING));
    let message = stderr(&output);
    assert!(message.contains("missing grant for `kv`"), "{message}");
}

#[test]
fn all_capabilities_names_every_missing_grant() {
    let output = run_plugin("all-capabilities", &["--message", "x", "--grant", "config"]);
    assert_eq!(output.status.code(), Some(GRANT_MISSING));
    let message = stderr(&output);
    assert!(
        message.contains("missing grants for `kv`, `http`, `secrets`"),
        "{message}"
    );
}

#[test]
fn unknown_import_is_rejected_by_name() {
    let output = run_plugin("unknown-import", &["--message", "x"]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains("unknown import `acme:telemetry/upload@1.0.0`"),
        "{message}"
    );
}

#[test]
fn non_binary_files_are_rejected_without_echoing_them() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let cases = [
        ("text.wat", "(component) ;; api_key=TOPSECRETFILE\n"),
        ("secrets.env", "api_key=TOPSECRETFILE\n"),
        ("empty.wasm", ""),
        ("core.wasm", "\0asm\u{1}\0\0\0"),
    ];
    for (name, content) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap_or_else(|e| panic!("write: {e}"));
        let output = support::botserver(&["plugin", "inspect", &path.to_string_lossy()]);
        assert_eq!(output.status.code(), Some(1), "{name}");
        let message = stderr(&output);
        assert!(!message.contains("TOPSECRETFILE"), "{name}: {message}");
        assert_eq!(message.lines().count(), 1, "{name}: {message}");
    }
}

#[test]
fn inspect_lists_requested_capabilities() {
    let path = support::plugin("counter");
    let output = support::botserver(&["plugin", "inspect", &path.to_string_lossy()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("capabilities: kv\n"), "{text}");
    assert!(text.contains("wit version:  botserver:bot@0.1.0"), "{text}");
    assert!(text.contains("digest:       sha256:"), "{text}");
}

#[test]
fn spin_loop_runs_out_of_fuel_at_default_limits() {
    let output = run_plugin("spin-loop", &["--message", "x"]);
    assert_eq!(output.status.code(), Some(LIMIT));
    let message = stderr(&output);
    assert!(message.contains("out of fuel"), "{message}");
}

#[test]
fn spin_loop_hits_deadline_with_unlimited_fuel() {
    let output = run_plugin(
        "spin-loop",
        &[
            "--message",
            "x",
            "--fuel",
            "10000000000000",
            "--timeout-ms",
            "200",
        ],
    );
    assert_eq!(output.status.code(), Some(LIMIT));
    let message = stderr(&output);
    assert!(message.contains("deadline exceeded"), "{message}");
}

#[test]
fn memory_bomb_stops_at_memory_cap() {
    let output = run_plugin("memory-bomb", &["--message", "x", "--fuel", "10000000000"]);
    assert_eq!(output.status.code(), Some(LIMIT));
    let message = stderr(&output);
    assert!(message.contains("memory limit reached"), "{message}");
}

#[test]
fn deep_recursion_is_reported_as_a_trap() {
    let output = run_plugin(
        "deep-recursion",
        &["--message", "x", "--fuel", "10000000000"],
    );
    assert_eq!(output.status.code(), Some(LIMIT));
    let message = stderr(&output);
    assert!(
        message.contains("stack overflow") || message.contains("plugin trapped"),
        "{message}"
    );
}

#[test]
fn huge_reply_is_rejected_by_host_call_cap() {
    let output = run_plugin("huge-reply", &["--message", "x", "--fuel", "10000000000"]);
    assert_eq!(output.status.code(), Some(LIMIT));
    let message = stderr(&output);
    assert!(message.contains("host call limit reached"), "{message}");
    assert!(stdout(&output).is_empty());
}

#[test]
fn secrets_demo_reveals_only_granted_names() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let file = dir.path().join("secrets.env");
    std::fs::write(&file, "API_KEY=canary-value-7f3a\n").unwrap_or_else(|e| panic!("write: {e}"));
    let file = file.to_string_lossy().into_owned();

    // Trace logging on, so that any log line carrying the value would show.
    let granted = support::run_plugin_logged(
        "secrets-demo",
        &[
            "--message",
            "x",
            "--grant",
            "secrets=API_KEY",
            "--secrets-file",
            &file,
        ],
        "trace",
    );
    assert!(granted.status.success(), "{}", stderr(&granted));
    assert_eq!(stdout(&granted).trim(), "API_KEY is set (17 characters)");
    assert!(stderr(&granted).contains("plugin revealed a secret"));
    assert!(!stderr(&granted).contains("canary-value"));

    let other_name = run_plugin(
        "secrets-demo",
        &[
            "--message",
            "x",
            "--grant",
            "secrets=OTHER",
            "--secrets-file",
            &file,
        ],
    );
    assert_eq!(
        other_name.status.code(),
        Some(DENIED),
        "{}",
        stderr(&other_name)
    );
    assert!(stderr(&other_name).contains("secret `API_KEY` is not in the `secrets` grant"));
    assert!(!stdout(&other_name).contains("canary-value"));
}

fn fetch(url: &str, grants: &[&str]) -> std::process::Output {
    let mut args = vec!["--message", url];
    for grant in grants {
        args.extend_from_slice(&["--grant", grant]);
    }
    run_plugin("http-fetch", &args)
}

#[test]
fn http_fetch_reaches_exactly_the_granted_origin() {
    let server = TestServer::start(vec![("/", Route::Body("hello world".into()))]);
    let grant = format!("http={}", server.origin());
    let output = fetch(&format!("{}/", server.origin()), &[&grant]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).trim(), "status 200, 11 bytes");
    assert_eq!(server.connections(), 1);
}

#[test]
fn http_fetch_is_denied_without_http_grant() {
    let server = TestServer::start(vec![("/", Route::Body("hello".into()))]);
    let output = fetch(&format!("{}/", server.origin()), &["http"]);
    assert_eq!(output.status.code(), Some(DENIED), "{}", stderr(&output));
    assert_eq!(server.connections(), 0);
}

#[test]
fn http_fetch_denies_every_address_trick() {
    let server = TestServer::start(vec![("/", Route::Body("hello".into()))]);
    let other = TestServer::start(vec![("/", Route::Body("other".into()))]);
    let port = server.addr.port();
    let grant = format!("http={}", server.origin());
    let targets = [
        format!("http://127.0.0.1:{}/", other.addr.port()),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        format!("http://10.0.0.1:{port}/"),
        format!("http://[::1]:{port}/"),
        format!("http://2130706433:{port}/"),
        format!("http://0x7f000001:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://127.0.0.1:{port}@169.254.169.254/"),
        format!("https://127.0.0.1:{port}/"),
    ];
    for target in &targets {
        let output = fetch(target, &[&grant]);
        assert_ne!(output.status.code(), Some(0), "{target} was allowed");
        assert!(
            output.status.code() == Some(DENIED) || output.status.code() == Some(6),
            "{target}: {}",
            stderr(&output)
        );
    }
    assert_eq!(server.connections(), 0, "paths: {:?}", server.paths());
    assert_eq!(other.connections(), 0);
}

#[test]
fn http_fetch_denies_a_hostname_that_resolves_to_loopback() {
    let server = TestServer::start(vec![("/", Route::Body("hello".into()))]);
    let origin = format!("http://localhost:{}", server.addr.port());
    let output = fetch(&format!("{origin}/"), &[&format!("http={origin}")]);
    assert_eq!(output.status.code(), Some(DENIED), "{}", stderr(&output));
    assert!(stderr(&output).contains("resolves only to non-public addresses"));
    assert_eq!(server.connections(), 0);
}

#[test]
fn http_fetch_checks_each_redirect_again() {
    let other = TestServer::start(vec![("/", Route::Body("other".into()))]);
    let server = TestServer::start(vec![
        ("/away", Route::Redirect(format!("{}/", other.origin()))),
        ("/here", Route::Redirect("/final".into())),
        ("/final", Route::Body("done".into())),
    ]);
    let grant = format!("http={}", server.origin());

    let allowed = fetch(&format!("{}/here", server.origin()), &[&grant]);
    assert!(allowed.status.success(), "{}", stderr(&allowed));
    assert_eq!(stdout(&allowed).trim(), "status 200, 4 bytes");

    let output = fetch(&format!("{}/away", server.origin()), &[&grant]);
    assert_eq!(output.status.code(), Some(DENIED), "{}", stderr(&output));
    assert_eq!(other.connections(), 0);
}
