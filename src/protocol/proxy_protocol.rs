//! PROXY protocol v2 headers (HAProxy's binary format): the parser for the bytes a load
//! balancer puts before the MySQL exchange, and the bounded read of one header off a socket.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The fixed 12-byte signature every v2 header starts with.
pub const SIGNATURE: [u8; 12] = [
    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
];
/// Signature, version/command, family/transport and the 2-byte length.
pub const FIXED_LEN: usize = 16;
/// The length field is 16 bits, but no real header needs more than addresses and a few TLVs;
/// refusing bigger claims keeps a hostile peer from making us read 64 KiB per connection.
pub const MAX_BODY: usize = 4096;

const CMD_LOCAL: u8 = 0x0;
const CMD_PROXY: u8 = 0x1;
const FAM_UNSPEC: u8 = 0x0;
const FAM_INET: u8 = 0x1;
const FAM_INET6: u8 = 0x2;
const FAM_UNIX: u8 = 0x3;
const INET_LEN: usize = 12;
const INET6_LEN: usize = 36;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("no PROXY protocol v2 signature")]
    Signature,
    #[error("PROXY protocol version {0} is not 2")]
    Version(u8),
    #[error("PROXY protocol command {0:#x} is neither LOCAL nor PROXY")]
    Command(u8),
    #[error("PROXY protocol header claims {0} bytes of addresses, over the {MAX_BODY}-byte limit")]
    TooLong(usize),
    #[error("PROXY protocol address block of {got} bytes is shorter than family {family:#x} needs ({need})")]
    ShortAddress { family: u8, got: usize, need: usize },
    #[error("PROXY protocol address family {0:#x} is unknown")]
    Family(u8),
}

/// What a complete header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Bytes the header occupies, signature to the end of its TLVs.
    pub len: usize,
    /// The original client, when the header carries an IP address; `None` for LOCAL (health
    /// checks from the balancer itself), UNSPEC and UNIX, where the socket's peer stands.
    pub source: Option<SocketAddr>,
}

/// A v2 PROXY header saying a TCP connection came from `source` to `destination`, as a
/// backend that trusts us reads it. Mixed families are written as IPv6 (IPv4-mapped).
pub fn encode_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(FIXED_LEN + INET6_LEN);
    out.extend_from_slice(&SIGNATURE);
    out.push(0x20 | CMD_PROXY);
    const STREAM: u8 = 0x1;
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push((FAM_INET << 4) | STREAM);
            out.extend_from_slice(&(INET_LEN as u16).to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push((FAM_INET6 << 4) | STREAM);
            out.extend_from_slice(&(INET6_LEN as u16).to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    out
}

/// A v2 LOCAL header: the proxy's own connection (a health probe), no client to name.
pub fn encode_v2_local() -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    out.extend_from_slice(&[0x20 | CMD_LOCAL, FAM_UNSPEC << 4, 0, 0]);
    out
}

/// Parses a header at the start of `buf`. `Ok(None)` means more bytes are needed; the bytes
/// seen so far were valid. Never reads past the header, so what follows stays for MySQL.
pub fn parse(buf: &[u8]) -> Result<Option<Header>, ProxyHeaderError> {
    let sig = buf.len().min(SIGNATURE.len());
    if buf[..sig] != SIGNATURE[..sig] {
        return Err(ProxyHeaderError::Signature);
    }
    if buf.len() < FIXED_LEN {
        return Ok(None);
    }
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0f);
    if version != 2 {
        return Err(ProxyHeaderError::Version(version));
    }
    if command != CMD_LOCAL && command != CMD_PROXY {
        return Err(ProxyHeaderError::Command(command));
    }
    let family = buf[13] >> 4;
    let body_len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if body_len > MAX_BODY {
        return Err(ProxyHeaderError::TooLong(body_len));
    }
    let Some(body) = buf.get(FIXED_LEN..FIXED_LEN + body_len) else {
        return Ok(None);
    };
    let len = FIXED_LEN + body_len;
    if command == CMD_LOCAL {
        return Ok(Some(Header { len, source: None }));
    }
    let need = match family {
        FAM_INET => INET_LEN,
        FAM_INET6 => INET6_LEN,
        FAM_UNSPEC | FAM_UNIX => 0,
        f => return Err(ProxyHeaderError::Family(f)),
    };
    if body.len() < need {
        return Err(ProxyHeaderError::ShortAddress {
            family,
            got: body.len(),
            need,
        });
    }
    let source = match family {
        FAM_INET => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Some(SocketAddr::new(IpAddr::V4(ip), port(&body[8..10])))
        }
        FAM_INET6 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                port(&body[32..34]),
            ))
        }
        _ => None,
    };
    Ok(Some(Header { len, source }))
}

fn port(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// Why no header could be taken off a connection.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Invalid(#[from] ProxyHeaderError),
    #[error("connection ended before a complete PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
    #[error("no complete PROXY protocol header within {0:?}")]
    Timeout(Duration),
}

/// Reads exactly one header from `r` within `limit`: the fixed part, then the length it
/// declares. Exact reads matter because the MySQL greeting goes out right after.
pub async fn read_header<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: Duration,
) -> Result<Header, ReadError> {
    let read = async {
        let mut buf = [0u8; FIXED_LEN + MAX_BODY];
        // The signature first, alone: a MySQL client that was never behind a balancer sends
        // nothing until greeted, so waiting for 16 bytes would only ever time out.
        r.read_exact(&mut buf[..FIXED_LEN]).await?;
        if let Some(h) = parse(&buf[..FIXED_LEN])? {
            return Ok(h);
        }
        let body = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        r.read_exact(&mut buf[FIXED_LEN..FIXED_LEN + body]).await?;
        match parse(&buf[..FIXED_LEN + body])? {
            Some(h) => Ok(h),
            None => unreachable!("parse asked for more than the length it declared"),
        }
    };
    crate::timer::timeout(limit, read)
        .await
        .map_err(|_| ReadError::Timeout(limit))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut v = SIGNATURE.to_vec();
        v.push(ver_cmd);
        v.push(fam);
        v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn inet_source_is_taken() {
        let body = [10, 1, 2, 3, 127, 0, 0, 1, 0x30, 0x39, 0x17, 0x70];
        let mut h = header(0x21, 0x11, &body);
        h.extend_from_slice(b"mysql bytes");
        let got = parse(&h).unwrap().unwrap();
        assert_eq!(got.len, 28);
        assert_eq!(got.source, Some("10.1.2.3:12345".parse().unwrap()));
    }

    #[test]
    fn inet6_with_tlvs() {
        let mut body = vec![0u8; 36];
        body[15] = 1;
        body[32..34].copy_from_slice(&4000u16.to_be_bytes());
        body.extend_from_slice(&[0x04, 0x00, 0x01, 0xaa]);
        let got = parse(&header(0x21, 0x21, &body)).unwrap().unwrap();
        assert_eq!(got.source, Some("[::1]:4000".parse().unwrap()));
        assert_eq!(got.len, 16 + 40);
    }

    #[test]
    fn local_keeps_the_socket_peer() {
        let got = parse(&header(0x20, 0x00, &[])).unwrap().unwrap();
        assert_eq!(
            got,
            Header {
                len: 16,
                source: None
            }
        );
    }

    #[test]
    fn partial_input_asks_for_more() {
        let h = header(0x21, 0x11, &[0; 12]);
        for n in 0..h.len() {
            assert_eq!(parse(&h[..n]), Ok(None), "prefix of {n} bytes");
        }
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(parse(b"\x0a\x00\x00\x00"), Err(ProxyHeaderError::Signature));
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
            Err(ProxyHeaderError::Signature)
        );
        assert_eq!(
            parse(&header(0x11, 0x11, &[0; 12])),
            Err(ProxyHeaderError::Version(1))
        );
        assert_eq!(
            parse(&header(0x2f, 0x11, &[0; 12])),
            Err(ProxyHeaderError::Command(0xf))
        );
        assert!(matches!(
            parse(&header(0x21, 0x11, &[0; 4])),
            Err(ProxyHeaderError::ShortAddress { .. })
        ));
        assert_eq!(
            parse(&header(0x21, 0x41, &[0; 12])),
            Err(ProxyHeaderError::Family(4))
        );
        let mut long = header(0x21, 0x11, &[]);
        long[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
        assert_eq!(parse(&long), Err(ProxyHeaderError::TooLong(0xffff)));
    }

    #[tokio::test]
    async fn read_stops_at_the_header() {
        let mut h = header(0x21, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 80, 0, 81]);
        h.extend_from_slice(b"rest");
        let mut r: &[u8] = &h;
        let got = read_header(&mut r, Duration::from_secs(1)).await.unwrap();
        assert_eq!(got.source, Some("1.2.3.4:80".parse().unwrap()));
        assert_eq!(r, b"rest");
    }

    #[test]
    fn encoded_headers_parse_back() {
        let src: SocketAddr = "192.0.2.7:51234".parse().unwrap();
        let dst: SocketAddr = "10.0.0.1:6000".parse().unwrap();
        let h = encode_v2(src, dst);
        let parsed = parse(&h).unwrap().unwrap();
        assert_eq!((parsed.len, parsed.source), (h.len(), Some(src)));
        let src6: SocketAddr = "[2001:db8::9]:4000".parse().unwrap();
        let h = encode_v2(src6, dst);
        assert_eq!(parse(&h).unwrap().unwrap().source, Some(src6));
        let local = encode_v2_local();
        let parsed = parse(&local).unwrap().unwrap();
        assert_eq!((parsed.len, parsed.source), (FIXED_LEN, None));
    }
}
