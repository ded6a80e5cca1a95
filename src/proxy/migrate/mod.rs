//! Session migration: moving a live session to another backend at a transaction boundary,
//! with its state, for TiDB (SESSION_STATES and a session token) and for MySQL and MariaDB
//! (state read from the old backend or tracked by the proxy, re-authentication derived from
//! the client's own native-password exchange).

pub mod credential;
pub mod gate;
pub mod restore;
pub mod service;
pub mod settings;
pub mod sql;
pub mod state;
pub mod tidb;
