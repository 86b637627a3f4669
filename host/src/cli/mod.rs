//! The `botserver` command line.
//!
//! This module parses arguments, sets up logging and the async runtime, and
//! maps each command's result to an exit code. The commands themselves live
//! in the submodules.

#[cfg(feature = "server")]
mod audit;
#[cfg(feature = "server")]
mod chat;
#[cfg(feature = "server")]
pub mod demo;
pub mod logging;
mod plugin;
#[cfg(feature = "server")]
pub mod server;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Hosts chat bots as sandboxed WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "botserver", version, about)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect and run plugin components without a server.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    #[cfg(feature = "server")]
    #[command(flatten)]
    Server(server::ServerCommand),
    /// Chat with a bot: sign in, then send each line of stdin as a message.
    ///
    /// The password is the first line of stdin, or is prompted for on a
    /// terminal. A line that is just a number picks that suggestion.
    /// Exit codes: 0 end of input, 1 failure, 2 usage, 7 rejected by the
    /// server, 8 connection closed by the server.
    #[cfg(feature = "server")]
    Chat(chat::ChatArgs),
}

/// Process exit codes, so that scripts can tell failures apart.
pub mod exit {
    /// The command failed for a reason not listed below (I/O, invalid
    /// component, unknown import).
    pub const FAILURE: u8 = 1;
    /// The plugin needs a capability that was not granted.
    pub const GRANT_MISSING: u8 = 3;
    /// The plugin broke a limit or trapped.
    pub const LIMIT: u8 = 4;
    /// A host call was denied by the grant policy.
    pub const DENIED: u8 = 5;
    /// The plugin returned an error of its own.
    pub const PLUGIN_ERROR: u8 = 6;
    /// `chat`: the server rejected the sign-in, the WebSocket ticket or the
    /// upgrade.
    pub const REJECTED: u8 = 7;
    /// `chat`: the server closed the connection, or it was lost, before the
    /// end of input.
    pub const DISCONNECTED: u8 = 8;
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: failed to start the async runtime: {error}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Plugin(command) => plugin::run(command).await,
            #[cfg(feature = "server")]
            Command::Server(command) => match server::run(command).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("error: {error:#}");
                    ExitCode::from(exit::FAILURE)
                }
            },
            #[cfg(feature = "server")]
            Command::Chat(args) => chat::run(args).await,
        }
    });
    logging::finish();
    code
}
