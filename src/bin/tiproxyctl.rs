//! The `tiproxyctl` binary: parse flags and hand over to `tiproxy::ctl`.

use clap::Parser;
use std::process::ExitCode;
use tiproxy::ctl::{run, Cli, EXIT_UNREACHABLE, EXIT_USAGE};

fn main() -> ExitCode {
    let argv0 = std::env::args()
        .next()
        .unwrap_or_else(|| "tiproxyctl".into());
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{argv0}: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    ExitCode::from(rt.block_on(run(cli, &argv0)))
}
