//! The process lifecycle: build the services from a config, serve, and shut down gracefully
//! on a signal (stop accepting, let transactions finish, then exit).

use crate::api::{self, ApiState};
use crate::balance::BackendSet;
use crate::config::Config;
use crate::discovery;
use crate::health;
use crate::logging::LogHandle;
use crate::protocol::stream::TlsContext;
use crate::proxy::query_log::QueryErrorLog;
use crate::proxy::workers::Workers;
use crate::proxy::{server, tls, ProxyContext, SessionSettings};
use crate::reload::{self, Running};
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// How often the config file is checked for changes.
const CONFIG_POLL: Duration = Duration::from_secs(1);

/// How long shutdown waits for the background tasks once they are told to stop; PD
/// deregistration bounds itself below this, so only a stuck task reaches it.
const TASKS_BOUND: Duration = Duration::from_secs(5);

/// Puts a started service's task under `tasks`.
fn track(tasks: &TaskTracker, task: JoinHandle<()>) {
    tasks.spawn(async move {
        let _ = task.await;
    });
}

/// The running proxy: what a shutdown needs to reach.
pub struct App {
    pub ctx: Arc<ProxyContext>,
    /// The config the proxy started with; `running` has the current one.
    pub config: Arc<Config>,
    pub running: Arc<Running>,
    /// The bound SQL and status ports (useful when the config asked for port 0).
    pub sql_addr: SocketAddr,
    /// Every SQL port, in `[proxy] addr` order (the first is `sql_addr`).
    pub sql_addrs: Vec<SocketAddr>,
    pub api_addr: SocketAddr,
    /// Set first thing on shutdown; the health API answers 502 from then on.
    pub draining: CancellationToken,
    background: CancellationToken,
    /// The api, health, SQL server, rebalance, discovery and config-watch tasks; shutdown
    /// awaits them (bounded) so PD keys are removed and no task outlives the App unseen.
    tasks: TaskTracker,
    /// The status port's state; the config file's path reaches the namespace API through it.
    api_state: Arc<ApiState>,
    /// The threads sessions run on; they stop when the App is dropped.
    _workers: Arc<Workers>,
}

impl App {
    /// Binds the SQL port and starts every service. Nothing here waits for a backend or PD.
    pub async fn start(config: Config) -> anyhow::Result<App> {
        Self::start_with_log(config, None).await
    }

    /// Like `start`, with the logger's handle so `log.level` changes apply without a restart.
    pub async fn start_with_log(config: Config, log: Option<LogHandle>) -> anyhow::Result<App> {
        let http_tls = tls::server_config(&config.security.server_http_tls)
            .context("[security.server-http-tls]")?;
        let mut tls = TlsContext::new(
            tls::server_config(&config.security.server_tls).context("[security.server-tls]")?,
            tls::client_config(&config.security.sql_tls).context("[security.sql-tls]")?,
        );
        tls.require_client_cert = tls::requires_client_cert(&config.security.server_tls);
        tls::warn_unverified_backends(&config.security.sql_tls);
        if config.balance.routing_rule == "proxy_cidr" {
            tracing::warn!("balance.routing-rule = \"proxy_cidr\" has no effect here: sessions are not grouped by the address of a load balancer in front of the proxy (docs/balance.md)");
        }
        crate::hardening::disable_core_dumps();
        let backends = Arc::new(BackendSet::new(&config.static_backend_addrs()));
        let ctx = Arc::new(ProxyContext::new(
            SessionSettings::from_config(&config),
            tls,
            backends.clone(),
            QueryErrorLog::new(!config.log.query_error_file.filename.is_empty()),
        ));
        let mut listeners = Vec::new();
        for addr in crate::config::routes::listen_addrs(&config.proxy.addr) {
            let l = crate::proxy::listen::bind_sql(&addr)
                .await
                .with_context(|| format!("cannot listen on [proxy] addr = {addr:?}"))?;
            listeners.push(l);
        }
        anyhow::ensure!(!listeners.is_empty(), "[proxy] addr names no address");
        let api_listener = TcpListener::bind(&config.api.addr)
            .await
            .with_context(|| format!("cannot listen on [api] addr = {:?}", config.api.addr))?;
        let sql_addrs = listeners
            .iter()
            .map(|l| l.local_addr())
            .collect::<Result<Vec<_>, _>>()?;
        let sql_addr = sql_addrs[0];
        let api_addr = api_listener.local_addr()?;
        let running = Arc::new(Running::new(config.clone(), ctx.clone()));
        if let Some(h) = log {
            running.set_log_handle(h);
        }
        let background = CancellationToken::new();
        let draining = CancellationToken::new();
        let state = Arc::new(ApiState::new(
            ctx.clone(),
            running.clone(),
            draining.clone(),
        ));
        let api_state = state.clone();
        let tasks = TaskTracker::new();
        track(
            &tasks,
            api::start(api_listener, state, http_tls, background.clone()),
        );
        let health_settings = running.clone();
        let health_task = health::start(
            backends.clone(),
            move || {
                let cfg = health_settings.get();
                health::ProbeSettings {
                    health: cfg.health.clone(),
                    account: cfg.proxy.service_account.clone(),
                    status_addrs: cfg.proxy.backend_status_addrs.clone(),
                    proxy_header: cfg.proxy.sends_proxy_header(),
                }
            },
            ctx.events.clone(),
            background.clone(),
        );
        track(&tasks, health_task);
        let engine = crate::proxy::workers::io_engine(&config.proxy.io_engine);
        let workers =
            Arc::new(Workers::per_core(engine).context("cannot start the session workers")?);
        info!(
            workers = workers.len(),
            io_engine = workers.engine().name(),
            "session workers started"
        );
        for listener in listeners {
            let accepting = server::start(listener, ctx.clone(), workers.clone())
                .context("cannot accept SQL connections on the session workers")?;
            track(&tasks, accepting);
        }
        track(
            &tasks,
            crate::proxy::rebalance::start(ctx.clone(), background.clone()),
        );
        let discovery = discovery::start(&config, backends, background.clone());
        let no_pd = discovery.is_none();
        if let Some(task) = discovery {
            track(&tasks, task);
        }
        if config.static_backend_addrs().is_empty() && no_pd {
            warn!("no backend is configured: set [proxy] backend-addrs or --backend-addrs; clients will get error 9001 until one is");
        }
        Ok(App {
            ctx,
            config: Arc::new(config),
            running,
            sql_addr,
            sql_addrs,
            api_addr,
            draining,
            background,
            tasks,
            api_state,
            _workers: workers,
        })
    }

    /// Re-reads `path` when it changes and applies it like `PUT /api/admin/config`;
    /// `overrides` re-applies the command-line flags, which win over the file.
    pub fn watch_config_file(
        &self,
        path: std::path::PathBuf,
        overrides: impl Fn(&mut Config) + Send + 'static,
    ) {
        self.api_state.namespaces.set_file(path.clone());
        let running = self.running.clone();
        let shown = path.display().to_string();
        let watcher = crate::config::watch::start(
            path,
            CONFIG_POLL,
            self.background.clone(),
            move |loaded| {
                for w in &loaded.warnings {
                    warn!(file = %shown, "{w}");
                }
                let mut next = loaded.config;
                overrides(&mut next);
                if let Err(e) = reload::apply(&running, next) {
                    warn!(file = %shown, error = %e, "config file rejected; the running config stays");
                }
            },
        );
        track(&self.tasks, watcher);
    }

    /// Graceful shutdown: keep serving for graceful-wait-before-shutdown, then refuse new
    /// sessions, close each session at its next transaction boundary, and force-close what is
    /// left after graceful-close-conn-timeout. A second signal skips the waiting.
    pub async fn shutdown(&self, hurry: &mut Signals) {
        self.draining.cancel();
        let config = self.running.get();
        let wait = Duration::from_secs(config.proxy.graceful_wait_before_shutdown);
        if !wait.is_zero() {
            info!(
                seconds = wait.as_secs(),
                "still serving before shutdown (graceful-wait-before-shutdown)"
            );
            tokio::select! {
                _ = crate::timer::sleep(wait) => {}
                _ = hurry.next() => {}
            }
        }
        self.ctx.reject_new.cancel();
        self.ctx.begin_closing();
        let limit = Duration::from_secs(config.proxy.graceful_close_conn_timeout);
        let left = self.ctx.active_sessions();
        if left > 0 {
            info!(
                sessions = left,
                timeout_seconds = limit.as_secs(),
                "waiting for sessions to finish their transactions"
            );
        }
        let drained = tokio::select! {
            d = wait_until_idle(&self.ctx, limit) => d,
            _ = hurry.next() => false,
        };
        if !drained {
            warn!(
                sessions = self.ctx.active_sessions(),
                "closing sessions still in a transaction"
            );
        }
        self.ctx.close_all_now();
        // A running capture writes out its files and meta file; a replay stops.
        self.ctx.traffic.jobs.cancel(None).await;
        self.background.cancel();
        self.tasks.close();
        if crate::timer::timeout(TASKS_BOUND, self.tasks.wait())
            .await
            .is_err()
        {
            warn!(
                tasks = self.tasks.len(),
                seconds = TASKS_BOUND.as_secs(),
                "background tasks still running after shutdown asked them to stop"
            );
        }
        wait_until_idle(&self.ctx, Duration::from_secs(2)).await;
        info!("proxy stopped");
    }
}

async fn wait_until_idle(ctx: &ProxyContext, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while ctx.active_sessions() > 0 {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        crate::timer::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// SIGINT, SIGTERM, SIGQUIT and SIGHUP all mean "shut down gracefully" (TiUP sends each).
/// A handler writes the signal's number to a pipe that the control runtime reads. Not tokio's
/// signal support: with it compiled in, every runtime (each session worker too) carries a
/// signal and a child-process driver that its every wake-up polls, a few hundred instructions
/// per query on the data path.
pub struct Signals {
    pipe: tokio::net::unix::pipe::Receiver,
}

static SIGNAL_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    // Async-signal-safe: one write to a non-blocking pipe, errno kept for the code interrupted.
    // SAFETY: errno is thread-local; the byte lives on this stack frame.
    unsafe {
        let errno = *libc::__errno_location();
        let fd = SIGNAL_PIPE.load(std::sync::atomic::Ordering::Relaxed);
        if fd >= 0 {
            let byte = sig as u8;
            libc::write(fd, std::ptr::addr_of!(byte).cast(), 1);
        }
        *libc::__errno_location() = errno;
    }
}

impl Signals {
    /// Installs the handlers (once per process; inside a tokio runtime with I/O enabled).
    pub fn install() -> std::io::Result<Self> {
        use std::os::fd::FromRawFd;
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills both descriptors, which are then owned here.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fresh descriptors from pipe2.
        let read = unsafe { std::os::fd::OwnedFd::from_raw_fd(fds[0]) };
        let old = SIGNAL_PIPE.swap(fds[1], std::sync::atomic::Ordering::Relaxed);
        if old >= 0 {
            // SAFETY: the write end of an earlier install, no longer used.
            unsafe { libc::close(old) };
        }
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGQUIT, libc::SIGHUP] {
            // SAFETY: a zeroed sigaction with a handler that only writes to a pipe.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                if libc::sigaction(sig, &action, std::ptr::null_mut()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        Ok(Self {
            pipe: tokio::net::unix::pipe::Receiver::from_owned_fd(read)?,
        })
    }

    /// The name of the next signal received.
    pub async fn next(&mut self) -> &'static str {
        loop {
            let mut byte = [0u8; 1];
            let got = async {
                self.pipe.readable().await?;
                self.pipe.try_read(&mut byte)
            }
            .await;
            match (got, i32::from(byte[0])) {
                (Ok(1), libc::SIGINT) => return "SIGINT",
                (Ok(1), libc::SIGTERM) => return "SIGTERM",
                (Ok(1), libc::SIGQUIT) => return "SIGQUIT",
                (Ok(1), libc::SIGHUP) => return "SIGHUP",
                (Err(e), _) if e.kind() != std::io::ErrorKind::WouldBlock => {
                    // The pipe cannot fail while the process lives; wait for nothing rather
                    // than spin.
                    std::future::pending::<()>().await;
                }
                _ => {}
            }
        }
    }
}
