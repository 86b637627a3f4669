//! `botserver demo`: sets up a demo tenant on the configured server, prints
//! where to chat and how to sign in, then serves like `botserver serve`.
//!
//! [`seed`] does the setup and can run any number of times on the same
//! database. It creates or updates tenant `demo` and the accounts `admin`
//! (tenant admin) and `alice` (user), with new random passwords. It
//! uploads the plugins `echo`, `counter` and `faq` from a directory of
//! built components, grants `kv` to the last two, and runs one enabled bot
//! per plugin. Then it loads the `faq` bot's knowledge base from a file
//! (see [`knowledge`]). It calls the storage functions, the runtime's
//! validation and the grant registry that the HTTP API calls. The API's
//! name and limit checks are skipped, because the fixed names and default
//! limits here pass them.

pub mod knowledge;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::server::{self, ServeArgs};
use crate::auth::Role;
use crate::auth::password::{Password, check_policy};
use crate::capabilities::kv::KvGrant;
use crate::crypto::fill_random;
use crate::http::AppState;
use crate::runtime::limits::InvocationLimits;
use crate::storage::bots::{self, Bot, Visibility};
use crate::storage::kv::DbKvStore;
use crate::storage::users::{self, NewUser, UserChanges};
use crate::storage::{Tenant, UserId, now_unix, plugins};

/// Name of the demo tenant.
pub const TENANT: &str = "demo";

/// Login name of the demo's tenant admin.
pub const ADMIN: &str = "admin";

/// Login name of the demo's bot user.
pub const USER: &str = "alice";

/// Key-value quota granted to each demo plugin that requests `kv`, in bytes.
/// The FAQ knowledge base of the demo takes about 6 KiB of it.
pub const KV_QUOTA_BYTES: u64 = 1024 * 1024;

/// Random bytes in a generated password: 120 bits, printed as 20 base64url
/// characters.
const PASSWORD_BYTES: usize = 15;

/// Version label of the uploaded plugins. They are built from this
/// workspace, so they share the host's version.
const PLUGIN_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Name of the bot whose knowledge base [`seed`] loads.
pub const FAQ_BOT: &str = "faq";

/// A bot of the demo and the plugin it runs.
struct DemoBot {
    /// Name of the bot, of the plugin and of its component file
    /// `<name>.wasm`.
    name: &'static str,
    visibility: Visibility,
    grants_kv: bool,
}

const BOTS: [DemoBot; 3] = [
    DemoBot {
        name: "echo",
        visibility: Visibility::Members,
        grants_kv: false,
    },
    DemoBot {
        name: "counter",
        visibility: Visibility::Members,
        grants_kv: true,
    },
    // Public, so that visitors without an account can ask it questions
    // through an anonymous session.
    DemoBot {
        name: FAQ_BOT,
        visibility: Visibility::Public,
        grants_kv: true,
    },
];

/// Options of `demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    #[command(flatten)]
    serve: ServeArgs,
    /// Directory with the built plugins `echo.wasm`, `counter.wasm` and
    /// `faq.wasm`; `scripts/build-plugins` writes them to `target/plugins`.
    #[arg(long, value_name = "DIR")]
    plugins: PathBuf,
    /// Knowledge file of the `faq` bot, in the format of
    /// `examples/demo/faq.md`.
    #[arg(long, value_name = "FILE")]
    knowledge: PathBuf,
}

/// Locations of the plugins and the knowledge base that [`seed`] reads.
#[derive(Clone, Debug)]
pub struct DemoSources {
    /// Directory with `echo.wasm`, `counter.wasm` and `faq.wasm`.
    pub plugins: PathBuf,
    /// Knowledge file of the `faq` bot.
    pub knowledge: PathBuf,
}

/// An account of the demo and the password it got in this run.
#[derive(Debug)]
pub struct DemoAccount {
    /// Login name.
    pub username: &'static str,
    /// The new password; `Debug` redacts it.
    pub password: Password,
}

/// The accounts that [`seed`] set up.
#[derive(Debug)]
pub struct DemoAccounts {
    /// The tenant admin.
    pub admin: DemoAccount,
    /// The bot user.
    pub user: DemoAccount,
}

/// Runs `botserver demo`.
///
/// # Errors
///
/// Fails when the server cannot start, the setup fails or serving fails.
/// The message names the step.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let state = server::build_state(&args.serve).await?;
    let (listener, bound) = server::bind(&state).await?;
    let sources = DemoSources {
        plugins: args.plugins,
        knowledge: args.knowledge,
    };
    let accounts = seed(&state, &sources)
        .await
        .context("failed to set up the demo")?;
    print_welcome(bound, &accounts);
    server::serve_until_signal(listener, state).await
}

/// Sets up the demo tenant, accounts, plugins, bots and knowledge base as
/// the module docs describe, and returns the accounts with their new
/// passwords. Sessions of the accounts from earlier runs end.
///
/// # Errors
///
/// Fails when the knowledge file or a plugin cannot be read or is invalid,
/// when a plugin requests more than `kv`, or when storage fails. The
/// message names the file or the step.
pub async fn seed(state: &AppState, sources: &DemoSources) -> anyhow::Result<DemoAccounts> {
    let knowledge = knowledge::read(&sources.knowledge)?;
    let tenant = server::find_or_create_tenant(&state.db, &state.vault, TENANT).await?;
    let admin = reset_account(state, &tenant, ADMIN, Role::TenantAdmin).await?;
    let user = reset_account(state, &tenant, USER, Role::User).await?;
    for bot in &BOTS {
        let digest = install_plugin(state, &tenant, sources, bot).await?;
        save_bot(state, &tenant, bot, digest).await?;
    }
    let kv = DbKvStore::new(state.db.clone(), Arc::clone(&state.vault));
    knowledge::store(&kv, tenant.id, FAQ_BOT, &knowledge, KV_QUOTA_BYTES)
        .await
        .context("failed to store the knowledge base of the `faq` bot")?;
    tracing::info!(tenant.id = %tenant.id, faq.entries = knowledge.len(), "demo set up");
    Ok(DemoAccounts { admin, user })
}

/// Creates the account, or resets an existing one to `role` with a new
/// password, enabled and unlocked, and ends its sessions as a password
/// change through the API does.
async fn reset_account(
    state: &AppState,
    tenant: &Tenant,
    username: &'static str,
    role: Role,
) -> anyhow::Result<DemoAccount> {
    let password = generate_password()?;
    check_policy(&password, username).context("generated password rejected")?;
    let password_hash = state.auth.hasher().hash(&password).await?;
    let failed = || format!("failed to set up user `{username}`");
    match users::find_by_username(&state.db, tenant.id, username).await? {
        Some(existing) => {
            let changes = UserChanges {
                role: Some(role),
                disabled: Some(false),
                password_hash: Some(password_hash),
                ..UserChanges::default()
            };
            let updated = users::update(&state.db, tenant.id, existing.id, changes)
                .await
                .with_context(failed)?;
            let unlocked = users::unlock(&state.db, tenant.id, existing.id)
                .await
                .with_context(failed)?;
            if !(updated && unlocked) {
                bail!("user `{username}` was deleted while the demo set it up");
            }
            state.auth.revoke_user_sessions(existing.id).await?;
        }
        None => {
            let user = NewUser {
                id: UserId(Uuid::new_v4()),
                tenant_id: tenant.id,
                username,
                password_hash: &password_hash,
                role,
                email_sealed: None,
            };
            users::insert(&state.db, user).await.with_context(failed)?;
        }
    }
    Ok(DemoAccount { username, password })
}

fn generate_password() -> anyhow::Result<Password> {
    let mut bytes = Zeroizing::new([0u8; PASSWORD_BYTES]);
    fill_random(bytes.as_mut_slice())?;
    Ok(Password::new(URL_SAFE_NO_PAD.encode(bytes.as_slice())))
}

/// Uploads the bot's plugin as the upload route does (validated by the
/// runtime, stored once per digest), grants it what the demo grants, and
/// returns its digest.
async fn install_plugin(
    state: &AppState,
    tenant: &Tenant,
    sources: &DemoSources,
    bot: &DemoBot,
) -> anyhow::Result<String> {
    let path = sources.plugins.join(format!("{}.wasm", bot.name));
    let component = bytes::Bytes::from(tokio::fs::read(&path).await.with_context(|| {
        format!(
            "failed to read plugin `{}`; build the plugins with `scripts/build-plugins`",
            path.display()
        )
    })?);
    let runtime = Arc::clone(state.bots.runtime());
    let compiling = component.clone();
    let compiled = tokio::task::spawn_blocking(move || runtime.compile(&compiling))
        .await
        .context("compile task failed")?
        .with_context(|| format!("invalid plugin `{}`", path.display()))?;
    let info = compiled.info();
    plugins::insert(
        &state.db,
        tenant.id,
        info,
        bot.name,
        PLUGIN_VERSION,
        &component,
    )
    .await?;
    let digest = info.digest.as_str().to_owned();
    grant(state, tenant, bot, &digest).await?;
    Ok(digest)
}

/// Gives the plugin a `kv` grant when the demo grants it one, through the
/// grant registry as the grants route does, and checks that nothing it
/// requests is left ungranted.
async fn grant(
    state: &AppState,
    tenant: &Tenant,
    bot: &DemoBot,
    digest: &str,
) -> anyhow::Result<()> {
    let mut record = plugins::find(&state.db, tenant.id, digest)
        .await?
        .with_context(|| format!("plugin `{}` was deleted while the demo set it up", bot.name))?;
    let mut grants = record.grants.clone();
    if bot.grants_kv {
        grants.kv = Some(KvGrant {
            quota_bytes: KV_QUOTA_BYTES,
        });
    }
    if grants != record.grants {
        let stored = plugins::set_grants(&state.db, tenant.id, digest, &grants);
        let found = state
            .bots
            .grants()
            .change(tenant.id, digest, &record.grants, &grants, stored)
            .await?;
        if !found {
            bail!("plugin `{}` was deleted while the demo set it up", bot.name);
        }
        record.grants = grants;
    }
    let missing = record.missing();
    if !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(|c| format!("`{c}`")).collect();
        bail!(
            "plugin `{}` requests {}, which the demo does not grant",
            bot.name,
            names.join(", ")
        );
    }
    Ok(())
}

/// Creates the bot, or points an existing one at `digest`, enabled and with
/// the demo's visibility; limits and configuration of an existing bot stay.
async fn save_bot(
    state: &AppState,
    tenant: &Tenant,
    demo: &DemoBot,
    digest: String,
) -> anyhow::Result<()> {
    let failed = || format!("failed to set up bot `{}`", demo.name);
    match bots::find(&state.db, tenant.id, demo.name).await? {
        Some(mut bot) => {
            bot.plugin_digest = digest;
            bot.enabled = true;
            bot.visibility = demo.visibility;
            let updated = bots::update(&state.db, tenant.id, &bot)
                .await
                .with_context(failed)?;
            if !updated {
                bail!("bot `{}` was deleted while the demo set it up", demo.name);
            }
        }
        None => {
            let now = now_unix();
            let bot = Bot {
                name: demo.name.to_owned(),
                plugin_digest: digest,
                enabled: true,
                visibility: demo.visibility,
                limits: InvocationLimits::default(),
                config: BTreeMap::new(),
                created_at: now,
                updated_at: now,
            };
            bots::insert(&state.db, tenant.id, &bot)
                .await
                .with_context(failed)?;
        }
    }
    state.bots.reset_breaker(tenant.id, demo.name);
    Ok(())
}

/// Prints where to chat and the demo's credentials on stdout.
fn print_welcome(bound: SocketAddr, accounts: &DemoAccounts) {
    let DemoAccounts { admin, user } = accounts;
    let (admin_name, admin_password) = (admin.username, admin.password.expose());
    let (user_name, user_password) = (user.username, user.password.expose());
    println!();
    println!("BotServer demo: open http://{bound}/");
    println!();
    println!("  tenant  {TENANT}");
    println!("  admin   {admin_name} / {admin_password}  (tenant admin)");
    println!("  user    {user_name} / {user_password}");
    println!("  bots    echo and counter for signed-in users, faq for anyone");
    println!();
    println!("Chat in a terminal (it asks for the password):");
    println!(
        "  botserver chat --url http://{bound} --tenant {TENANT} --username {user_name} --bot counter"
    );
    println!();
    println!("The passwords change at every start. Stop with Ctrl-C.");
}
