//! A packet connection: a stream with an owned read buffer (so reads are cancel-safe), a write
//! buffer for packets the proxy composes, and optional compression on top. On plain TCP the read
//! buffer is given back whenever it is empty and the socket has nothing to read, so an idle
//! session holds no buffer memory.

use super::compress::CompressState;
use super::constants::MAX_PAYLOAD;
use super::spare;
use super::stream::Stream;
use bytes::{Buf, BytesMut};
use std::io;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const HEADER_LEN: usize = 4;

/// Payload length and sequence id of the packet header at the start of `b` (at least 4 bytes).
#[inline]
pub fn parse_header(b: &[u8]) -> (usize, u8) {
    (
        usize::from(b[0]) | usize::from(b[1]) << 8 | usize::from(b[2]) << 16,
        b[3],
    )
}

#[inline]
pub fn put_header(out: &mut Vec<u8>, len: usize, seq: u8) {
    out.extend_from_slice(&[len as u8, (len >> 8) as u8, (len >> 16) as u8, seq]);
}

pub struct PacketConn {
    stream: Stream,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    compress: Option<Box<CompressState>>,
    buf_size: usize,
    /// How long the peer may send nothing while something it began is incomplete.
    stall_limit: Option<Duration>,
    /// Bytes read from and written to the stream since `take_traffic`: compressed frames as
    /// sent, but below TLS the plaintext, not the records.
    read_bytes: u64,
    written_bytes: u64,
}

fn eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed by peer")
}

impl PacketConn {
    pub fn new(stream: Stream, buf_size: usize) -> Self {
        Self {
            stream,
            // Taken at the first read, from this thread's spare buffers when it has one: a burst
            // of logins then reuses the buffers earlier logins gave back instead of leaving a
            // trail of freed 32 KiB blocks between the sessions' long-lived allocations.
            rbuf: BytesMut::new(),
            wbuf: Vec::new(),
            compress: None,
            buf_size,
            stall_limit: None,
            read_bytes: 0,
            written_bytes: 0,
        }
    }

    /// The bytes read and written since the last call, for the traffic metrics.
    pub fn take_traffic(&mut self) -> (u64, u64) {
        let t = (self.read_bytes, self.written_bytes);
        self.read_bytes = 0;
        self.written_bytes = 0;
        t
    }

    /// Bounds how long `fill_more` waits for the peer; `None` waits as long as it takes.
    pub fn set_stall_limit(&mut self, limit: Option<Duration>) {
        self.stall_limit = limit;
    }

    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    pub fn stream_mut(&mut self) -> &mut Stream {
        &mut self.stream
    }

    pub fn buf_size(&self) -> usize {
        self.buf_size
    }

    /// From now on, bytes both ways travel in compressed frames.
    pub fn enable_compression(&mut self) {
        let mut st = Box::new(CompressState::new());
        // Bytes already read past the handshake are compressed frames, not packets.
        st.raw.extend_from_slice(&self.rbuf);
        self.rbuf.clear();
        self.compress = Some(st);
    }

    /// The sequence id the next compressed frame written will carry.
    pub fn next_frame_seq(&self) -> Option<u8> {
        self.compress.as_ref().map(|c| c.next_seq())
    }

    /// On a compressed connection, makes the next `len` bytes written travel in one stored
    /// frame (see `CompressState::start_stored_frame`); a no-op otherwise.
    pub fn start_stored_frame(&mut self, len: usize) {
        if let Some(c) = &mut self.compress {
            c.start_stored_frame(len);
        }
    }

    /// The buffered bytes, for rewriting packet headers in place before they are relayed.
    #[inline]
    pub fn buffered_mut(&mut self) -> &mut [u8] {
        &mut self.rbuf
    }

    pub fn is_compressed(&self) -> bool {
        self.compress.is_some()
    }

    /// The bytes read and not yet consumed (uncompressed).
    #[inline]
    pub fn buffered(&self) -> &[u8] {
        &self.rbuf
    }

    #[inline]
    pub fn consume(&mut self, n: usize) {
        self.rbuf.advance(n);
    }

    /// Reads whatever arrives next into the buffer; `Ok(0)` means the peer closed. Cancel-safe:
    /// bytes are only ever appended to buffers this struct owns.
    pub async fn fill(&mut self) -> io::Result<usize> {
        if let (Stream::Plain(_), None) = (&self.stream, &self.compress) {
            return self.fill_plain().await;
        }
        if self.compress.is_none()
            && self.rbuf.is_empty()
            && matches!(self.stream, Stream::Uring(_))
        {
            // As `fill_plain` does: wait on readiness so the buffer can go while idle.
            let (stream, rbuf, buf_size) = (&self.stream, &mut self.rbuf, self.buf_size);
            std::future::poll_fn(|cx| match stream.poll_read_ready(cx) {
                Some(Poll::Pending) => {
                    spare::give_back(rbuf, buf_size);
                    Poll::Pending
                }
                Some(ready) => ready,
                None => Poll::Ready(Ok(())),
            })
            .await?;
            if self.rbuf.capacity() == 0 {
                if let Some(b) = spare::take() {
                    self.rbuf = b;
                }
            }
        }
        self.make_room();
        match &mut self.compress {
            None => {
                let n = self.stream.read_buf(&mut self.rbuf).await?;
                self.read_bytes += n as u64;
                Ok(n)
            }
            // Frames already read come first: decoding stops after a batch.
            Some(c) => loop {
                let produced = c.decode_frames(&mut self.rbuf)?;
                if produced > 0 {
                    return Ok(produced);
                }
                if c.raw.capacity() - c.raw.len() < 1024 {
                    c.raw.reserve(self.buf_size);
                }
                let n = self.stream.read_buf(&mut c.raw).await?;
                self.read_bytes += n as u64;
                if n == 0 {
                    return Ok(0);
                }
            },
        }
    }

    fn make_room(&mut self) {
        if self.rbuf.capacity() - self.rbuf.len() < self.buf_size / 4 {
            if self.rbuf.capacity() == 0 {
                if let Some(b) = spare::take() {
                    self.rbuf = b;
                    if self.rbuf.capacity() >= self.buf_size / 4 {
                        return;
                    }
                }
            }
            self.rbuf.reserve(self.buf_size);
        }
    }

    /// `fill` on plain TCP: waits for readiness, then reads with one system call. Waiting on
    /// readiness instead of in a read lets the buffer go while nothing arrives: thousands of
    /// idle sessions would otherwise pin two full buffers each. Readiness costs no syscall, so
    /// the idle watch on the backend socket stays free too. The read itself goes straight to
    /// the socket (no read future, no second readiness check); a read that does not fill the
    /// buffer clears the readiness, as tokio's own reads do, so no read ends in EAGAIN.
    async fn fill_plain(&mut self) -> io::Result<usize> {
        loop {
            let Stream::Plain(tcp) = &self.stream else {
                unreachable!("fill_plain on a plain stream only");
            };
            let (rbuf, buf_size) = (&mut self.rbuf, self.buf_size);
            std::future::poll_fn(|cx| match tcp.poll_read_ready(cx) {
                Poll::Pending => {
                    if rbuf.is_empty() {
                        spare::give_back(rbuf, buf_size);
                    }
                    Poll::Pending
                }
                ready => ready,
            })
            .await?;
            if self.rbuf.capacity() == 0 {
                if let Some(b) = spare::take() {
                    self.rbuf = b;
                }
            }
            self.make_room();
            let Stream::Plain(tcp) = &self.stream else {
                unreachable!("fill_plain on a plain stream only");
            };
            let got = match tcp.recv_into(&mut self.rbuf) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.read_bytes += got as u64;
            return Ok(got);
        }
    }

    /// `fill` without a future when bytes are there: on plain TCP that may be read now, one
    /// receive. `None` when a read would have to wait (or the stream is not plain TCP); `fill`
    /// or `fill_more` is then the way.
    #[inline]
    pub fn fill_now(&mut self) -> Option<io::Result<usize>> {
        match (&self.compress, &self.stream) {
            (None, Stream::Plain(tcp)) if tcp.may_read() => {}
            _ => return None,
        }
        self.make_room();
        let Stream::Plain(tcp) = &self.stream else {
            unreachable!("checked above");
        };
        match tcp.recv_into(&mut self.rbuf) {
            Ok(got) => {
                self.read_bytes += got as u64;
                Some(Ok(got))
            }
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                None
            }
            Err(e) => Some(Err(e)),
        }
    }

    /// `fill` for the rest of something the peer began (a packet, an upload): within the stall
    /// limit, if one is set, or a `TimedOut` error. A silent peer then costs a session, not a
    /// session held forever with a half-sent command.
    pub async fn fill_more(&mut self) -> io::Result<usize> {
        let Some(limit) = self.stall_limit else {
            return self.fill().await;
        };
        match crate::timer::timeout(limit, self.fill()).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "sent nothing for {} s in the middle of a command (client-read-timeout)",
                    limit.as_secs()
                ),
            )),
        }
    }

    /// Fills until at least `n` bytes are buffered; a close before that is an error.
    pub async fn fill_to(&mut self, n: usize) -> io::Result<()> {
        // Without a buffer yet, the first read takes a whole one (`make_room`).
        if self.rbuf.capacity() > 0 && self.rbuf.len() < n {
            self.rbuf.reserve(n - self.rbuf.len());
        }
        while self.rbuf.len() < n {
            if self.fill_more().await? == 0 {
                return Err(eof());
            }
        }
        Ok(())
    }

    /// Reads one physical packet whole: for the connection phase and small control packets
    /// only (the command relay streams instead). Packets over `limit` bytes are refused.
    pub async fn read_packet(&mut self, limit: usize) -> io::Result<(u8, BytesMut)> {
        self.fill_to(HEADER_LEN).await?;
        let (len, seq) = parse_header(&self.rbuf);
        if len > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("packet of {len} bytes exceeds the {limit}-byte limit of this phase"),
            ));
        }
        self.fill_to(HEADER_LEN + len).await?;
        self.rbuf.advance(HEADER_LEN);
        Ok((seq, self.rbuf.split_to(len)))
    }

    /// Reads one packet without reading a byte past it. Needed where the peer may send the
    /// next bytes in another framing right behind it: a TLS ClientHello follows SSLRequest
    /// without waiting, and must be left in the socket for the TLS layer.
    pub async fn read_packet_exact(&mut self, limit: usize) -> io::Result<(u8, BytesMut)> {
        if !self.rbuf.is_empty() || self.compress.is_some() {
            return self.read_packet(limit).await;
        }
        let mut h = [0u8; HEADER_LEN];
        self.stream.read_exact(&mut h).await?;
        let (len, seq) = parse_header(&h);
        if len > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("packet of {len} bytes exceeds the {limit}-byte limit of this phase"),
            ));
        }
        let mut payload = BytesMut::zeroed(len);
        self.stream.read_exact(&mut payload).await?;
        self.read_bytes += (HEADER_LEN + len) as u64;
        Ok((seq, payload))
    }

    /// Appends one logical packet to the write buffer, split at 16 MiB as the protocol says.
    /// Returns the sequence id the next packet should use.
    pub fn queue_packet(&mut self, mut seq: u8, payload: &[u8]) -> u8 {
        let mut rest = payload;
        loop {
            let n = rest.len().min(MAX_PAYLOAD);
            put_header(&mut self.wbuf, n, seq);
            self.wbuf.extend_from_slice(&rest[..n]);
            seq = seq.wrapping_add(1);
            rest = &rest[n..];
            if n < MAX_PAYLOAD {
                return seq;
            }
        }
    }

    /// Writes the queued packets out.
    pub async fn flush(&mut self) -> io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        // The buffer goes with the write: the proxy composes packets rarely (handshake, errors,
        // COM_QUIT), and an idle session should not keep one.
        let data = std::mem::take(&mut self.wbuf);
        self.write_raw(&data).await
    }

    pub async fn write_packet(&mut self, seq: u8, payload: &[u8]) -> io::Result<u8> {
        let next = self.queue_packet(seq, payload);
        self.flush().await?;
        Ok(next)
    }

    /// The part of `write_raw` that needs no waiting: on plain TCP, the bytes of `data` the
    /// socket takes now (all of them, nearly always); 0 on other streams. The relay forwards
    /// each read this way and builds a write future only for what is left.
    #[inline]
    pub fn write_raw_now(&mut self, data: &[u8]) -> io::Result<usize> {
        let (None, Stream::Plain(tcp)) = (&self.compress, &self.stream) else {
            return Ok(0);
        };
        let sent = tcp.send_now(data)?;
        self.written_bytes += sent as u64;
        Ok(sent)
    }

    /// Writes bytes that already form packets (relayed from the other side) in one go.
    pub async fn write_raw(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.compress {
            None => {
                if let Stream::Plain(tcp) = &self.stream {
                    tcp.send_all(data).await?;
                } else {
                    self.stream.write_all(data).await?;
                }
                self.written_bytes += data.len() as u64;
            }
            Some(c) => {
                let mut framed = Vec::with_capacity(data.len() / 2 + 64);
                c.encode(data, &mut framed)?;
                self.stream.write_all(&framed).await?;
                self.written_bytes += framed.len() as u64;
            }
        }
        if self.stream.is_tls() {
            self.stream.flush().await?;
        }
        Ok(())
    }

    pub async fn shutdown(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}
