//! `botserver serve`, `migrate`, `admin` and `keys`: the server commands,
//! and the dispatch of `demo`, whose setup lives in [`super::demo`].
//!
//! Each command loads the same configuration (`--config`, environment,
//! flags), so `admin bootstrap`, `keys rotate` and `demo` work on the
//! database and keys that `serve` uses.

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::auth::Role;
use crate::auth::password::{Password, PasswordHasher, check_policy};
use crate::config::{Config, Overrides};
use crate::crypto::keyfile::{MasterKeys, ensure_private_dir};
use crate::crypto::{KeyBytes, Vault};
use crate::http::{AppState, serve};
use crate::storage::users::{self, NewUser};
use crate::storage::{Db, Tenant, UserId, tenants};

/// Server commands, flattened into the top-level command line.
#[derive(Debug, clap::Subcommand)]
pub enum ServerCommand {
    /// Run the HTTP API server.
    Serve(ServeArgs),
    /// Set up a demo tenant with bots and accounts, print how to sign in,
    /// then serve like `serve`.
    Demo(super::demo::DemoArgs),
    /// Apply database migrations and exit.
    Migrate(CommonArgs),
    /// Administer accounts.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Manage encryption keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Verify, export or prune the audit trail.
    #[command(subcommand)]
    Audit(super::audit::AuditCommand),
}

/// Options shared by every server command.
#[derive(Debug, clap::Args)]
pub struct CommonArgs {
    /// TOML file with settings; environment variables override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory for the SQLite database and generated keys [default: ./data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Refuse to start when a key is missing instead of generating it
    /// (same as `BOTSERVER_ENV=production`).
    #[arg(long)]
    production: bool,
}

/// Options of `serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
}

/// `admin` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Create the first platform admin, reading the password from stdin.
    Bootstrap {
        /// Shared options.
        #[command(flatten)]
        common: CommonArgs,
        /// Tenant of the admin; created when it does not exist.
        #[arg(long)]
        tenant: String,
        /// Login name of the admin.
        #[arg(long)]
        username: String,
    },
}

/// `keys` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Add a new data key version for every tenant and rewrap stored data
    /// keys under the current master key. Safe while servers run.
    Rotate {
        /// Shared options.
        #[command(flatten)]
        common: CommonArgs,
        /// File with a previous master key (64 hex characters) that still
        /// wraps some data keys; repeat for several.
        #[arg(long, value_name = "FILE")]
        previous_key_file: Vec<PathBuf>,
    },
}

/// Runs a server command.
///
/// # Errors
///
/// Returns an error naming the step that failed.
pub async fn run(command: ServerCommand) -> anyhow::Result<()> {
    match command {
        ServerCommand::Serve(args) => run_serve(args).await,
        ServerCommand::Demo(args) => super::demo::run(args).await,
        ServerCommand::Migrate(common) => run_migrate(&common).await,
        ServerCommand::Admin(AdminCommand::Bootstrap {
            common,
            tenant,
            username,
        }) => run_bootstrap(&common, &tenant, &username).await,
        ServerCommand::Keys(KeysCommand::Rotate {
            common,
            previous_key_file,
        }) => run_rotate(&common, &previous_key_file).await,
        ServerCommand::Audit(command) => super::audit::run(command).await,
    }
}

pub(super) fn load_config(
    common: &CommonArgs,
    listen: Option<SocketAddr>,
) -> anyhow::Result<Config> {
    let overrides = Overrides {
        config_file: common.config.clone(),
        listen,
        data_dir: common.data_dir.clone(),
        production: common.production,
    };
    Ok(Config::from_env(&overrides)?)
}

pub(super) async fn open_db(config: &Config) -> anyhow::Result<Db> {
    ensure_private_dir(&config.data_dir).with_context(|| {
        format!(
            "failed to prepare data directory `{}`",
            config.data_dir.display()
        )
    })?;
    let db = Db::connect(config.database_url.as_deref(), &config.sqlite_path())
        .await
        .context("failed to open the database")?;
    db.migrate()
        .await
        .context("failed to migrate the database")?;
    Ok(db)
}

async fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    let state = build_state(&args).await?;
    let (listener, bound) = bind(&state).await?;
    let scheme = if state.config.serves_tls() {
        "https"
    } else {
        "http"
    };
    eprintln!("botserver listening on {scheme}://{bound}");
    serve_until_signal(listener, state).await
}

/// Loads the configuration from `args` and builds the server state: data
/// directory, keys, migrated database and session store.
pub(super) async fn build_state(args: &ServeArgs) -> anyhow::Result<AppState> {
    let config = load_config(&args.common, args.listen)?;
    if let Some(dir) = &config.extra.log_dir {
        super::logging::start_files(dir, config.extra.log_retention_days)?;
    }
    AppState::build(config)
        .await
        .context("failed to start the server")
}

/// Binds the configured listen address. Returns the listener and its bound
/// address, which differs from the configured one for port 0.
pub(super) async fn bind(state: &AppState) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listen = state.config.listen;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("failed to listen on `{listen}`"))?;
    let bound = listener
        .local_addr()
        .context("failed to read the bound address")?;
    tracing::info!(listen.address = %bound, "server listening");
    Ok((listener, bound))
}

/// Serves the API on `listener` until SIGINT or SIGTERM.
pub(super) async fn serve_until_signal(
    listener: TcpListener,
    state: AppState,
) -> anyhow::Result<()> {
    serve(listener, state, shutdown_signal()).await?;
    tracing::info!("server stopped");
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::warn!(%error, "failed to listen for SIGTERM; stop with SIGINT");
                let _ = interrupt.await;
                return;
            }
        };
    tokio::select! {
        _ = interrupt => {}
        _ = terminate.recv() => {}
    }
}

async fn run_migrate(common: &CommonArgs) -> anyhow::Result<()> {
    let config = load_config(common, None)?;
    let db = open_db(&config).await?;
    db.close().await;
    eprintln!("migrations applied");
    Ok(())
}

async fn run_bootstrap(
    common: &CommonArgs,
    tenant_name: &str,
    username: &str,
) -> anyhow::Result<()> {
    let config = load_config(common, None)?;
    let Some(tenant_name) = tenants::normalize_name(tenant_name) else {
        bail!("invalid `--tenant`: expected {}", tenants::NAME_RULE);
    };
    let Some(username) = users::normalize_username(username) else {
        bail!("invalid `--username`: expected {}", users::USERNAME_RULE);
    };
    let password = read_password_from_stdin()?;
    check_policy(&password, &username).context("password rejected")?;

    let db = open_db(&config).await?;
    let keys = MasterKeys::load(&config).context("failed to load the master keys")?;
    let vault = Vault::new(db.clone(), keys.database, Vec::new());
    let tenant = find_or_create_tenant(&db, &vault, &tenant_name).await?;
    if users::find_by_username(&db, tenant.id, &username)
        .await?
        .is_some()
    {
        bail!("user `{username}` already exists in tenant `{tenant_name}`");
    }

    let hasher = PasswordHasher::new(1)?;
    let hash = hasher.hash(&password).await?;
    let id = UserId(Uuid::new_v4());
    let user = NewUser {
        id,
        tenant_id: tenant.id,
        username: &username,
        password_hash: &hash,
        role: Role::PlatformAdmin,
        email_sealed: None,
    };
    users::insert(&db, user)
        .await
        .with_context(|| format!("failed to create user `{username}`"))?;
    db.close().await;
    eprintln!(
        "created platform admin `{username}` ({id}) in tenant `{}` ({})",
        tenant.name, tenant.id
    );
    Ok(())
}

/// Returns the tenant called `name`, created with its data key when it does
/// not exist yet.
pub(super) async fn find_or_create_tenant(
    db: &Db,
    vault: &Vault,
    name: &str,
) -> anyhow::Result<Tenant> {
    let tenant = match tenants::find(db, name).await? {
        Some(tenant) => tenant,
        None => tenants::create(db, name)
            .await
            .with_context(|| format!("failed to create tenant `{name}`"))?,
    };
    vault.ensure_tenant_key(tenant.id).await?;
    Ok(tenant)
}

/// Reads one line from stdin as the password, so it never appears in argv
/// or the shell history.
fn read_password_from_stdin() -> anyhow::Result<Password> {
    let mut line = zeroize::Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("failed to read the password from stdin")?;
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        bail!(
            "missing password: write it to stdin, for example `botserver admin bootstrap ... < password-file`"
        );
    }
    Ok(Password::new(password))
}

async fn run_rotate(common: &CommonArgs, previous_key_files: &[PathBuf]) -> anyhow::Result<()> {
    let config = load_config(common, None)?;
    let db = open_db(&config).await?;
    let keys = MasterKeys::load(&config).context("failed to load the master keys")?;
    let mut previous = Vec::new();
    for path in previous_key_files {
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(path)
                .with_context(|| format!("failed to read `{}`", path.display()))?,
        );
        previous.push(
            KeyBytes::from_hex(&text)
                .with_context(|| format!("invalid key in `{}`", path.display()))?,
        );
    }
    let vault = Vault::new(db.clone(), keys.database, previous);
    let report = vault.rotate().await.context("failed to rotate data keys")?;
    db.close().await;
    eprintln!(
        "rotated: {} tenants got a new data key version, {} data keys rewrapped",
        report.new_versions, report.rewrapped
    );
    Ok(())
}
