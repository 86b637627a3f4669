//! `botserver audit verify`, `export` and `prune`: checks and copies of the
//! audit trail, on the database and with the options `serve` uses.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context as _, bail};

use super::server::{CommonArgs, load_config, open_db};
use crate::audit::storage::{self, Filter, Order};
use crate::audit::{self, AuditSettings, format_time, parse_time};
use crate::storage::{Db, tenants};

/// Events read from the database at a time.
const PAGE: i64 = 1000;

/// `audit` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain and report the first edited, deleted or
    /// reordered event. Exits with 1 when the chain is broken.
    Verify {
        /// Shared options.
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Write events as JSON lines, oldest first.
    Export {
        /// Shared options.
        #[command(flatten)]
        common: CommonArgs,
        /// First time to include: RFC 3339 (`2026-01-02T03:04:05Z`) or Unix
        /// seconds.
        #[arg(long, value_name = "TIME")]
        since: String,
        /// Time to stop before, in the same forms [default: no end].
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        /// Only this tenant's events (id or name).
        #[arg(long)]
        tenant: Option<String>,
        /// File to write instead of stdout; created with mode 0600.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Delete events older than `BOTSERVER_AUDIT_RETENTION_DAYS` now, leaving
    /// a checkpoint so that the rest still verifies. Servers also do this
    /// every hour.
    Prune {
        /// Shared options.
        #[command(flatten)]
        common: CommonArgs,
    },
}

/// Runs an `audit` subcommand.
///
/// # Errors
///
/// Returns an error when the database fails, an option is invalid, or
/// `verify` finds the chain broken.
pub async fn run(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify { common } => {
            let db = open_db(&load_config(&common, None)?).await?;
            let result = audit::verify::verify(&db).await;
            db.close().await;
            match result.context("failed to read the audit log")? {
                Ok(report) => {
                    println!("{report}");
                    Ok(())
                }
                Err(found) => bail!("audit log does not verify: {found}"),
            }
        }
        AuditCommand::Export {
            common,
            since,
            until,
            tenant,
            output,
        } => {
            let db = open_db(&load_config(&common, None)?).await?;
            let result = export(&db, &since, until.as_deref(), tenant.as_deref(), output).await;
            db.close().await;
            result
        }
        AuditCommand::Prune { common } => {
            let config = load_config(&common, None)?;
            let settings = AuditSettings::from_config(&config);
            let db = open_db(&config).await?;
            let result = audit::apply_retention(&db, settings.retention_days).await;
            db.close().await;
            match result.context("failed to prune the audit log")? {
                Some((checkpoint, deleted)) => eprintln!(
                    "deleted {deleted} events up to event {} ({}); the next event links to {}",
                    checkpoint.seq,
                    format_time(checkpoint.occurred_at_ms),
                    checkpoint.hash
                ),
                None => eprintln!(
                    "nothing to prune: no event is older than {} days",
                    settings.retention_days
                ),
            }
            Ok(())
        }
    }
}

async fn export(
    db: &Db,
    since: &str,
    until: Option<&str>,
    tenant: Option<&str>,
    output: Option<PathBuf>,
) -> anyhow::Result<()> {
    let mut filter = Filter {
        since_ms: Some(time_option("--since", since)?),
        until_ms: until.map(|text| time_option("--until", text)).transpose()?,
        ..Filter::default()
    };
    if let Some(key) = tenant {
        let found = tenants::find(db, key)
            .await?
            .with_context(|| format!("tenant `{key}` not found"))?;
        filter.tenant_id = Some(found.id.to_string());
    }
    let mut writer: Box<dyn std::io::Write> = match &output {
        Some(path) => Box::new(std::io::BufWriter::new(create_private(path)?)),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut written = 0u64;
    loop {
        let page = storage::query(db, &filter, Order::OldestFirst, PAGE)
            .await
            .context("failed to read audit events")?;
        for record in &page {
            writeln!(writer, "{}", record.to_json()).context("failed to write the export")?;
            filter.after_seq = Some(record.seq);
            written += 1;
        }
        if i64::try_from(page.len()).unwrap_or(i64::MAX) < PAGE {
            break;
        }
    }
    writer.flush().context("failed to write the export")?;
    eprintln!("exported {written} events");
    Ok(())
}

fn time_option(name: &str, text: &str) -> anyhow::Result<i64> {
    parse_time(text).with_context(|| {
        format!(
            "invalid `{name}`: expected RFC 3339 such as `2026-01-02T03:04:05Z` or Unix seconds, \
             got `{}`",
            text.escape_debug()
        )
    })
}

fn create_private(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("failed to create `{}`", path.display()))
}
