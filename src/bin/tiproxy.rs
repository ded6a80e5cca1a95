//! The `tiproxy` binary: parse flags, load the config, start logging, serve until a signal.

use std::process::ExitCode;
use tiproxy::app::{App, Signals};
use tiproxy::config::Config;
use tracing::info;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let argv0 = args.first().cloned().unwrap_or_else(|| "tiproxy".into());
    if args.iter().any(|a| a == "-v" || a == "--version") {
        println!("{}", tiproxy::version::version_line(&argv0));
        return ExitCode::SUCCESS;
    }
    let mut config = Config::default();
    let mut i = 1;
    while i < args.len() {
        if args[i] == "--backend-addrs" {
            config.proxy.backend_addrs = args[i + 1].split(',').map(|s| s.to_string()).collect();
            i += 1;
        } else if args[i] == "--addr" {
            config.proxy.addr = args[i + 1].clone();
            i += 1;
        }
        i += 1;
    }
    let _log = tiproxy::logging::init(&config.log);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let mut signals = Signals::install().expect("signals");
        let app = match App::start(config).await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("tiproxy: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        let sig = signals.next().await;
        info!(signal = sig, "shutting down");
        app.shutdown(&mut signals).await;
        ExitCode::SUCCESS
    })
}
