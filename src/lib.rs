//! tiproxy: a MySQL-protocol proxy for TiDB, MySQL and MariaDB.

pub mod app;
pub mod balance;
pub mod config;
pub mod discovery;
pub mod health;
pub mod logging;
pub mod protocol;
pub mod proxy;
pub mod version;
