//! The PD loop: connect, register ourselves, list and watch the TiDB topology, keep our lease
//! alive; on any failure keep the last known TiDB list, back off and start over; on shutdown
//! revoke our lease, which deletes exactly our own keys.

use super::backoff::Backoff;
use super::pd_status::PdStatus;
use super::register::Registration;
use super::topology::{TidbTopology, TIDB_PREFIX};
use crate::balance::{BackendSet, BackendSource, BackendSpec};
use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Timings; the defaults match what TiDB and the Go TiProxy use.
#[derive(Debug, Clone)]
pub struct Options {
    pub lease_ttl_secs: i64,
    pub refresh_every: Duration,
    pub request_timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// How long deregistration may delay the exit when PD is slow or gone.
    pub deregister_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            lease_ttl_secs: 45,
            refresh_every: Duration::from_secs(30),
            request_timeout: Duration::from_secs(3),
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(10),
            deregister_timeout: Duration::from_secs(2),
        }
    }
}

pub struct Pd {
    pub endpoints: Vec<String>,
    pub registration: Option<Registration>,
    pub backends: Arc<BackendSet>,
    pub status: Arc<PdStatus>,
    pub opts: Options,
}

/// The connection and lease of the current attempt, kept outside the attempt's future so
/// shutdown can still revoke the lease after the attempt is dropped.
#[derive(Default)]
struct Conn {
    client: Option<Client>,
    lease: Option<i64>,
    published: Vec<BackendSpec>,
}

/// Runs the PD loop until `shutdown`, then deregisters (bounded) and returns.
pub fn start(pd: Pd, shutdown: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Backoff::new(pd.opts.backoff_base, pd.opts.backoff_cap);
        let mut conn = Conn::default();
        loop {
            let attempt = tokio::select! {
                r = pd.serve(&mut conn, &mut backoff) => Some(r),
                _ = shutdown.cancelled() => None,
            };
            match attempt {
                None => break,
                Some(Ok(())) => {}
                Some(Err(e)) => pd.status.record_failure(&e.to_string()),
            }
            conn.client = None;
            tokio::select! {
                _ = crate::timer::sleep(backoff.next_delay()) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        pd.deregister(&mut conn).await;
    })
}

/// Why a connected period with PD ended; the text is what `/api/debug/health` and the
/// outage log lines show.
#[derive(Debug, thiserror::Error)]
pub enum PdError {
    #[error("cannot connect to {endpoint}: {source}")]
    Dial {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to {endpoint}: timed out")]
    DialTimeout { endpoint: String },
    #[error("no PD endpoint is configured")]
    NoEndpoint,
    #[error("{what}: {}", describe(.source))]
    Request {
        what: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error("{what}: no answer within {} ms", .limit.as_millis())]
    Timeout { what: &'static str, limit: Duration },
    #[error("watch TiDB topology: PD closed the stream")]
    WatchClosed,
}

/// The error and its causes on one line ("transport error: connection refused").
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

impl Pd {
    async fn call<T, F>(&self, what: &'static str, fut: F) -> Result<T, PdError>
    where
        F: Future<Output = Result<T, etcd_client::Error>>,
    {
        match crate::timer::timeout(self.opts.request_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(PdError::Request { what, source }),
            Err(_) => Err(PdError::Timeout {
                what,
                limit: self.opts.request_timeout,
            }),
        }
    }

    /// A plain TCP dial first: the gRPC channel would only say "timed out" where the socket
    /// says "connection refused".
    async fn dial(&self) -> Result<(), PdError> {
        let mut last = PdError::NoEndpoint;
        for ep in &self.endpoints {
            let endpoint = ep.clone();
            match crate::timer::timeout(self.opts.request_timeout, TcpStream::connect(ep)).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(source)) => last = PdError::Dial { endpoint, source },
                Err(_) => last = PdError::DialTimeout { endpoint },
            }
        }
        Err(last)
    }

    async fn connect(&self) -> Result<Client, PdError> {
        self.dial().await?;
        let opts = ConnectOptions::new()
            .with_connect_timeout(self.opts.request_timeout)
            .with_keep_alive(Duration::from_secs(10), self.opts.request_timeout)
            .with_keep_alive_while_idle(true);
        self.call("connect", Client::connect(&self.endpoints, Some(opts)))
            .await
    }

    /// Grants a fresh lease and writes our keys under it.
    async fn register(&self, client: &mut Client, reg: &Registration) -> Result<i64, PdError> {
        let lease = self
            .call(
                "grant lease",
                client.lease_grant(self.opts.lease_ttl_secs, None),
            )
            .await?
            .id();
        self.put_keys(client, reg, lease).await?;
        Ok(lease)
    }

    async fn put_keys(
        &self,
        client: &mut Client,
        reg: &Registration,
        lease: i64,
    ) -> Result<(), PdError> {
        let with_lease = || Some(PutOptions::new().with_lease(lease));
        self.call(
            "register",
            client.put(reg.info_key.as_str(), reg.info_json.as_str(), with_lease()),
        )
        .await?;
        self.call(
            "register",
            client.put(
                reg.ttl_key.as_str(),
                Registration::ttl_value(),
                with_lease(),
            ),
        )
        .await?;
        Ok(())
    }

    /// Refreshes the keys (PD may have restarted empty) and the lease; a lease PD no longer
    /// knows is replaced by a new registration.
    async fn refresh(&self, client: &mut Client, conn: &mut Conn) -> Result<(), PdError> {
        let Some(reg) = &self.registration else {
            return Ok(());
        };
        let lease = match conn.lease {
            Some(l) => l,
            None => return Ok(()),
        };
        let ttl = self
            .call("keep lease alive", async {
                let (mut keeper, mut stream) = client.lease_keep_alive(lease).await?;
                keeper.keep_alive().await?;
                Ok(stream.message().await?.map_or(0, |r| r.ttl()))
            })
            .await?;
        if ttl <= 0 {
            info!(key = %reg.info_key, "registration lease expired; registering again");
            conn.lease = Some(self.register(client, reg).await?);
            return Ok(());
        }
        self.put_keys(client, reg, lease).await
    }

    /// Where the cluster's Prometheus is, for the balancer's load figures. A failed read
    /// keeps the last answer; the balancer falls back to each TiDB when Prometheus fails.
    async fn read_prometheus(&self, client: &mut Client) {
        use crate::balance::factors::prometheus::{address_from_topology, TOPOLOGY_PREFIX};
        let Ok(got) = self
            .call(
                "read Prometheus topology",
                client.get(TOPOLOGY_PREFIX, Some(GetOptions::new().with_prefix())),
            )
            .await
        else {
            return;
        };
        let addr = got
            .kvs()
            .first()
            .and_then(|kv| address_from_topology(kv.value()));
        if addr != self.backends.prometheus() {
            info!(
                prometheus = addr.as_deref().unwrap_or("none"),
                "Prometheus in PD's topology"
            );
            self.backends.set_prometheus(addr);
        }
    }

    fn publish(&self, topo: &TidbTopology, conn: &mut Conn) {
        let specs = topo.specs();
        if specs == conn.published {
            return;
        }
        for s in &specs {
            if !conn.published.iter().any(|p| p.addr == s.addr) {
                info!(backend = %s.addr, status = s.status_addr.as_deref().unwrap_or(""), "TiDB discovered through PD");
            }
        }
        for p in &conn.published {
            if !specs.iter().any(|s| s.addr == p.addr) {
                info!(backend = %p.addr, "TiDB left the PD topology");
            }
        }
        self.backends.set_source(BackendSource::Pd, specs.clone());
        conn.published = specs;
    }

    /// One connected period: ends with the error that ended it, or Ok when PD asked for a
    /// fresh listing.
    async fn serve(&self, conn: &mut Conn, backoff: &mut Backoff) -> Result<(), PdError> {
        let mut client = self.connect().await?;
        conn.client = Some(client.clone());
        if let Some(reg) = &self.registration {
            conn.lease = Some(self.register(&mut client, reg).await?);
        }
        let listing = self
            .call(
                "list TiDB topology",
                client.get(TIDB_PREFIX, Some(GetOptions::new().with_prefix())),
            )
            .await?;
        self.status.record_success();
        backoff.reset();
        let mut topo = TidbTopology::default();
        for kv in listing.kvs() {
            topo.put(&String::from_utf8_lossy(kv.key()), kv.value());
        }
        // Replace, not merge: the listing is the whole truth after an outage.
        conn.published.clear();
        self.publish(&topo, conn);
        self.read_prometheus(&mut client).await;
        let rev = listing.header().map_or(0, |h| h.revision());
        let watch_opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(rev + 1);
        let mut watch = self
            .call(
                "watch TiDB topology",
                client.watch(TIDB_PREFIX, Some(watch_opts)),
            )
            .await?;
        let mut tick = crate::timer::interval(self.opts.refresh_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                msg = watch.message() => {
                    let msg = msg
                        .map_err(|source| PdError::Request { what: "watch TiDB topology", source })?
                        .ok_or(PdError::WatchClosed)?;
                    if msg.canceled() {
                        // Compaction, say: PD is fine, so no outage is reported; list again.
                        info!(reason = msg.cancel_reason(), "PD canceled the topology watch; listing again");
                        return Ok(());
                    }
                    for ev in msg.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let key = String::from_utf8_lossy(kv.key());
                        match ev.event_type() {
                            EventType::Put => topo.put(&key, kv.value()),
                            EventType::Delete => topo.delete(&key),
                        }
                    }
                    self.publish(&topo, conn);
                }
                _ = tick.tick() => {
                    self.refresh(&mut client, conn).await?;
                    self.read_prometheus(&mut client).await;
                }
            }
        }
    }

    async fn deregister(&self, conn: &mut Conn) {
        let (Some(mut client), Some(lease), Some(reg)) = (
            conn.client.take(),
            conn.lease.take(),
            self.registration.as_ref(),
        ) else {
            return;
        };
        // Revoking our lease deletes exactly the keys written under it: ours, nobody else's.
        let revoke = client.lease_revoke(lease);
        match crate::timer::timeout(self.opts.deregister_timeout, revoke).await {
            Ok(Ok(_)) => info!(key = %reg.info_key, "removed our registration from PD"),
            Ok(Err(e)) => {
                warn!(error = %describe(&e), "could not remove our registration from PD; it expires with its lease")
            }
            Err(_) => warn!("PD did not answer in time; our registration expires with its lease"),
        }
    }
}
