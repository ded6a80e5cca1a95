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

/// Why a migrate request was refused (400); the text tells the caller what to send instead.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("session must be a connection id, not {text:?}")]
    Session {
        text: String,
        #[source]
        source: std::num::ParseIntError,
    },
    #[error("give `from=<backend address>` or `session=<id>`")]
    NoSelection,
    #[error("no backend {0} is known")]
    UnknownTarget(String),
    #[error("backend {0} is not healthy")]
    UnhealthyTarget(String),
    #[error("count must be a number, not {text:?}")]
    Count {
        text: String,
        #[source]
        source: std::num::ParseIntError,
    },
}

/// The query string as `application/x-www-form-urlencoded` pairs (any percent-escape).
pub fn parse_query(q: &str) -> HashMap<String, String> {
    form_urlencoded::parse(q.as_bytes())
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

pub fn request(
    ctx: &ProxyContext,
    params: &HashMap<String, String>,
) -> Result<Requested, RequestError> {
    let from = params.get("from").filter(|s| !s.is_empty());
    let session = match params.get("session") {
        Some(s) => Some(s.parse::<u64>().map_err(|source| RequestError::Session {
            text: s.clone(),
            source,
        })?),
        None => None,
    };
    if from.is_none() && session.is_none() {
        return Err(RequestError::NoSelection);
    }
    let to = params.get("to").filter(|s| !s.is_empty()).cloned();
    let list = ctx.backends.snapshot();
    if let Some(t) = &to {
        match list.iter().find(|b| &b.addr == t) {
            None => return Err(RequestError::UnknownTarget(t.clone())),
            Some(b) if !b.is_healthy() => return Err(RequestError::UnhealthyTarget(t.clone())),
            _ => {}
        }
    }
    let count = match params.get("count") {
        Some(c) => c.parse::<usize>().map_err(|source| RequestError::Count {
            text: c.clone(),
            source,
        })?,
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
        // Any escape decodes, not only the colon: an IPv6 backend address arrives whole.
        let q = parse_query("from=%5B%3A%3A1%5D%3a4000&to=a%2Bb");
        assert_eq!(q["from"], "[::1]:4000");
        assert_eq!(q["to"], "a+b");
    }
}
