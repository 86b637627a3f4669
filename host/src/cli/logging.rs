//! Log destinations: stderr as text or JSON, and, once a server command
//! has read `BOTSERVER_LOG_DIR`, also daily rotated JSON files there, kept
//! for `BOTSERVER_LOG_RETENTION_DAYS` days.
//!
//! `RUST_LOG` filters both (default `warn`), except that [`payload_filter`]
//! always drops the debug and trace lines of the WebSocket library, which
//! print whole frames and upgrade requests: chat messages, tickets and
//! bearer tokens. The file layer is installed through a reload handle,
//! because the configuration is read after the subscriber has to exist.

use std::sync::OnceLock;
#[cfg(feature = "server")]
use std::sync::{Mutex, PoisonError};

use tracing::{Level, Metadata};
use tracing_subscriber::filter::FilterFn;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry, fmt, reload};

use super::LogFormat;

/// A layer installed later, on top of the registry.
type LateLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// The handle through which the file layer is installed.
static FILE_LAYER: OnceLock<reload::Handle<Option<LateLayer>, Registry>> = OnceLock::new();

/// Keeps the background writer of the log files alive; dropping it
/// flushes what is buffered.
#[cfg(feature = "server")]
static FILE_WRITER: Mutex<Option<tracing_appender::non_blocking::WorkerGuard>> = Mutex::new(None);

/// Log targets that print message payloads below info level:
/// tungstenite logs every frame and message at trace and the client's
/// upgrade URI, ticket included, at debug.
const PAYLOAD_TARGETS: &[&str] = &["tungstenite", "tokio_tungstenite"];

/// Returns a global filter that drops debug and trace events of [`PAYLOAD_TARGETS`]
/// whatever `RUST_LOG` enables.
pub fn payload_filter() -> FilterFn<fn(&Metadata<'_>) -> bool> {
    FilterFn::new(keeps_event)
}

fn keeps_event(metadata: &Metadata<'_>) -> bool {
    if *metadata.level() <= Level::INFO {
        return true;
    }
    let target = metadata.target();
    !PAYLOAD_TARGETS.iter().any(|payload| {
        target
            .strip_prefix(payload)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

/// Installs the global subscriber with stderr output in `format`.
pub(super) fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let (files, handle) = reload::Layer::new(None::<LateLayer>);
    // A closed stderr must not take the server down: tracing-subscriber
    // reports its own write failures with `eprintln!`, which panics then.
    let text = (format == LogFormat::Text).then(|| {
        fmt::layer()
            .with_writer(std::io::stderr)
            .log_internal_errors(false)
    });
    let json = (format == LogFormat::Json).then(|| {
        fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .log_internal_errors(false)
    });
    let installed = tracing_subscriber::registry()
        .with(files)
        .with(filter)
        .with(payload_filter())
        .with(text)
        .with(json)
        .try_init();
    if installed.is_ok() {
        let _ = FILE_LAYER.set(handle);
    }
}

/// Flushes and closes the log files, if any. Call before the process exits.
pub(super) fn finish() {
    #[cfg(feature = "server")]
    drop(
        FILE_WRITER
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(),
    );
}

#[cfg(feature = "server")]
pub(super) use files::start_files;

#[cfg(test)]
mod tests {
    use tracing::callsite::Identifier;
    use tracing::field::FieldSet;
    use tracing::metadata::Kind;

    use super::*;

    struct Site;
    impl tracing::Callsite for Site {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            unreachable!("not registered")
        }
    }
    static SITE: Site = Site;

    fn metadata(target: &'static str, level: Level) -> Metadata<'static> {
        let fields = FieldSet::new(&[], Identifier(&SITE));
        Metadata::new(
            "event",
            target,
            level,
            None,
            None,
            None,
            fields,
            Kind::EVENT,
        )
    }

    #[test]
    fn payload_targets_keep_only_info_and_above() {
        assert!(!keeps_event(&metadata(
            "tungstenite::protocol",
            Level::TRACE
        )));
        assert!(!keeps_event(&metadata("tokio_tungstenite", Level::DEBUG)));
        assert!(keeps_event(&metadata("tungstenite::protocol", Level::WARN)));
        assert!(keeps_event(&metadata("tungstenite_other", Level::TRACE)));
        assert!(keeps_event(&metadata("botserver::ws", Level::TRACE)));
    }
}

#[cfg(feature = "server")]
mod files {
    use std::path::Path;
    use std::sync::PoisonError;
    use std::time::Duration;

    use anyhow::Context as _;
    use time::{Date, OffsetDateTime};
    use tracing_appender::rolling::{RollingFileAppender, Rotation};
    use tracing_subscriber::fmt;

    use super::{FILE_LAYER, FILE_WRITER, LateLayer};
    use crate::crypto::keyfile::ensure_private_dir;

    /// File names are `botserver.YYYY-MM-DD.log`, one per UTC day.
    const PREFIX: &str = "botserver";
    const SUFFIX: &str = "log";

    /// Days log files are kept when `BOTSERVER_LOG_RETENTION_DAYS` is unset.
    pub(crate) const DEFAULT_RETENTION_DAYS: u32 = 14;

    /// Time between retention sweeps.
    const SWEEP_INTERVAL: Duration = Duration::from_secs(3600);

    /// Starts writing JSON log lines to daily files in `dir` (created with
    /// mode 0700), deletes files older than `retention_days` days now and
    /// then every hour. Must run inside a Tokio runtime.
    ///
    /// # Errors
    ///
    /// Returns an error when the directory or the first file cannot be
    /// created.
    pub(crate) fn start_files(dir: &Path, retention_days: Option<u32>) -> anyhow::Result<()> {
        let retention_days = retention_days.unwrap_or(DEFAULT_RETENTION_DAYS);
        ensure_private_dir(dir)
            .with_context(|| format!("failed to create log directory `{}`", dir.display()))?;
        let appender = RollingFileAppender::builder()
            .rotation(Rotation::DAILY)
            .filename_prefix(PREFIX)
            .filename_suffix(SUFFIX)
            .build(dir)
            .with_context(|| format!("failed to open a log file in `{}`", dir.display()))?;
        let (writer, guard) = tracing_appender::non_blocking(appender);
        let layer: LateLayer = Box::new(
            fmt::layer()
                .json()
                .with_ansi(false)
                .with_writer(writer)
                .log_internal_errors(false),
        );
        if let Some(handle) = FILE_LAYER.get() {
            handle
                .reload(Some(layer))
                .context("failed to install the log file layer")?;
        }
        *FILE_WRITER.lock().unwrap_or_else(PoisonError::into_inner) = Some(guard);

        let dir = dir.to_owned();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(SWEEP_INTERVAL);
            loop {
                interval.tick().await;
                let today = OffsetDateTime::now_utc().date();
                match sweep(&dir, today, retention_days) {
                    Ok(0) => {}
                    Ok(deleted) => tracing::info!(log.deleted = deleted, "old log files deleted"),
                    Err(error) => tracing::warn!(%error, "failed to delete old log files"),
                }
            }
        });
        Ok(())
    }

    /// Deletes the log files in `dir` dated more than `retention_days`
    /// days before `today`, and returns how many it deleted. Other files
    /// are left alone.
    ///
    /// # Errors
    ///
    /// Returns the error of reading the directory or deleting a file.
    pub(crate) fn sweep(dir: &Path, today: Date, retention_days: u32) -> std::io::Result<usize> {
        let oldest_kept = today
            .checked_sub(time::Duration::days(i64::from(retention_days)))
            .unwrap_or(Date::MIN);
        let mut deleted = 0;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(date) = name.to_str().and_then(file_date) else {
                continue;
            };
            if date < oldest_kept && entry.file_type()?.is_file() {
                std::fs::remove_file(entry.path())?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Returns the date in a name of the form `botserver.YYYY-MM-DD.log`.
    fn file_date(name: &str) -> Option<Date> {
        let date = name
            .strip_prefix(PREFIX)?
            .strip_prefix('.')?
            .strip_suffix(SUFFIX)?
            .strip_suffix('.')?;
        let format = time::macros::format_description!("[year]-[month]-[day]");
        Date::parse(date, &format).ok()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn date(text: &str) -> Date {
            file_date(&format!("botserver.{text}.log")).unwrap()
        }

        #[test]
        fn sweep_deletes_only_old_log_files() {
            let dir = tempfile::tempdir().unwrap();
            let names = [
                "botserver.2026-01-01.log",
                "botserver.2026-01-16.log",
                "botserver.2026-01-17.log",
                "botserver.2026-01-31.log",
                "notes.2020-01-01.log",
                "botserver.2020-01-01.log.gz",
            ];
            for name in names {
                std::fs::write(dir.path().join(name), "{}\n").unwrap();
            }
            let deleted = sweep(dir.path(), date("2026-01-31"), 14).unwrap();
            assert_eq!(deleted, 2);
            let mut left: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|entry| entry.unwrap().file_name().into_string().unwrap())
                .collect();
            left.sort();
            assert_eq!(
                left,
                [
                    "botserver.2020-01-01.log.gz",
                    "botserver.2026-01-17.log",
                    "botserver.2026-01-31.log",
                    "notes.2020-01-01.log",
                ]
            );
        }

        #[test]
        fn file_names_need_the_exact_form() {
            assert!(file_date("botserver.2026-02-30.log").is_none());
            assert!(file_date("botserver.2026-1-3.log").is_none());
            assert!(file_date("botserver2026-01-03log").is_none());
            assert_eq!(date("2026-01-03").day(), 3);
        }
    }
}
