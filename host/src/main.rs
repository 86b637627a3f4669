//! The `botserver` binary: parses the command line and hands over to the
//! library, which owns every command.

use std::process::ExitCode;

fn main() -> ExitCode {
    botserver::cli::main()
}
