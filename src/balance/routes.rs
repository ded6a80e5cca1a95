//! The routing rules of `[[balance.routes]]` in the policy's form.

use super::policy::RouteRule;
use crate::config::networks::Network;
use crate::config::routes::RouteConfig;

/// The rules as the policy matches them. Every config is checked before it is used
/// (`config::routes::check_all`, on load and on reload), so every client network parses here.
pub fn rules_from(list: &[RouteConfig]) -> Vec<RouteRule> {
    list.iter()
        .map(|r| RouteRule {
            name: r.name.clone(),
            ports: r.ports.clone(),
            client_networks: r
                .client_cidrs
                .iter()
                .filter_map(|c| Network::parse(c).ok())
                .collect(),
            backends: r.backends.iter().map(|b| b.trim().to_string()).collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_rules_become_policy_rules() {
        let rules = rules_from(&[RouteConfig {
            name: "replicas".into(),
            ports: vec![6001],
            client_cidrs: vec!["10.0.0.0/8".into()],
            backends: vec![" r1:3306".into()],
        }]);
        assert_eq!(rules[0].ports, vec![6001]);
        assert_eq!(rules[0].client_networks.len(), 1);
        assert_eq!(rules[0].backends, vec!["r1:3306".to_string()]);
    }
}
