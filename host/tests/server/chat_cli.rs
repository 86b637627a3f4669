//! `botserver chat` end to end: the real binary against a test server, with
//! the password and the messages on stdin.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use botserver::auth::Role;
use botserver::cli::demo::{self, DemoSources, knowledge};
use botserver::storage::UserId;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::both_backends;
use crate::harness::{Backend, TestServer};
use crate::support::plugin;

both_backends!(
    chat_prints_replies_in_order,
    chat_picks_numbered_suggestions,
    chat_rejects_wrong_password,
    chat_rejects_unknown_and_disabled_bots,
    chat_reports_close_when_session_ends,
);

const USER_PASSWORD: &str = "chat user password 1";

/// Exit codes of `botserver chat` (`botserver::cli::exit`).
const EXIT_REJECTED: i32 = 7;
const EXIT_DISCONNECTED: i32 = 8;

/// Maximum time one run of the command may take before the test fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The greeting of the echo plugin.
const ECHO_GREETING: &str = "Hello! I repeat what you send me.";

struct Setup {
    server: TestServer,
    user: UserId,
}

/// Starts a server with user `alice` in `tenant-a` and two echo bots:
/// `echo`, enabled, and `echo-off`, disabled.
async fn setup(backend: Backend) -> Setup {
    let server = TestServer::start(backend).await;
    let (tenant, root) = server.bootstrap().await;
    let user = server
        .create_user(&tenant, "alice", USER_PASSWORD, Role::User)
        .await;

    let bytes = std::fs::read(plugin("echo")).unwrap();
    let response = server
        .client
        .post(format!(
            "{}/api/v1/tenants/tenant-a/plugins?name=echo&version=1.0.0",
            server.base
        ))
        .bearer_auth(&root)
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let uploaded: Value = response.json().await.unwrap();
    let digest = uploaded["digest"].as_str().unwrap();
    for (name, enabled) in [("echo", true), ("echo-off", false)] {
        let bot = json!({"name": name, "plugin_digest": digest, "enabled": enabled});
        let (status, body) = server
            .json(
                Method::POST,
                "/api/v1/tenants/tenant-a/bots",
                Some(&root),
                Some(bot),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    Setup { server, user }
}

/// Who signs in: tenant, username and the password written to stdin.
#[derive(Clone, Copy)]
struct Account<'a> {
    tenant: &'a str,
    username: &'a str,
    password: &'a str,
}

/// User `alice` of `tenant-a`, as [`setup`] creates her.
const ALICE: Account<'static> = Account {
    tenant: "tenant-a",
    username: "alice",
    password: USER_PASSWORD,
};

/// Starts `botserver chat` with piped stdin, stdout and stderr, and writes
/// the password.
fn spawn_chat(server: &TestServer, account: Account<'_>, bot: &str) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_botserver"))
        .args(["chat", "--url", &server.base, "--tenant", account.tenant])
        .args(["--username", account.username, "--bot", bot])
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("failed to start botserver: {error}"));
    write_line(&mut child, account.password);
    child
}

fn write_line(child: &mut Child, line: &str) {
    let stdin = child.stdin.as_mut().expect("stdin is piped");
    writeln!(stdin, "{line}").unwrap();
    stdin.flush().unwrap();
}

/// The result of one run: exit status, stdout and stderr.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn assert_no_secrets(&self) {
        for (name, text) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            assert!(!text.contains(USER_PASSWORD), "{name} shows the password");
            // Every access token is a JWT, and every JWT starts with `eyJ`.
            assert!(!text.contains("eyJ"), "{name} shows a token: {text}");
        }
    }
}

/// Closes stdin and waits for the command, killing it after
/// [`RUN_TIMEOUT`].
async fn finish(mut child: Child, stdout: Option<BufReader<ChildStdout>>) -> Run {
    drop(child.stdin.take());
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("`botserver chat` did not exit within {RUN_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut out = String::new();
    match stdout {
        Some(mut reader) => reader.read_to_string(&mut out).unwrap(),
        None => child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap(),
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    Run {
        status,
        stdout: out,
        stderr,
    }
}

/// Runs the command with the password and `messages` on stdin.
async fn run_chat(server: &TestServer, account: Account<'_>, bot: &str, messages: &[&str]) -> Run {
    let mut child = spawn_chat(server, account, bot);
    for message in messages {
        write_line(&mut child, message);
    }
    finish(child, None).await
}

async fn chat_prints_replies_in_order(backend: Backend) {
    let Setup { server, .. } = setup(backend).await;
    let run = run_chat(
        &server,
        ALICE,
        "echo",
        &["first", "second message", "third"],
    )
    .await;
    assert!(run.status.success(), "{:?}: {}", run.status, run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            format!("bot> {ECHO_GREETING}"),
            "bot> first".to_owned(),
            "bot> second message".to_owned(),
            "bot> third".to_owned(),
        ]
    );
    assert!(
        run.stderr.contains("connected to bot `echo`"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("error"), "{}", run.stderr);
    run.assert_no_secrets();
}

/// One answer as the command prints it: the reply text and the suggestion
/// lines below it, with their numbers.
#[derive(Debug)]
struct PrintedAnswer {
    reply: String,
    suggestions: Vec<(usize, String)>,
}

fn printed_answers(stdout: &str) -> Vec<PrintedAnswer> {
    let mut answers: Vec<PrintedAnswer> = Vec::new();
    for line in stdout.lines() {
        if let Some(reply) = line.strip_prefix("bot> ") {
            answers.push(PrintedAnswer {
                reply: reply.to_owned(),
                suggestions: Vec::new(),
            });
            continue;
        }
        let (number, text) = line
            .trim_start()
            .strip_prefix('[')
            .and_then(|rest| rest.split_once("] "))
            .unwrap_or_else(|| panic!("unexpected output line `{line}`"));
        let answer = answers.last_mut().expect("a suggestion before any reply");
        answer
            .suggestions
            .push((number.parse().unwrap(), text.to_owned()));
    }
    answers
}

/// Checks that each number picks from the suggestions of the answer just
/// before it, with the `faq` bot of `botserver demo`, which answers a picked
/// question with that question's entry.
async fn chat_picks_numbered_suggestions(backend: Backend) {
    let server = TestServer::start(backend).await;
    for name in ["echo", "counter"] {
        plugin(name);
    }
    let knowledge_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo/faq.md");
    let sources = DemoSources {
        plugins: plugin("faq").parent().unwrap().to_path_buf(),
        knowledge: knowledge_file.clone(),
    };
    let accounts = demo::seed(&server.state, &sources).await.unwrap();
    let entries = knowledge::read(&knowledge_file).unwrap();
    let answer_of = |question: &str| {
        entries
            .iter()
            .find(|entry| entry.question == question)
            .map(|entry| entry.answer.clone())
            .unwrap_or_else(|| panic!("no entry for suggested question `{question}`"))
    };

    let account = Account {
        tenant: demo::TENANT,
        username: accounts.user.username,
        password: accounts.user.password.expose(),
    };
    let run = run_chat(&server, account, demo::FAQ_BOT, &["1", "3"]).await;
    assert!(run.status.success(), "{:?}: {}", run.status, run.stderr);
    let answers = printed_answers(&run.stdout);
    assert_eq!(answers.len(), 3, "{answers:?}");
    for answer in &answers {
        let numbers: Vec<usize> = answer.suggestions.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, [1, 2, 3], "{answer:?}");
    }
    let first_pick = &answers[0].suggestions[0].1;
    assert_eq!(answers[1].reply, answer_of(first_pick));
    let second_pick = &answers[1].suggestions[2].1;
    assert_eq!(answers[2].reply, answer_of(second_pick));
    assert!(!run.stderr.contains("error"), "{}", run.stderr);
}

async fn chat_rejects_wrong_password(backend: Backend) {
    let Setup { server, .. } = setup(backend).await;
    let account = Account {
        password: "not the password 1",
        ..ALICE
    };
    let run = run_chat(&server, account, "echo", &["hello"]).await;
    assert_eq!(run.status.code(), Some(EXIT_REJECTED), "{}", run.stderr);
    assert!(run.stderr.contains("sign-in failed"), "{}", run.stderr);
    assert!(run.stderr.contains("401"), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(!run.stderr.contains("not the password 1"));
    run.assert_no_secrets();
}

async fn chat_rejects_unknown_and_disabled_bots(backend: Backend) {
    let Setup { server, .. } = setup(backend).await;
    for (bot, status) in [("no-such-bot", "404"), ("echo-off", "409")] {
        let run = run_chat(&server, ALICE, bot, &["hello"]).await;
        assert_eq!(
            run.status.code(),
            Some(EXIT_REJECTED),
            "{bot}: {}",
            run.stderr
        );
        assert!(
            run.stderr
                .contains(&format!("connection to bot `{bot}` rejected")),
            "{bot}: {}",
            run.stderr
        );
        assert!(run.stderr.contains(status), "{bot}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{bot}: {}", run.stdout);
        run.assert_no_secrets();
    }
}

async fn chat_reports_close_when_session_ends(backend: Backend) {
    let Setup { server, user } = setup(backend).await;
    let mut child = spawn_chat(&server, ALICE, "echo");
    write_line(&mut child, "one");
    let stdout = child.stdout.take().unwrap();
    let read = tokio::task::spawn_blocking(move || {
        let mut reader = BufReader::new(stdout);
        let mut seen = Vec::new();
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap() > 0 {
            let done = line.trim_end() == "bot> one";
            seen.push(std::mem::take(&mut line));
            if done {
                break;
            }
        }
        (reader, seen)
    });
    let Ok(read) = tokio::time::timeout(RUN_TIMEOUT, read).await else {
        let _ = child.kill();
        panic!("no echo of `one` within {RUN_TIMEOUT:?}");
    };
    let (reader, seen) = read.unwrap();
    assert_eq!(seen.last().map(|line| line.trim_end()), Some("bot> one"));

    // Ending the login session closes the chat at its next message.
    server.state.auth.revoke_user_sessions(user).await.unwrap();
    write_line(&mut child, "two");
    let run = finish(child, Some(reader)).await;
    assert_eq!(run.status.code(), Some(EXIT_DISCONNECTED), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("connection closed by the server: code 1008"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("session ended"), "{}", run.stderr);
    assert!(!run.stdout.contains("bot> two"), "{}", run.stdout);
    run.assert_no_secrets();
}
