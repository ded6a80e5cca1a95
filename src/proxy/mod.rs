//! The data plane: listener, one task per client session, the backend connection, the
//! streaming command relay, transaction tracking, graceful close, and the worker threads
//! sessions run on.

pub mod backend_conn;
pub mod cert_cn;
pub mod cert_reload;
pub mod client_handshake;
pub mod context;
pub mod digest;
pub mod error;
pub mod error_source;
pub mod listen;
pub mod migrate;
pub mod per_source;
pub mod query_log;
pub mod rebalance;
pub mod registry;
pub mod relay;
pub mod response;
pub mod row_walk;
pub mod server;
pub mod session;
pub mod tls;
pub mod traffic;
pub mod txn;
pub mod worker_loop;
pub mod workers;

pub use context::{ProxyContext, SessionSettings};
pub use error::ClientError;
