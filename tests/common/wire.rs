//! What the scripted servers share: a bounded accept loop with a thread per connection, and
//! blocking packet I/O with the sequence id kept as a server keeps it.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest a scripted server accepts connections.
pub const LIFETIME: Duration = Duration::from_secs(300);

/// Accepts until `stop`, `LIFETIME` or 10,000 connections (health probes connect too), and
/// hands each connection to `serve` on its own thread.
pub fn accept_loop<S: Send + Sync + 'static>(
    listener: TcpListener,
    shared: Arc<S>,
    stop: Arc<AtomicBool>,
    serve: fn(TcpStream, &S) -> std::io::Result<()>,
) {
    let start = Instant::now();
    let mut accepted = 0;
    while !stop.load(Ordering::SeqCst) && start.elapsed() < LIFETIME && accepted < 10_000 {
        match listener.accept() {
            Ok((stream, _)) => {
                accepted += 1;
                let shared = shared.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &shared);
                });
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(_) => return,
        }
    }
}

pub struct Io {
    pub s: TcpStream,
    pub seq: u8,
}

impl Io {
    pub fn new(s: TcpStream) -> Io {
        Io { s, seq: 0 }
    }

    pub fn read(&mut self) -> std::io::Result<Vec<u8>> {
        let mut hdr = [0u8; 4];
        self.s.read_exact(&mut hdr)?;
        let len = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], 0]) as usize;
        self.seq = hdr[3].wrapping_add(1);
        let mut p = vec![0; len];
        self.s.read_exact(&mut p)?;
        Ok(p)
    }

    pub fn write(&mut self, p: &[u8]) -> std::io::Result<()> {
        let mut buf = (p.len() as u32).to_le_bytes()[..3].to_vec();
        buf.push(self.seq);
        self.seq = self.seq.wrapping_add(1);
        buf.extend_from_slice(p);
        self.s.write_all(&buf)
    }
}
