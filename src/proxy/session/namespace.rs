//! Namespaces at login: the backends outside the group of the user logging in are treated as
//! tried, so the balancer picks only among the group's own; and the client's error, when the
//! group has nothing available, names the group and says what is true of its backends.

use super::super::context::{ProxyContext, SessionSettings};
use crate::balance::routes_namespace::{Group, Namespaces};
use crate::balance::Backend;
use std::sync::Arc;

/// The group `user` routes in, under the current settings.
pub(super) fn group_of(settings: &SessionSettings, user: &str) -> Group {
    settings.namespaces.group_of_user(user)
}

/// Every known backend a session in `group` may not use (none without namespaces).
pub(super) fn outside(
    ctx: &ProxyContext,
    settings: &SessionSettings,
    group: &Group,
) -> Vec<Arc<Backend>> {
    if settings.namespaces.is_empty() {
        return Vec::new();
    }
    ctx.backends
        .snapshot()
        .iter()
        .filter(|b| !settings.namespaces.allows(group, &b.addr, &b.labels()))
        .cloned()
        .collect()
}

/// Why no backend of `group` is available, naming each of them with its state.
pub(super) fn unavailable(ctx: &ProxyContext, settings: &SessionSettings, group: &Group) -> String {
    let states: Vec<String> = ctx
        .backends
        .snapshot()
        .iter()
        .filter(|b| settings.namespaces.allows(group, &b.addr, &b.labels()))
        .map(|b| {
            if b.is_healthy() {
                format!("{} (not taking new sessions)", b.addr)
            } else {
                format!("{} ({})", b.addr, b.last_error_or("unhealthy"))
            }
        })
        .collect();
    let what = Namespaces::describe(group);
    if states.is_empty() {
        format!("{what} has no known backend")
    } else {
        format!(
            "{what} may use only its own backends and none of them is available: {}",
            states.join(", ")
        )
    }
}
