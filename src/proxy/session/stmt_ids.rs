//! The client's binary prepared statement ids and the backend's. They are the same until a
//! session is rebuilt on another backend, which hands out ids of its own: from then on every
//! id the client sends (execute, bulk execute, fetch, reset, close, send long data) is
//! translated, and each id a new prepare returns is given to the client as one it does not
//! hold yet.

use std::collections::HashMap;

/// MariaDB's "the statement prepared last" id in COM_STMT_EXECUTE: passed through as it is.
const LAST_PREPARED: u32 = u32::MAX;

#[derive(Debug, Default, Clone)]
pub(crate) struct StmtIds {
    /// Client id -> backend id; `None` while they are the same (boxed: most sessions are never
    /// rebuilt, and every session holds this).
    // The box is the point: 8 bytes in every session instead of a map's 48.
    #[allow(clippy::box_collection)]
    to_backend: Option<Box<HashMap<u32, u32>>>,
}

impl StmtIds {
    pub fn is_identity(&self) -> bool {
        self.to_backend.is_none()
    }

    /// The backend's id for an id the client sent. An id the client does not hold becomes 0,
    /// which no server hands out, so the backend answers "unknown statement" as it would have.
    pub fn backend_id(&self, client: u32) -> u32 {
        let Some(map) = &self.to_backend else {
            return client;
        };
        if client == LAST_PREPARED {
            return client;
        }
        map.get(&client).copied().unwrap_or(0)
    }

    /// The id to show the client for a statement the backend just prepared as `backend`.
    pub fn on_prepared(&mut self, backend: u32) -> u32 {
        let Some(map) = &mut self.to_backend else {
            return backend;
        };
        let mut client = backend;
        while client == 0 || client == LAST_PREPARED || map.contains_key(&client) {
            client = client.wrapping_add(1);
        }
        map.insert(client, backend);
        client
    }

    pub fn on_closed(&mut self, client: u32) {
        let Some(map) = &mut self.to_backend else {
            return;
        };
        map.remove(&client);
        if map.iter().all(|(c, b)| c == b) {
            self.to_backend = None;
        }
    }

    /// After a rebuild: the statements the client holds and the ids the new backend gave them.
    pub fn rebuilt(pairs: impl IntoIterator<Item = (u32, u32)>) -> StmtIds {
        let to_backend: HashMap<u32, u32> = pairs.into_iter().collect();
        if to_backend.iter().all(|(c, b)| c == b) {
            return StmtIds::default();
        }
        StmtIds {
            to_backend: Some(Box::new(to_backend)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_until_a_rebuild_changes_ids() {
        let mut ids = StmtIds::default();
        assert_eq!(ids.backend_id(7), 7);
        assert_eq!(ids.on_prepared(8), 8);
        let ids = StmtIds::rebuilt([(1, 1), (2, 2)]);
        assert!(ids.is_identity());
        assert_eq!(ids.backend_id(5), 5);
    }

    #[test]
    fn new_backend_ids_are_translated_and_never_collide() {
        // The client held 3 and 50; the new backend gave them 1 and 2.
        let mut ids = StmtIds::rebuilt([(3, 1), (50, 2)]);
        assert_eq!(ids.backend_id(3), 1);
        assert_eq!(ids.backend_id(50), 2);
        assert_eq!(ids.backend_id(4), 0, "an id the client never got");
        assert_eq!(ids.backend_id(u32::MAX), u32::MAX);
        // The backend counts on: 3 is taken on the client's side, so the client gets 4.
        assert_eq!(ids.on_prepared(3), 4);
        assert_eq!(ids.backend_id(4), 3);
        assert_eq!(ids.on_prepared(50), 51);
        assert_eq!(ids.backend_id(51), 50);
        assert_eq!(ids.on_prepared(7), 7);
        ids.on_closed(3);
        ids.on_closed(50);
        ids.on_closed(4);
        ids.on_closed(51);
        assert!(ids.is_identity(), "only same-id statements left");
        assert_eq!(ids.backend_id(7), 7);
    }
}
