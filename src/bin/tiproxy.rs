//! The `tiproxy` binary: parse flags, load the config, start logging, serve until a signal.

use std::process::ExitCode;
use tiproxy::app::{App, Signals};
use tiproxy::config::{config_info_json, load_file, parse_args, Config};
use tracing::{info, warn};

fn main() -> ExitCode {
    let argv0 = std::env::args().next().unwrap_or_else(|| "tiproxy".into());
    let cli = match parse_args(std::env::args_os()) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if cli.version {
        println!("{}", tiproxy::version::version_line(&argv0));
        return ExitCode::SUCCESS;
    }
    if let Some(format) = &cli.config_info {
        if format != "json" {
            eprintln!("{argv0}: --config-info supports only \"json\", not {format:?}");
            return ExitCode::from(2);
        }
        println!("{}", config_info_json());
        return ExitCode::SUCCESS;
    }
    let (mut config, warnings) = match &cli.config {
        Some(path) => match load_file(path) {
            Ok(l) => (l.config, l.warnings),
            Err(e) => {
                eprintln!("{argv0}: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => (Config::default(), Vec::new()),
    };
    cli.apply(&mut config);
    if let Err(e) = config.validate() {
        eprintln!("{argv0}: {e}");
        return ExitCode::FAILURE;
    }
    let log = match tiproxy::logging::init(&config.log) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("{argv0}: cannot start logging: {e}");
            return ExitCode::FAILURE;
        }
    };
    tiproxy::metrics::panics::count_and_log();
    for w in &warnings {
        warn!("{w}");
    }
    info!(
        version = tiproxy::version::VERSION,
        commit = tiproxy::version::GIT_HASH,
        "tiproxy starting"
    );
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{argv0}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let mut signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{argv0}: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        let app = match App::start_with_log(config, Some(log)).await {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("{e:#}");
                eprintln!("{argv0}: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        if let Some(path) = cli.config.clone() {
            let flags = cli.clone();
            app.watch_config_file(path, move |c| flags.apply(c));
        }
        let sig = signals.next().await;
        info!(signal = sig, "shutting down");
        app.shutdown(&mut signals).await;
        ExitCode::SUCCESS
    })
}
