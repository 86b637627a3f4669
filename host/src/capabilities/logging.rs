//! Plugin log lines and captured stdout and stderr (always linked, no grant).
//!
//! Everything a plugin writes goes to the host's log, tagged with the plugin
//! digest, tenant and bot, truncated per line and capped per event. A plugin
//! cannot flood the log or forge other records, because each line is one
//! structured field and never raw text spliced into the log stream.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime::component::Linker;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

use super::secrets::SecretValue;
use crate::runtime::bindings::botserver::bot::logging::Level;
use crate::runtime::state::{HostState, Identity, enter_host_call};

/// Maximum length of a logged line, in bytes. The rest is cut off.
pub const MAX_LOG_LINE_BYTES: usize = 1024;

/// Most log lines one event may write; later lines are counted, not logged.
pub const MAX_LOG_LINES: u32 = 100;

/// Most bytes of stdout and stderr kept per event, together.
pub const MAX_OUTPUT_BYTES: usize = 16 * 1024;

/// Most secret values one event remembers for redaction.
const MAX_REDACTED_SECRETS: usize = 32;

/// Shortest secret value that is redacted; shorter ones would blank out
/// ordinary words.
const MIN_REDACTED_BYTES: usize = 4;

/// Counts, tags and cleans the log lines of one event.
#[derive(Debug)]
pub(crate) struct LogBudget {
    digest: String,
    tenant: String,
    bot: String,
    written: u32,
    dropped: u32,
    /// Secret values revealed to the plugin during this event; they are
    /// replaced in everything the plugin writes to the log or returns as an
    /// error.
    revealed: Vec<SecretValue>,
}

impl LogBudget {
    pub(crate) fn new(digest: &str, identity: &Identity) -> Self {
        Self {
            digest: digest.to_owned(),
            tenant: identity.tenant.clone(),
            bot: identity.bot.clone(),
            written: 0,
            dropped: 0,
            revealed: Vec::new(),
        }
    }

    /// Remembers a value handed to the plugin, so that it is redacted from
    /// the plugin's log lines and errors.
    pub(crate) fn remember_secret(&mut self, value: &SecretValue) {
        let known = self.revealed.iter().any(|v| v.expose() == value.expose());
        if !known && self.revealed.len() < MAX_REDACTED_SECRETS {
            self.revealed.push(value.clone());
        }
    }

    /// Replaces every revealed secret value in `text` and escapes control
    /// characters, so that plugin text is one line with no secrets in it.
    pub(crate) fn clean(&self, text: &str) -> String {
        let mut cleaned = escape_controls(text);
        for value in &self.revealed {
            let value = value.expose();
            if value.len() >= MIN_REDACTED_BYTES {
                cleaned = cleaned.replace(value, "<redacted>");
            }
        }
        cleaned
    }

    /// Logs one plugin line unless the budget is spent.
    pub(crate) fn write(&mut self, level: Level, stream: &str, message: &str) {
        if self.written >= MAX_LOG_LINES {
            self.dropped = self.dropped.saturating_add(1);
            return;
        }
        self.written += 1;
        let cleaned = self.clean(truncate(message, MAX_LOG_LINE_BYTES));
        let line = cleaned.as_str();
        let (digest, tenant, bot) = (&self.digest, &self.tenant, &self.bot);
        match level {
            Level::Trace => {
                tracing::trace!(target: "botserver::plugin", plugin_digest = %digest, tenant_id = %tenant, bot_id = %bot, stream, message = line)
            }
            Level::Debug => {
                tracing::debug!(target: "botserver::plugin", plugin_digest = %digest, tenant_id = %tenant, bot_id = %bot, stream, message = line)
            }
            Level::Info => {
                tracing::info!(target: "botserver::plugin", plugin_digest = %digest, tenant_id = %tenant, bot_id = %bot, stream, message = line)
            }
            Level::Warn => {
                tracing::warn!(target: "botserver::plugin", plugin_digest = %digest, tenant_id = %tenant, bot_id = %bot, stream, message = line)
            }
            Level::Error => {
                tracing::error!(target: "botserver::plugin", plugin_digest = %digest, tenant_id = %tenant, bot_id = %bot, stream, message = line)
            }
        }
    }

    /// Logs the captured output and how many lines were dropped.
    pub(crate) fn finish(&mut self, output: &OutputCapture) {
        let captured = output.take();
        let text = String::from_utf8_lossy(&captured.bytes);
        for line in text.lines().filter(|line| !line.trim().is_empty()) {
            self.write(Level::Info, "stdio", line);
        }
        if captured.truncated || self.dropped > 0 {
            tracing::info!(
                target: "botserver::plugin",
                plugin_digest = %self.digest,
                bot_id = %self.bot,
                lines_dropped = self.dropped,
                output_truncated = captured.truncated,
                "plugin output over its per-event budget"
            );
        }
    }
}

/// Escapes control characters and Unicode line and paragraph separators,
/// which a text log would otherwise print as line breaks.
fn escape_controls(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() || c == '\u{2028}' || c == '\u{2029}' {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[derive(Debug, Default)]
struct Captured {
    bytes: Vec<u8>,
    truncated: bool,
}

/// A sink for a plugin's stdout and stderr that keeps the first
/// [`MAX_OUTPUT_BYTES`] and silently drops the rest, so a chatty plugin
/// neither fills host memory nor fails its own writes.
#[derive(Clone, Debug, Default)]
pub(crate) struct OutputCapture(Arc<Mutex<Captured>>);

impl OutputCapture {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn take(&self) -> Captured {
        self.0
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default()
    }
}

impl IsTerminal for OutputCapture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for OutputCapture {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for OutputCapture {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Ok(mut captured) = self.0.lock() {
            let room = MAX_OUTPUT_BYTES.saturating_sub(captured.bytes.len());
            let kept = buf.len().min(room);
            captured.bytes.extend_from_slice(&buf[..kept]);
            captured.truncated |= kept < buf.len();
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Adds `botserver:bot/logging` to `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    let mut logging = linker.instance("botserver:bot/logging@0.1.0")?;
    logging.func_wrap_async("log", |mut store, (level, message): (Level, String)| {
        Box::new(async move {
            enter_host_call(&mut store, message.len())?;
            store.data_mut().log.write(level, "log", &message);
            Ok(())
        })
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_text_stays_one_line_without_secrets() {
        let identity = Identity {
            tenant: "t".into(),
            bot: "b".into(),
            user: "u".into(),
            conversation: "c".into(),
        };
        let mut budget = LogBudget::new("digest", &identity);
        budget.remember_secret(&SecretValue::new("hunter2-canary".into()));
        let cleaned = budget.clean("ok\nINFO admin login ok\r\u{2028}x\0 hunter2-canary");
        assert!(!cleaned.contains('\n'));
        assert!(!cleaned.contains('\r'));
        assert!(!cleaned.contains('\u{2028}'));
        assert!(!cleaned.contains('\0'));
        assert!(!cleaned.contains("hunter2-canary"));
        assert!(cleaned.contains("<redacted>"));
    }

    #[test]
    fn truncates_on_char_boundary() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("hello", 10), "hello");
    }

    #[tokio::test]
    async fn output_capture_keeps_a_bounded_prefix() -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let capture = OutputCapture::new();
        let mut writer = capture.clone();
        let chunk = vec![b'x'; 4096];
        for _ in 0..10 {
            writer.write_all(&chunk).await?;
        }
        let captured = capture.take();
        assert_eq!(captured.bytes.len(), MAX_OUTPUT_BYTES);
        assert!(captured.truncated);
        Ok(())
    }
}
