//! The loop's contract: tasks run on its thread, wakes from any thread reach them, a stop
//! drops every future, a panic ends one task only, and sockets see each other's bytes.

use super::*;
use crate::protocol::Tcp;
use std::sync::atomic::AtomicUsize;
use std::sync::mpsc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A loop on its own thread, as a worker runs it.
fn start() -> (LoopHandle, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let (handle, runner) = install().unwrap();
        tx.send(handle).unwrap();
        runner.run(|| {});
    });
    (rx.recv_timeout(Duration::from_secs(10)).unwrap(), thread)
}

#[test]
fn tasks_run_on_the_loop_thread_and_wakes_from_other_threads_reach_them() {
    let (handle, thread) = start();
    let loop_thread = thread.thread().id();
    let (tx, rx) = mpsc::channel();
    let (wake_tx, mut wake_rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
    handle.spawn(async move {
        let mut sum = 0;
        while let Some(n) = wake_rx.recv().await {
            assert_eq!(std::thread::current().id(), loop_thread);
            sum += n;
        }
        tx.send(sum).unwrap();
    });
    for n in 1..=100 {
        wake_tx.send(n).unwrap();
        if n % 10 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    drop(wake_tx);
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 5050);
    handle.stop();
    thread.join().unwrap();
}

#[test]
fn a_task_that_wakes_itself_runs_again_and_tasks_share_the_thread() {
    let (handle, thread) = start();
    let (tx, rx) = mpsc::channel();
    for id in 0..3 {
        let tx = tx.clone();
        handle.spawn(async move {
            for _ in 0..50 {
                tokio::task::yield_now().await;
            }
            tx.send(id).unwrap();
        });
    }
    let mut done: Vec<i32> = (0..3)
        .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
        .collect();
    done.sort();
    assert_eq!(done, [0, 1, 2]);
    handle.stop();
    thread.join().unwrap();
}

struct CountDrop(Arc<AtomicUsize>);
impl Drop for CountDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_stop_drops_every_waiting_future_and_a_panic_ends_only_its_task() {
    let (handle, thread) = start();
    let dropped = Arc::new(AtomicUsize::new(0));
    handle.spawn(async { panic!("this task fails on purpose") });
    let mut keep = Vec::new();
    for _ in 0..5 {
        let guard = CountDrop(dropped.clone());
        let (_never, wait) = tokio::sync::oneshot::channel::<()>();
        keep.push(_never);
        handle.spawn(async move {
            let _guard = guard;
            let _ = wait.await;
        });
    }
    // The loop still runs tasks after the panic.
    let (tx, rx) = mpsc::channel();
    handle.spawn(async move { tx.send(()).unwrap() });
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(dropped.load(Ordering::SeqCst), 0);
    handle.stop();
    thread.join().unwrap();
    assert_eq!(dropped.load(Ordering::SeqCst), 5);
}

#[test]
fn sockets_on_the_loop_carry_bytes_both_ways_and_see_the_peer_close() {
    let (handle, thread) = start();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    let client = std::net::TcpStream::connect(addr).unwrap();
    let (server, _) = listener.accept().unwrap();
    for s in [&client, &server] {
        s.set_nonblocking(true).unwrap();
    }
    handle.spawn(async move {
        let run = async {
            let mut a = Tcp::from_std(client)?;
            let mut b = Tcp::from_std(server)?;
            assert!(matches!(a, Tcp::Epoll(_)));
            // More than a socket buffer: the writer must wait for room and be woken.
            let data: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
            let expect = data.clone();
            let write = async move {
                a.send_all(&data).await?;
                a.shutdown().await?;
                io::Result::Ok(a)
            };
            let read = async move {
                let mut got = Vec::new();
                b.read_to_end(&mut got).await?;
                io::Result::Ok(got)
            };
            let (a, got) = tokio::try_join!(write, read)?;
            drop(a);
            io::Result::Ok(got == expect)
        };
        tx.send(run.await.map_err(|e| e.to_string())).unwrap();
    });
    assert_eq!(rx.recv_timeout(Duration::from_secs(30)).unwrap(), Ok(true));
    handle.stop();
    thread.join().unwrap();
}

#[test]
fn a_connect_from_the_loop_reaches_a_listener_and_reports_a_refusal() {
    let (handle, thread) = start();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listener.local_addr().unwrap().to_string();
    // A port nothing listens on: bound, then closed.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let (tx, rx) = mpsc::channel();
    handle.spawn(async move {
        let reached = match Tcp::connect(&open).await {
            Ok(mut tcp) => {
                let on_loop = matches!(tcp, Tcp::Epoll(_));
                tcp.write_all(b"ping").await.map(|_| on_loop)
            }
            Err(e) => Err(e),
        };
        let refused = Tcp::connect(&closed).await.err().map(|e| e.kind());
        tx.send((reached.map_err(|e| e.to_string()), refused))
            .unwrap();
    });
    let (reached, refused) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(reached, Ok(true), "connected from the loop's own reactor");
    let (mut peer, _) = listener.accept().unwrap();
    let mut got = [0u8; 4];
    std::io::Read::read_exact(&mut peer, &mut got).unwrap();
    assert_eq!(&got, b"ping");
    assert_eq!(refused, Some(io::ErrorKind::ConnectionRefused));
    handle.stop();
    thread.join().unwrap();
}

#[test]
fn loops_sharing_a_listener_accept_every_connection_once() {
    use crate::protocol::epoll::{EpollListener, Reactor};
    use std::io::{Read, Write};
    let listener = Arc::new(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let peers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let loops: Vec<_> = (0..2).map(|_| start()).collect();
    let (ready_tx, ready_rx) = mpsc::channel();
    for (handle, _) in &loops {
        let (listener, accepted, ready) = (listener.clone(), accepted.clone(), ready_tx.clone());
        let peers = peers.clone();
        handle.spawn(async move {
            let incoming = EpollListener::adopt(listener, Reactor::current().unwrap()).unwrap();
            ready.send(()).unwrap();
            loop {
                let (socket, peer) = incoming.accept().await.unwrap();
                // Accepted nonblocking, so adopting it needs no system call to set the mode.
                assert!(crate::protocol::epoll::is_nonblocking(&socket));
                peers.lock().unwrap().push(peer);
                accepted.fetch_add(1, Ordering::SeqCst);
                let mut tcp = Tcp::from_std(socket).unwrap();
                let mut byte = [0u8; 1];
                tcp.read_exact(&mut byte).await.unwrap();
                tcp.write_all(&[byte[0] + 1]).await.unwrap();
            }
        });
    }
    let gone = Arc::downgrade(&listener);
    drop(listener);
    for _ in 0..2 {
        ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    }
    let mut clients = Vec::new();
    for n in 0..40u8 {
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        clients.push(client.local_addr().unwrap());
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        client.write_all(&[n]).unwrap();
        let mut answer = [0u8; 1];
        client.read_exact(&mut answer).unwrap();
        assert_eq!(answer[0], n + 1, "connection {n} was not served");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 40);
    let mut seen = peers.lock().unwrap().clone();
    seen.sort();
    clients.sort();
    assert_eq!(seen, clients, "each accept names its client's address");
    for (handle, thread) in loops {
        handle.stop();
        thread.join().unwrap();
    }
    // Both loops dropped their acceptors, and with them the last reference to the socket.
    assert!(
        gone.upgrade().is_none(),
        "the listening socket is still open"
    );
}
