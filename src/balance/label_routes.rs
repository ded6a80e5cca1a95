//! TiProxy's `balance.routing-rule`: routing rules read from the backends' own labels (a
//! TiDB's `tiproxy-port` or `cidr` label, set in its config or by the operator), so a PD
//! cluster can be split into groups without listing addresses in the proxy's config.

use super::policy::{LabelRouting, Policy, RouteRule};
use super::Backend;
use crate::config::networks::Network;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The label a TiDB names the proxy port it serves with.
pub const PORT_LABEL: &str = "tiproxy-port";
/// The label a TiDB lists the client networks it serves with, comma-separated.
pub const CIDR_LABEL: &str = "cidr";

/// `policy` with one rule per group of backends sharing a label value after its own
/// `[[balance.routes]]`, and a last rule that matches every other session and allows no
/// backend: as in TiProxy, a backend without the label gets no sessions and a session no
/// group takes gets none either (its error names the rule). Without `routing-rule` the
/// policy is returned as it is.
pub fn effective(policy: &Policy, backends: &[Arc<Backend>]) -> Policy {
    let Some(kind) = policy.label_routing else {
        return policy.clone();
    };
    let label = match kind {
        LabelRouting::Port => PORT_LABEL,
        LabelRouting::ClientCidr => CIDR_LABEL,
    };
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for b in backends {
        if let Some(v) = b.labels().get(label).map(|v| v.trim().to_string()) {
            if !v.is_empty() {
                groups.entry(v).or_default().push(b.addr.clone());
            }
        }
    }
    let mut out = policy.clone();
    for (value, addrs) in groups {
        let mut rule = RouteRule {
            name: format!("routing-rule {label}={value}"),
            backends: addrs,
            ..RouteRule::default()
        };
        match kind {
            // TiProxy writes "cluster:port" when it serves several clusters; the port is last.
            LabelRouting::Port => match value.rsplit(':').next().and_then(|p| p.parse().ok()) {
                Some(port) => rule.ports = vec![port],
                None => continue,
            },
            LabelRouting::ClientCidr => {
                rule.client_networks = value
                    .split(',')
                    .filter_map(|c| Network::parse(c).ok())
                    .collect();
                if rule.client_networks.is_empty() {
                    continue;
                }
            }
        }
        out.routes.push(rule);
    }
    out.routes.push(RouteRule {
        name: format!("routing-rule: no backend's {label} label matches"),
        ..RouteRule::default()
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::policy::{route_allows, route_for, Origin};
    use crate::balance::{BackendSource, BackendSpec};

    fn backend(addr: &str, labels: &[(&str, &str)]) -> Arc<Backend> {
        let spec = BackendSpec {
            source: BackendSource::Pd,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..BackendSpec::new_static(addr.to_string())
        };
        Arc::new(Backend::from_spec(spec, &crate::metrics::Metrics::new()))
    }

    fn origin(port: u16, client: &str) -> Origin {
        Origin {
            port,
            client: Some(client.parse().unwrap()),
        }
    }

    #[test]
    fn without_the_key_nothing_changes() {
        let list = [backend("a:4000", &[(PORT_LABEL, "6001")])];
        let p = Policy::default();
        assert_eq!(effective(&p, &list), p);
    }

    #[test]
    fn ports_route_to_the_tidbs_labelled_with_them() {
        let list = [
            backend("a:4000", &[(PORT_LABEL, "6001")]),
            backend("b:4000", &[(PORT_LABEL, "6002")]),
            backend("c:4000", &[(PORT_LABEL, "c1:6002")]),
            backend("d:4000", &[]),
        ];
        let p = effective(
            &Policy {
                label_routing: Some(LabelRouting::Port),
                ..Policy::default()
            },
            &list,
        );
        let on = |port| origin(port, "10.0.0.1");
        assert!(route_allows(&p, &on(6001), "a:4000"));
        assert!(!route_allows(&p, &on(6001), "b:4000"));
        assert!(route_allows(&p, &on(6002), "b:4000") || route_allows(&p, &on(6002), "c:4000"));
        assert!(!route_allows(&p, &on(6002), "a:4000"));
        // An unlabelled TiDB takes nobody; a port no TiDB names gets nothing, by a named rule.
        for port in [6001, 6002, 6003] {
            assert!(!route_allows(&p, &on(port), "d:4000"));
        }
        let none = route_for(&p, &on(6003)).unwrap();
        assert!(none.backends.is_empty() && none.name.contains(PORT_LABEL));
    }

    #[test]
    fn client_networks_route_to_the_tidbs_labelled_with_them() {
        let list = [
            backend("a:4000", &[(CIDR_LABEL, "10.0.0.0/8, 192.168.1.0/24")]),
            backend("b:4000", &[(CIDR_LABEL, "172.16.0.0/12")]),
            backend("x:4000", &[(CIDR_LABEL, "not a network")]),
        ];
        let p = effective(
            &Policy {
                label_routing: Some(LabelRouting::ClientCidr),
                ..Policy::default()
            },
            &list,
        );
        assert!(route_allows(&p, &origin(6000, "192.168.1.9"), "a:4000"));
        assert!(route_allows(&p, &origin(6000, "172.16.3.3"), "b:4000"));
        assert!(!route_allows(&p, &origin(6000, "172.16.3.3"), "a:4000"));
        assert!(!route_allows(&p, &origin(6000, "8.8.8.8"), "x:4000"));
        assert!(route_for(&p, &origin(6000, "8.8.8.8"))
            .unwrap()
            .backends
            .is_empty());
    }
}
