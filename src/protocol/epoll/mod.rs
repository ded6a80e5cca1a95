//! The worker's own epoll engine: a reactor per worker thread and the sockets registered in
//! it. With the worker's own task loop on top (`proxy::worker_loop`), a query costs one
//! epoll wait, a readiness bit and a queue push per wake-up, where a tokio runtime adds its
//! scheduler, its readiness registrations and its busy-time clock reads.

mod listener;
mod reactor;
mod socket;

pub use listener::EpollListener;

pub use reactor::{Events, Reactor};
pub use socket::EpollTcp;
pub(crate) use socket::{is_nonblocking, sys_recv, sys_send};
