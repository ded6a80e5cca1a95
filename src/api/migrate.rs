//! `POST /api/admin/migrate`: ask sessions to move. Parameters (query string):
//! `from` (backend address, required unless `session` is given), `to` (optional; default:
//! the least loaded healthy backend), `count` (optional; default: all on `from`),
//! `session` (one session id). Each session moves at its next transaction boundary.

use crate::proxy::registry::Redirect;
use crate::proxy::ProxyContext;
use serde::Serialize;
use std::collections::HashMap;

#[derive(Debug, Serialize, PartialEq)]
pub struct Requested {
    pub requested: usize,
}

pub fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.replace("%3A", ":").replace("%3a", ":")))
        .collect()
}

pub fn request(ctx: &ProxyContext, params: &HashMap<String, String>) -> Result<Requested, String> {
    let from = params.get("from").filter(|s| !s.is_empty());
    let session = match params.get("session") {
        Some(s) => Some(
            s.parse::<u64>()
                .map_err(|_| format!("session must be a connection id, not {s:?}"))?,
        ),
        None => None,
    };
    if from.is_none() && session.is_none() {
        return Err("give `from=<backend address>` or `session=<id>`".into());
    }
    let to = params.get("to").filter(|s| !s.is_empty()).cloned();
    let list = ctx.backends.snapshot();
    if let Some(t) = &to {
        match list.iter().find(|b| &b.addr == t) {
            None => return Err(format!("no backend {t} is known")),
            Some(b) if !b.is_healthy() => return Err(format!("backend {t} is not healthy")),
            _ => {}
        }
    }
    let count = match params.get("count") {
        Some(c) => c
            .parse::<usize>()
            .map_err(|_| format!("count must be a number, not {c:?}"))?,
        None => usize::MAX,
    };
    let mut n = 0;
    for e in ctx.registry.entries() {
        if n >= count {
            break;
        }
        let matches = match (session, from) {
            (Some(id), _) => e.id == id,
            (None, Some(f)) => &e.backend() == f,
            (None, None) => false,
        };
        if matches && to.as_deref() != Some(e.backend().as_str()) {
            e.request_redirect(Redirect {
                target: to.clone(),
                reason: "api",
            });
            n += 1;
        }
    }
    Ok(Requested { requested: n })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let q = parse_query("from=127.0.0.1%3A3306&count=2&flag");
        assert_eq!(q["from"], "127.0.0.1:3306");
        assert_eq!(q["count"], "2");
        assert_eq!(q["flag"], "");
    }
}
