//! tiproxy: a MySQL-protocol proxy for TiDB, MySQL and MariaDB.

pub mod api;
pub mod app;
pub mod balance;
pub mod config;
pub mod ctl;
pub mod discovery;
pub mod events;
pub mod hardening;
pub mod health;
#[cfg(test)]
mod layering;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod proxy;
pub mod reload;
pub mod timer;
pub mod version;
