//! `botserver plugin`: inspect a component and run one event through it, the
//! same way the server would, for plugin authors working without a server.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::exit;
use crate::capabilities::LiveGrants;
use crate::capabilities::http::SystemResolver;
use crate::capabilities::kv::{FileKvStore, KvStore};
use crate::capabilities::secrets::MemorySecretStore;
use crate::capabilities::{Capability, GrantSet};
use crate::runtime::limits::InvocationLimits;
use crate::runtime::{
    Event, EventContext, InvocationError, LoadError, PluginRuntime, RuntimeConfig, Services,
    UserMessage,
};

#[derive(Debug, Subcommand)]
pub(super) enum PluginCommand {
    /// Print a component's digest, size, WIT version and requested
    /// capabilities.
    Inspect {
        /// The component file.
        file: PathBuf,
    },
    /// Run one event through a component and print its replies.
    ///
    /// Exit codes: 0 success, 1 failure, 2 usage, 3 missing grant,
    /// 4 limit or trap, 5 host call denied, 6 plugin error.
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub(super) struct RunArgs {
    /// The component file.
    file: PathBuf,
    /// Send a user message with this text; without it, the event is a
    /// conversation start.
    #[arg(long)]
    message: Option<String>,
    /// Grant a capability: `kv[=QUOTA_BYTES]`, `http=SCHEME://HOST:PORT`,
    /// `secrets=NAME[,NAME...]` or `config`. Repeat for more.
    #[arg(long = "grant", value_name = "CAP[=PARAM]")]
    grants: Vec<String>,
    /// Fuel for the event (roughly one unit per instruction).
    #[arg(long, default_value_t = InvocationLimits::default().fuel)]
    fuel: u64,
    /// Memory cap in bytes, summed over all memories.
    #[arg(long, default_value_t = InvocationLimits::default().memory_bytes)]
    memory: u64,
    /// Wall-clock deadline in milliseconds.
    #[arg(long, default_value_t = InvocationLimits::default().deadline_ms)]
    timeout_ms: u64,
    /// Keep key-value data in this directory between runs.
    #[arg(long)]
    kv_dir: Option<PathBuf>,
    /// A configuration value `KEY=VALUE` for the `config` capability.
    #[arg(long = "config", value_name = "KEY=VALUE")]
    config: Vec<String>,
    /// File of `NAME=VALUE` lines with secret values for the `secrets`
    /// capability. Secrets are never taken from the command line.
    #[arg(long)]
    secrets_file: Option<PathBuf>,
    /// User id the event runs for; key-value data in the user scope is kept
    /// per user.
    #[arg(long, default_value = "local-user")]
    user: String,
}

pub(super) async fn run(command: PluginCommand) -> ExitCode {
    let result = match command {
        PluginCommand::Inspect { file } => inspect(&file).await,
        PluginCommand::Run(args) => run_event(args).await,
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

async fn load(file: &Path) -> anyhow::Result<(PluginRuntime, Vec<u8>)> {
    let bytes = tokio::fs::read(file)
        .await
        .with_context(|| format!("failed to read `{}`", file.display()))?;
    let runtime = PluginRuntime::new(RuntimeConfig {
        concurrent_instances: 4,
    })?;
    Ok((runtime, bytes))
}

async fn inspect(file: &Path) -> anyhow::Result<ExitCode> {
    let (runtime, bytes) = load(file).await?;
    let plugin = match runtime.compile(&bytes) {
        Ok(plugin) => plugin,
        Err(error) => return Ok(report_load_error(&error)),
    };
    let info = plugin.info();
    let requested: Vec<&str> = info.requested.iter().map(|c| c.name()).collect();
    println!("digest:       sha256:{}", info.digest);
    println!("size:         {} bytes", info.size);
    println!("wit version:  botserver:bot@{}", info.wit_version);
    println!(
        "capabilities: {}",
        if requested.is_empty() {
            "none".to_owned()
        } else {
            requested.join(", ")
        }
    );
    println!("imports:");
    for import in &info.imports {
        println!("  {import}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_event(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut grants = GrantSet::default();
    for flag in &args.grants {
        grants.add_flag(flag).context("invalid `--grant`")?;
    }
    let limits = InvocationLimits {
        fuel: args.fuel,
        memory_bytes: args.memory,
        deadline_ms: args.timeout_ms,
        ..InvocationLimits::default()
    };
    limits.validate()?;
    let services = services(&args, grants.clone())?;

    let (runtime, bytes) = load(&args.file).await?;
    let prepared = match runtime
        .compile(&bytes)
        .and_then(|plugin| runtime.prepare(&plugin, &grants))
    {
        Ok(prepared) => prepared,
        Err(error) => return Ok(report_load_error(&error)),
    };
    let bot = args.file.file_stem().map_or_else(
        || "plugin".to_owned(),
        |stem| stem.to_string_lossy().into_owned(),
    );
    let context = EventContext {
        tenant: "local".to_owned(),
        bot,
        conversation: "local".to_owned(),
        user: args.user.clone(),
        locale: "en".to_owned(),
    };
    let event = match args.message {
        Some(text) => Event::UserMessage(UserMessage {
            text,
            attributes: Vec::new(),
        }),
        None => Event::ConversationStarted,
    };
    let result = runtime
        .invoke(&prepared, services, limits, context, event)
        .await;
    Ok(report_outcome(result))
}

fn services(args: &RunArgs, grants: GrantSet) -> anyhow::Result<Services> {
    let kv: Arc<dyn KvStore> = match &args.kv_dir {
        Some(dir) => Arc::new(
            FileKvStore::open(dir)
                .with_context(|| format!("failed to open `--kv-dir` `{}`", dir.display()))?,
        ),
        None => Arc::new(FileKvStore::in_memory()),
    };
    let secrets = match &args.secrets_file {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("failed to read `{}`", file.display()))?;
            MemorySecretStore::parse(&text).map_err(|line| {
                anyhow::anyhow!(
                    "invalid `{}` line {line}: expected `NAME=VALUE`",
                    file.display()
                )
            })?
        }
        None => MemorySecretStore::default(),
    };
    let mut config = BTreeMap::new();
    for pair in &args.config {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("invalid `--config` `{pair}`: expected `KEY=VALUE`"))?;
        config.insert(key.to_owned(), value.to_owned());
    }
    Ok(Services {
        grants: LiveGrants::new(grants),
        kv,
        secrets: Arc::new(secrets),
        config: Arc::new(config),
        resolver: Arc::new(SystemResolver),
    })
}

fn report_load_error(error: &LoadError) -> ExitCode {
    eprintln!("error: {error}");
    match error {
        LoadError::GrantMissing(missing) => {
            let flags: Vec<String> = missing.iter().map(|c| grant_hint(*c)).collect();
            eprintln!("hint: grant with {}", flags.join(" "));
            ExitCode::from(exit::GRANT_MISSING)
        }
        _ => ExitCode::from(exit::FAILURE),
    }
}

fn grant_hint(capability: Capability) -> String {
    match capability {
        Capability::Kv => "--grant kv".to_owned(),
        Capability::Http => "--grant http=SCHEME://HOST:PORT".to_owned(),
        Capability::Secrets => "--grant secrets=NAME".to_owned(),
        Capability::Config => "--grant config".to_owned(),
    }
}

fn report_outcome(
    result: Result<crate::runtime::Outcome, crate::runtime::FailedInvocation>,
) -> ExitCode {
    match result {
        Ok(outcome) => {
            for reply in &outcome.response.replies {
                println!("{}", reply.text);
                for suggestion in &reply.suggestions {
                    println!("  > {}", suggestion.text);
                }
            }
            match outcome.denials.first() {
                Some(denial) => {
                    eprintln!("error: denied: {}: {}", denial.capability, denial.reason);
                    ExitCode::from(exit::DENIED)
                }
                None => ExitCode::SUCCESS,
            }
        }
        Err(failed) => {
            if let Some(denial) = failed.denials.first() {
                eprintln!("error: denied: {}: {}", denial.capability, denial.reason);
                return ExitCode::from(exit::DENIED);
            }
            eprintln!("error: {}", failed.error);
            match failed.error {
                InvocationError::Handler(_) => ExitCode::from(exit::PLUGIN_ERROR),
                InvocationError::Host(_) => ExitCode::from(exit::FAILURE),
                _ => ExitCode::from(exit::LIMIT),
            }
        }
    }
}
