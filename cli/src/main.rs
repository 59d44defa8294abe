//! `flotilla`: the command-line interface to the hub. Errors are one line on stderr and a
//! non-zero exit.

use std::process::ExitCode;

use clap::Parser;
use flotilla_cli::{Cli, run};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    flotilla_proto::telemetry::init("warn", false);
    match run(cli).await {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flotilla: {e}");
            ExitCode::FAILURE
        }
    }
}
