//! Per-backend metric handles, resolved once per backend address and shared by every
//! session on it, so counting a query needs no label lookup (and, batched per thread by
//! [`super::batch`], no shared atomic add either).

use super::Metrics;
use prometheus::core::Metric;
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Command bytes below this get their own series; anything else is counted as "unknown".
const CMD_SLOTS: usize = 0x20;

pub struct CmdHandles {
    /// Tells this series apart in a thread's batch ([`super::batch`]).
    pub(super) id: u64,
    pub total: IntCounter,
    pub duration: Histogram,
    /// The backend's traffic series, kept here too so a thread's batch holds one slot a series.
    pub(super) inbound_bytes: IntCounter,
    pub(super) outbound_bytes: IntCounter,
    pub(super) inbound_packets: IntCounter,
    pub(super) outbound_packets: IntCounter,
}

impl CmdHandles {
    /// `traffic`: the backend's inbound and outbound bytes, then packets.
    pub(super) fn new(total: IntCounter, duration: Histogram, traffic: [IntCounter; 4]) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let [inbound_bytes, outbound_bytes, inbound_packets, outbound_packets] = traffic;
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            total,
            duration,
            inbound_bytes,
            outbound_bytes,
            inbound_packets,
            outbound_packets,
        }
    }
}

/// The `cmd_type` label as TiProxy (and TiDB) spell it, so their dashboards' queries match.
pub fn cmd_type_label(command: u8) -> &'static str {
    const NAMES: [&str; 0x20] = [
        "Sleep",
        "Quit",
        "InitDB",
        "Query",
        "FieldList",
        "CreateDB",
        "DropDB",
        "Refresh",
        "Shutdown",
        "Statistics",
        "ProcessInfo",
        "Connect",
        "ProcessKill",
        "Debug",
        "Ping",
        "Time",
        "DelayedInsert",
        "ChangeUser",
        "BinlogDump",
        "TableDump",
        "ConnectOut",
        "RegisterSlave",
        "StmtPrepare",
        "StmtExecute",
        "StmtSendLongData",
        "StmtClose",
        "StmtReset",
        "SetOption",
        "StmtFetch",
        "Daemon",
        "BinlogDumpGtid",
        "ResetConnect",
    ];
    NAMES
        .get(usize::from(command))
        .copied()
        .unwrap_or("Unknown")
}

pub struct BackendMetrics {
    addr: String,
    cmds: [OnceLock<CmdHandles>; CMD_SLOTS + 1],
    /// The families `cmds` series are made in, from the registry that made this backend's.
    query_total: IntCounterVec,
    query_duration: HistogramVec,
    /// The registry's `query_time_since_conn_creation_seconds`, with the registry's id.
    query_age: (u64, Histogram),
    pub errors: IntCounter,
    pub handshake: Histogram,
    pub dial_fail: IntCounter,
    pub status: IntGauge,
    pub conns: IntGauge,
    pub inbound_bytes: IntCounter,
    pub outbound_bytes: IntCounter,
    inbound_packets: IntCounter,
    outbound_packets: IntCounter,
    /// The last SQL-port probe's time.
    pub ping: prometheus::Gauge,
}

/// Cumulative numbers for one backend, summed over command types, for rate windows.
#[derive(Debug, Clone, Default)]
pub struct BackendTotals {
    pub queries: u64,
    pub errors: u64,
    /// Cumulative counts per bucket of [`super::query_buckets`].
    pub buckets: Vec<u64>,
}

impl BackendMetrics {
    fn new(m: &Metrics, addr: &str) -> Self {
        let l = &[addr];
        Self {
            addr: addr.to_owned(),
            query_total: m.query_total.clone(),
            query_duration: m.query_duration.clone(),
            query_age: (m.id, m.query_since_creation.clone()),
            cmds: std::array::from_fn(|_| OnceLock::new()),
            errors: m.query_errors.with_label_values(l),
            handshake: m.handshake_duration.with_label_values(l),
            dial_fail: m.dial_fail.with_label_values(l),
            status: m.b_status.with_label_values(l),
            conns: m.b_conn.with_label_values(l),
            inbound_bytes: m.inbound_bytes.with_label_values(l),
            outbound_bytes: m.outbound_bytes.with_label_values(l),
            inbound_packets: m.inbound_packets.with_label_values(l),
            outbound_packets: m.outbound_packets.with_label_values(l),
            ping: m.ping_duration.with_label_values(l),
        }
    }

    /// The series of one command type; resolved on its first use on this backend.
    pub fn cmd(&self, command: u8) -> &CmdHandles {
        let slot = usize::from(command).min(CMD_SLOTS);
        self.cmds[slot].get_or_init(|| {
            let name = if slot == CMD_SLOTS {
                "Unknown"
            } else {
                cmd_type_label(command)
            };
            let l = &[self.addr.as_str(), name];
            CmdHandles::new(
                self.query_total.with_label_values(l),
                self.query_duration.with_label_values(l),
                [
                    self.inbound_bytes.clone(),
                    self.outbound_bytes.clone(),
                    self.inbound_packets.clone(),
                    self.outbound_packets.clone(),
                ],
            )
        })
    }

    /// Observes how long after its connection was created a query started (batched per
    /// thread like the query's own counts).
    pub fn observe_query_age(&self, seconds: f64) {
        super::batch::observe_query_age(&self.query_age, seconds);
    }

    /// Counts one relayed command, its latency, its packets and the bytes read from and
    /// written to the backend since the last count (batched per thread).
    pub fn record(&self, command: u8, seconds: f64, ok: bool, traffic: (u64, u64)) {
        super::batch::count_query(self.cmd(command), seconds, traffic);
        if !ok {
            self.errors.inc();
        }
    }

    /// Sums over the command types seen so far (off the hot path: the API samples it).
    pub fn totals(&self) -> BackendTotals {
        let mut t = BackendTotals {
            errors: self.errors.get(),
            buckets: vec![0; super::query_buckets().len()],
            ..Default::default()
        };
        for h in self.cmds.iter().filter_map(OnceLock::get) {
            t.queries += h.total.get();
            let m = h.duration.metric();
            for (i, b) in m.get_histogram().get_bucket().iter().enumerate() {
                if let Some(slot) = t.buckets.get_mut(i) {
                    *slot += b.cumulative_count();
                }
            }
        }
        t
    }
}

impl Metrics {
    /// The handles for a backend address; the first call for an address creates its series.
    pub fn backend(&self, addr: &str) -> Arc<BackendMetrics> {
        let mut map = self.backends.lock().expect("backend metrics");
        if let Some(b) = map.get(addr) {
            return b.clone();
        }
        let b = Arc::new(BackendMetrics::new(self, addr));
        map.insert(addr.to_owned(), b.clone());
        b
    }

    /// Removes the series (`tiproxy_*{backend=...}`) of every backend nothing refers to any
    /// more: it left the backend list and its last session ended, so its `Backend` and with it
    /// the only other holder of its handles are gone. Returns the addresses pruned. A backend
    /// added again later starts its series from zero, as after a restart.
    pub fn prune_backends(&self) -> Vec<String> {
        let mut map = self.backends.lock().expect("backend metrics");
        let gone: Vec<String> = map
            .iter()
            .filter(|(_, b)| Arc::strong_count(b) == 1)
            .map(|(addr, _)| addr.clone())
            .collect();
        for addr in &gone {
            if let Some(b) = map.remove(addr) {
                b.remove_series(self);
            }
        }
        gone
    }
}

impl BackendMetrics {
    fn remove_series(&self, m: &Metrics) {
        let l = &[self.addr.as_str()];
        for vec in [
            &m.query_errors,
            &m.dial_fail,
            &m.inbound_bytes,
            &m.outbound_bytes,
            &m.inbound_packets,
            &m.outbound_packets,
        ] {
            let _ = vec.remove_label_values(l);
        }
        let _ = m.ping_duration.remove_label_values(l);
        for vec in [&m.b_status, &m.b_conn] {
            let _ = vec.remove_label_values(l);
        }
        let _ = m.handshake_duration.remove_label_values(l);
        for (slot, handles) in self.cmds.iter().enumerate() {
            if handles.get().is_none() {
                continue;
            }
            // The same names `cmd` created the series with.
            let name = if slot == CMD_SLOTS {
                "Unknown"
            } else {
                cmd_type_label(slot as u8)
            };
            let l = &[self.addr.as_str(), name];
            let _ = m.query_total.remove_label_values(l);
            let _ = m.query_duration.remove_label_values(l);
        }
    }
}

impl std::fmt::Debug for BackendMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendMetrics")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::constants::cmd;

    #[test]
    fn an_unreferenced_backend_loses_its_series() {
        let m = Metrics::new();
        let addr = "192.0.2.61:4000";
        let held = m.backend(addr);
        held.record(cmd::QUERY, 0.001, false, (10, 20));
        held.conns.set(1);
        let series = |addr: &str| m.render().matches(&format!("backend=\"{addr}\"")).count();
        assert!(series(addr) >= 5, "{}", m.render());
        assert!(m.prune_backends().is_empty(), "still held");
        assert!(series(addr) >= 5);
        drop(held);
        assert_eq!(m.prune_backends(), vec![addr.to_owned()]);
        assert_eq!(series(addr), 0);
    }

    #[test]
    fn totals_sum_over_command_types() {
        let m = Metrics::new();
        let b = m.backend("127.0.0.1:2");
        b.record(cmd::QUERY, 0.001, true, (0, 0));
        b.record(cmd::STMT_EXECUTE, 0.002, false, (0, 0));
        b.record(0xfe, 0.002, true, (0, 0));
        let t = b.totals();
        assert_eq!((t.queries, t.errors), (3, 1));
        assert_eq!(*t.buckets.last().unwrap(), 3);
        assert!(Arc::ptr_eq(&b, &m.backend("127.0.0.1:2")));
    }

    #[test]
    fn two_registries_count_apart() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.backend("192.0.2.1:4000")
            .record(cmd::QUERY, 0.001, true, (1, 1));
        assert_eq!(a.backend("192.0.2.1:4000").totals().queries, 1);
        assert_eq!(b.backend("192.0.2.1:4000").totals().queries, 0);
        assert!(!b.render().contains("192.0.2.1:4000\",cmd_type=\"Query\""));
    }
}
