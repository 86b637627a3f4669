//! `botserver chat`: one conversation with a bot from a terminal or a
//! script.
//!
//! The command signs in over the HTTP API, takes a one-time WebSocket
//! ticket and speaks the chat protocol on `/ws` (docs/chat-protocol.md).
//! Lines from stdin become user messages and replies go to stdout, so
//! `printf '%s\n' "$PASSWORD" hello | botserver chat ...` works in scripts.
//! Errors, the connection state and close codes go to stderr.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::Url;
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader, Lines, Stdin};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::{HeaderValue, header};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use zeroize::Zeroizing;

use super::exit;
use crate::auth::password::Password;

/// Time limit of each HTTP request (sign-in, ticket, sign-out), so an
/// unresponsive server cannot hang a script.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Time limit of the WebSocket connect and upgrade. The ticket expires
/// after 30 seconds anyway.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Maximum wait for the greeting of a new conversation before the first
/// line goes out. A bot without a greeting sends nothing after `connected`,
/// so the wait needs an end. A greeting that comes later still prints in
/// order.
const GREETING_WAIT: Duration = Duration::from_secs(5);

/// Options of `chat`.
#[derive(Debug, clap::Args)]
pub struct ChatArgs {
    /// Server base URL, `http://` or `https://`. The WebSocket connects to
    /// `ws://` or `wss://` on the same host and base path.
    #[arg(long, value_name = "URL")]
    url: String,
    /// Tenant of the account.
    #[arg(long)]
    tenant: String,
    /// Login name of the account.
    #[arg(long)]
    username: String,
    /// Name of the bot to chat with.
    #[arg(long)]
    bot: String,
}

/// A failed chat, with the exit code by which scripts tell failures apart.
struct Failure {
    exit_code: u8,
    error: anyhow::Error,
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Self {
            exit_code: exit::FAILURE,
            error,
        }
    }
}

impl Failure {
    fn rejected(error: anyhow::Error) -> Self {
        Self {
            exit_code: exit::REJECTED,
            error,
        }
    }

    fn disconnected(error: anyhow::Error) -> Self {
        Self {
            exit_code: exit::DISCONNECTED,
            error,
        }
    }
}

/// Runs `chat` and returns the process exit code.
pub(super) async fn run(args: ChatArgs) -> ExitCode {
    match chat(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {:#}", failure.error);
            ExitCode::from(failure.exit_code)
        }
    }
}

async fn chat(args: ChatArgs) -> Result<(), Failure> {
    let endpoints = Endpoints::new(&args.url)?;
    let mut input = BufReader::new(tokio::io::stdin()).lines();
    let password = read_password(&mut input).await?;

    // rustls has both ring and aws-lc-rs compiled in through other
    // dependencies, so it cannot pick a provider by itself. An `Err` means
    // one is installed already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .build()
        .context("failed to build the HTTP client")?;

    let access = sign_in(&client, &endpoints, &args, &password).await?;
    drop(password);
    let result = converse(&client, &endpoints, &access, &args.bot, &mut input).await;
    sign_out(&client, &endpoints, &access).await;
    result
}

/// The server URLs the command uses, derived from `--url`.
struct Endpoints {
    login: Url,
    logout: Url,
    ticket: Url,
    socket: Url,
    /// The `Origin` sent on the upgrade: the server's own, which it allows.
    origin: String,
}

impl Endpoints {
    fn new(url: &str) -> anyhow::Result<Self> {
        let expected = "expected an `http://` or `https://` URL";
        let mut base = Url::parse(url).with_context(|| format!("invalid `--url` `{url}`"))?;
        let socket_scheme = match base.scheme() {
            "http" => "ws",
            "https" => "wss",
            other => bail!("invalid `--url`: {expected}, got scheme `{other}`"),
        };
        base.set_query(None);
        base.set_fragment(None);
        // A base path such as `/botserver` must keep its last segment when
        // the routes are joined to it.
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }

        let join = |route: &str| {
            base.join(route)
                .with_context(|| format!("failed to build the URL of `{route}` from `--url`"))
        };
        let mut socket = join("ws")?;
        socket
            .set_scheme(socket_scheme)
            .map_err(|()| anyhow!("failed to derive the WebSocket URL from `{url}`"))?;
        Ok(Self {
            login: join("api/v1/auth/login")?,
            logout: join("api/v1/auth/logout")?,
            ticket: join("api/v1/auth/ws-ticket")?,
            socket,
            origin: base.origin().ascii_serialization(),
        })
    }
}

/// A token from the server: zeroized on drop and redacted from `Debug`.
struct Credential(Zeroizing<String>);

impl Credential {
    fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for Credential {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(|text| Self(Zeroizing::new(text)))
    }
}

#[derive(Debug, Deserialize)]
struct TokenResponse {
    access_token: Credential,
}

#[derive(Debug, Deserialize)]
struct TicketResponse {
    ticket: Credential,
}

/// Reads the password: the first line of stdin when it is a pipe or file,
/// otherwise a prompt on the terminal without echo.
async fn read_password(input: &mut Lines<BufReader<Stdin>>) -> anyhow::Result<Password> {
    let text = if std::io::stdin().is_terminal() {
        tokio::task::spawn_blocking(|| rpassword::prompt_password("password: "))
            .await
            .context("failed to prompt for the password")?
            .context("failed to read the password from the terminal")?
    } else {
        input
            .next_line()
            .await
            .context("failed to read the password from stdin")?
            .unwrap_or_default()
    };
    let mut text = Zeroizing::new(text);
    let length = text.trim_end_matches('\r').len();
    text.truncate(length);
    if text.is_empty() {
        bail!("missing password: write it as the first line of stdin");
    }
    Ok(Password::new(std::mem::take(&mut *text)))
}

async fn sign_in(
    client: &reqwest::Client,
    endpoints: &Endpoints,
    args: &ChatArgs,
    password: &Password,
) -> Result<Credential, Failure> {
    let body = json!({
        "tenant": args.tenant,
        "username": args.username,
        "password": password.expose(),
    });
    let response = client
        .post(endpoints.login.clone())
        .json(&body)
        .send()
        .await
        .map_err(|error| request_failed(error, &endpoints.login))?;
    if !response.status().is_success() {
        return Err(refused("sign-in failed", response).await);
    }
    let tokens: TokenResponse = response
        .json()
        .await
        .context("invalid sign-in response: expected a JSON token response")?;
    Ok(tokens.access_token)
}

/// Ends the login session, so that each run leaves no session behind until
/// the idle timeout. A failure changes nothing for the user and is ignored.
async fn sign_out(client: &reqwest::Client, endpoints: &Endpoints, access: &Credential) {
    let sent = client
        .post(endpoints.logout.clone())
        .bearer_auth(access.expose())
        .send()
        .await;
    if let Err(error) = sent {
        tracing::debug!(%error, "failed to sign out");
    }
}

async fn take_ticket(
    client: &reqwest::Client,
    endpoints: &Endpoints,
    access: &Credential,
) -> Result<Credential, Failure> {
    let response = client
        .post(endpoints.ticket.clone())
        .bearer_auth(access.expose())
        .send()
        .await
        .map_err(|error| request_failed(error, &endpoints.ticket))?;
    if !response.status().is_success() {
        return Err(refused("WebSocket ticket rejected", response).await);
    }
    let ticket: TicketResponse = response
        .json()
        .await
        .context("invalid ticket response: expected `{\"ticket\": ...}`")?;
    Ok(ticket.ticket)
}

/// Names the URL once: reqwest's own message repeats it otherwise.
fn request_failed(error: reqwest::Error, url: &Url) -> anyhow::Error {
    anyhow!(error.without_url()).context(format!("failed to reach `{url}`"))
}

/// Builds the failure for a non-success HTTP response: a 4xx means the
/// server rejected the request, anything else is a server failure.
async fn refused(action: &str, response: reqwest::Response) -> Failure {
    let status = response.status();
    let body = response.bytes().await.unwrap_or_default();
    let error = anyhow!("{action}: {}", describe_status(status, &body));
    if status.is_client_error() {
        Failure::rejected(error)
    } else {
        Failure::from(error)
    }
}

/// Formats a status and the `detail` (or `title`) of an RFC 9457 problem
/// body, if the body is one.
fn describe_status(status: reqwest::StatusCode, body: &[u8]) -> String {
    let problem: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let detail = problem["detail"].as_str().or(problem["title"].as_str());
    match detail {
        Some(detail) => format!("{status}: {}", printable(detail)),
        None => status.to_string(),
    }
}

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

async fn converse(
    client: &reqwest::Client,
    endpoints: &Endpoints,
    access: &Credential,
    bot: &str,
    input: &mut Lines<BufReader<Stdin>>,
) -> Result<(), Failure> {
    let ticket = take_ticket(client, endpoints, access).await?;
    let mut socket = connect(endpoints, &ticket, bot).await?;
    drop(ticket);

    let mut conversation = Conversation::new(bot);
    let mut input_done = false;
    loop {
        let greeting_deadline = conversation.greeting_deadline;
        tokio::select! {
            frame = socket.next() => conversation.receive(frame)?,
            () = sleep_until(greeting_deadline), if greeting_deadline.is_some() => {
                conversation.stop_waiting_for_greeting();
            }
            line = input.next_line(), if conversation.is_ready() => {
                match line.context("failed to read stdin")? {
                    Some(line) => conversation.send(&mut socket, &line).await?,
                    None => input_done = true,
                }
            }
        }
        if input_done && conversation.is_ready() {
            break;
        }
    }
    finish(&mut socket, &mut conversation).await;
    Ok(())
}

/// Completes at `deadline`, or never without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn connect(endpoints: &Endpoints, ticket: &Credential, bot: &str) -> Result<Socket, Failure> {
    let mut url = endpoints.socket.clone();
    url.query_pairs_mut()
        .append_pair("ticket", ticket.expose())
        .append_pair("bot", bot);
    let mut request = url
        .as_str()
        .into_client_request()
        .context("failed to build the WebSocket request")?;
    let origin = HeaderValue::from_str(&endpoints.origin)
        .with_context(|| format!("invalid origin `{}`", endpoints.origin))?;
    request.headers_mut().insert(header::ORIGIN, origin);

    // The URL carries the ticket, so messages name the URL without its query.
    let target = &endpoints.socket;
    let connected =
        tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(request))
            .await
            .map_err(|_| anyhow!("timed out connecting to `{target}`"))?;
    match connected {
        Ok((socket, _response)) => Ok(socket),
        Err(tungstenite::Error::Http(response)) => {
            let body = response.body().as_deref().unwrap_or_default();
            let error = anyhow!(
                "connection to bot `{bot}` rejected: {}",
                describe_status(response.status(), body)
            );
            if response.status().is_client_error() {
                Err(Failure::rejected(error))
            } else {
                Err(Failure::from(error))
            }
        }
        Err(error) => Err(anyhow!(error)
            .context(format!("failed to connect to `{target}`"))
            .into()),
    }
}

/// Sends a close frame after the end of input, then prints the frames that
/// arrive until the server closes too, because the last answer may span
/// several frames.
async fn finish(socket: &mut Socket, conversation: &mut Conversation) {
    let close = CloseFrame {
        code: CloseCode::Normal,
        reason: "end of input".into(),
    };
    if let Err(error) = socket.send(Message::Close(Some(close))).await {
        tracing::debug!(%error, "failed to send the close frame");
        return;
    }
    while let Some(frame) = socket.next().await {
        match frame {
            Ok(Message::Text(text)) => conversation.show(&text),
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// One suggestion of a bot reply, as the server sends it.
#[derive(Debug, Deserialize)]
struct Suggestion {
    text: String,
    #[serde(default)]
    context: Option<String>,
}

/// The fields of server frames that the command reads.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ServerFrame {
    #[serde(rename = "type")]
    kind: Option<String>,
    session_id: Option<String>,
    content: Option<String>,
    suggestions: Vec<Suggestion>,
    code: Option<String>,
    message: Option<String>,
}

/// The client side of the conversation: what was offered and whether a
/// message still waits for its answer.
struct Conversation {
    bot: String,
    /// Suggestions offered since the last message, numbered from 1.
    suggestions: Vec<Suggestion>,
    /// Whether the next line may be sent: after the first frame of the
    /// greeting or [`GREETING_WAIT`], and after the first frame that
    /// answers the previous message.
    ///
    /// NOTE: no frame marks the end of an answer, so with piped input a line
    /// can go out while later replies of the previous answer are still on
    /// their way, and suggestion numbers then refer to those replies too.
    /// The output stays in order, because the server answers one message at
    /// a time and [`finish`] prints what is left. An end-of-answer marker in
    /// the protocol would fix this.
    ready: bool,
    /// When to stop waiting for the greeting, from the `connected` frame
    /// until the first reply.
    greeting_deadline: Option<tokio::time::Instant>,
}

impl Conversation {
    fn new(bot: &str) -> Self {
        Self {
            bot: bot.to_owned(),
            suggestions: Vec::new(),
            ready: false,
            greeting_deadline: None,
        }
    }

    fn is_ready(&self) -> bool {
        self.ready
    }

    /// Marks the end of a turn: the next line may go out.
    fn answered(&mut self) {
        self.ready = true;
        self.greeting_deadline = None;
    }

    fn stop_waiting_for_greeting(&mut self) {
        tracing::debug!("no greeting; sending the first line");
        self.answered();
    }

    /// Handles one item of the socket stream; a close or an error ends the
    /// conversation before the end of input.
    fn receive(
        &mut self,
        frame: Option<Result<Message, tungstenite::Error>>,
    ) -> Result<(), Failure> {
        match frame {
            Some(Ok(Message::Text(text))) => {
                self.show(&text);
                Ok(())
            }
            Some(Ok(Message::Close(close))) => Err(Failure::disconnected(anyhow!(
                "connection closed by the server: {}",
                describe_close(close.as_ref())
            ))),
            Some(Ok(_)) => Ok(()),
            Some(Err(error)) => Err(Failure::disconnected(
                anyhow!(error).context("connection to the server lost"),
            )),
            None => Err(Failure::disconnected(anyhow!(
                "connection to the server lost without a close frame"
            ))),
        }
    }

    /// Prints one server frame: a reply to stdout, the rest to stderr.
    fn show(&mut self, text: &str) {
        let Ok(frame) = serde_json::from_str::<ServerFrame>(text) else {
            tracing::debug!("ignored a frame that is not a JSON object");
            return;
        };
        match frame.kind.as_deref() {
            Some("connected") => {
                let session = frame.session_id.as_deref().unwrap_or("?");
                eprintln!(
                    "connected to bot `{}`, conversation {}",
                    self.bot,
                    printable(session)
                );
                self.greeting_deadline = Some(tokio::time::Instant::now() + GREETING_WAIT);
            }
            Some("error") => {
                let message = frame
                    .message
                    .as_deref()
                    .unwrap_or("the server sent an error");
                let code = frame.code.as_deref().unwrap_or("unknown");
                eprintln!("error: {} ({})", printable(message), printable(code));
                self.answered();
            }
            Some(_) => {}
            None => {
                if let Some(content) = frame.content {
                    self.show_reply(&content, frame.suggestions);
                    self.answered();
                }
            }
        }
    }

    fn show_reply(&mut self, content: &str, suggestions: Vec<Suggestion>) {
        // An answer without replies comes as one frame with empty content.
        if !content.is_empty() {
            println!("bot> {}", printable(content));
        }
        for suggestion in suggestions {
            let number = self.suggestions.len() + 1;
            println!("  [{number}] {}", printable(&suggestion.text));
            self.suggestions.push(suggestion);
        }
    }

    /// Sends a line as a user message, or as the suggestion it numbers.
    /// Blank lines are skipped.
    async fn send(&mut self, socket: &mut Socket, line: &str) -> Result<(), Failure> {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            return Ok(());
        }
        let frame = self.frame_for(line);
        socket
            .send(Message::text(frame.to_string()))
            .await
            .map_err(|error| {
                Failure::disconnected(anyhow!(error).context("failed to send the message"))
            })?;
        self.suggestions.clear();
        self.ready = false;
        Ok(())
    }

    fn frame_for(&self, line: &str) -> Value {
        let picked = line
            .trim()
            .parse::<usize>()
            .ok()
            .and_then(|number| number.checked_sub(1))
            .and_then(|index| self.suggestions.get(index));
        match picked {
            Some(Suggestion {
                text,
                context: Some(context),
            }) => json!({"content": text, "message_type": 4, "context": context}),
            Some(Suggestion {
                text,
                context: None,
            }) => json!({"content": text, "message_type": 4}),
            None => json!({"content": line, "message_type": 1}),
        }
    }
}

fn describe_close(close: Option<&CloseFrame>) -> String {
    match close {
        None => "no close code".to_owned(),
        Some(frame) if frame.reason.is_empty() => format!("code {}", u16::from(frame.code)),
        Some(frame) => format!(
            "code {}, reason `{}`",
            u16::from(frame.code),
            printable(&frame.reason)
        ),
    }
}

/// Replaces control characters other than newline and tab, so text from
/// the server cannot send escape sequences to the terminal.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                char::REPLACEMENT_CHARACTER
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_keep_host_port_and_base_path() {
        let endpoints = Endpoints::new("https://chat.example.com:8443/bots?x=1#top").unwrap();
        assert_eq!(
            endpoints.login.as_str(),
            "https://chat.example.com:8443/bots/api/v1/auth/login"
        );
        assert_eq!(
            endpoints.ticket.as_str(),
            "https://chat.example.com:8443/bots/api/v1/auth/ws-ticket"
        );
        assert_eq!(
            endpoints.socket.as_str(),
            "wss://chat.example.com:8443/bots/ws"
        );
        assert_eq!(endpoints.origin, "https://chat.example.com:8443");
    }

    #[test]
    fn endpoints_derive_ws_from_http() {
        let endpoints = Endpoints::new("http://127.0.0.1:8080").unwrap();
        assert_eq!(endpoints.socket.as_str(), "ws://127.0.0.1:8080/ws");
        assert_eq!(endpoints.origin, "http://127.0.0.1:8080");
    }

    #[test]
    fn endpoints_reject_other_schemes() {
        for url in ["ws://127.0.0.1:8080", "ftp://example.com", "127.0.0.1:8080"] {
            assert!(Endpoints::new(url).is_err(), "{url}");
        }
    }

    #[test]
    fn number_line_picks_suggestion() {
        let mut conversation = Conversation::new("counter");
        conversation.show_reply(
            "1",
            vec![
                Suggestion {
                    text: "Again".to_owned(),
                    context: Some("again".to_owned()),
                },
                Suggestion {
                    text: "Stop".to_owned(),
                    context: None,
                },
            ],
        );
        assert_eq!(
            conversation.frame_for(" 1 "),
            json!({"content": "Again", "message_type": 4, "context": "again"})
        );
        assert_eq!(
            conversation.frame_for("2"),
            json!({"content": "Stop", "message_type": 4})
        );
        assert_eq!(
            conversation.frame_for("3"),
            json!({"content": "3", "message_type": 1})
        );
        assert_eq!(
            conversation.frame_for("0"),
            json!({"content": "0", "message_type": 1})
        );
    }

    #[test]
    fn printable_replaces_escape_sequences() {
        assert_eq!(printable("a\u{1b}[2Jb\nc\td"), "a\u{fffd}[2Jb\nc\td");
    }

    #[test]
    fn credential_debug_is_redacted() {
        let credential = Credential(Zeroizing::new("secret-token".to_owned()));
        assert!(!format!("{credential:?}").contains("secret-token"));
    }
}
