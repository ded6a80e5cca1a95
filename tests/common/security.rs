//! What the security tests share: a fake backend that asks every client for its password in
//! clear text and counts who came, PROXY headers, and a PKI (raw HTTP is in `http.rs`).

#[allow(unused_imports)]
pub use super::http::{basic, http, Reply};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A server that greets like MySQL but names `mysql_clear_password` as its auth plugin, so
/// any client sent to it would hand over its password in clear. It only counts connections.
pub struct HarvestingBackend {
    pub addr: String,
    pub accepted: Arc<AtomicUsize>,
}

impl HarvestingBackend {
    /// Serves for at most `lifetime` (the test is over by then).
    pub fn start(lifetime: Duration) -> HarvestingBackend {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let rounds = (lifetime.as_millis() / 20).max(1) as usize;
        std::thread::spawn(move || {
            for _ in 0..rounds {
                match l.accept() {
                    Ok((mut s, _)) => {
                        count.fetch_add(1, Ordering::SeqCst);
                        let _ = s.write_all(&clear_password_greeting());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        HarvestingBackend { addr, accepted }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

fn clear_password_greeting() -> Vec<u8> {
    let mut p = vec![0x0a];
    p.extend_from_slice(b"10.11.0-harvester\0");
    p.extend_from_slice(&7u32.to_le_bytes());
    p.extend_from_slice(b"abcdefgh\0");
    let caps: u32 = 0x0008_0000 | 0x0000_8000 | 0x0000_0200; // PLUGIN_AUTH, SECURE_CONN, PROTOCOL_41
    p.extend_from_slice(&(caps as u16).to_le_bytes());
    p.push(33);
    p.extend_from_slice(&2u16.to_le_bytes());
    p.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
    p.push(21);
    p.extend_from_slice(&[0; 10]);
    p.extend_from_slice(b"ijklmnopqrst\0");
    p.extend_from_slice(b"mysql_clear_password\0");
    let mut out = vec![
        p.len() as u8,
        (p.len() >> 8) as u8,
        (p.len() >> 16) as u8,
        0,
    ];
    out.extend_from_slice(&p);
    out
}

/// A TCP connection to `dst` from the loopback address `src` (e.g. 127.0.0.2), so a test can
/// play a second host without leaving loopback.
pub fn connect_from(src: [u8; 4], dst: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind((std::net::Ipv4Addr::from(src), 0).into())?;
        let s = tokio::time::timeout(Duration::from_secs(10), sock.connect(dst))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let s = s.into_std()?;
        s.set_nonblocking(false)?;
        Ok(s)
    })
}

/// A PROXY protocol v2 header (PROXY command, TCP over IPv4) naming `src` as the client.
pub fn proxy_v2_header(src: [u8; 4], src_port: u16, dst: [u8; 4], dst_port: u16) -> Vec<u8> {
    let mut h = vec![
        0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x11, 0, 12,
    ];
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(&src_port.to_be_bytes());
    h.extend_from_slice(&dst_port.to_be_bytes());
    h
}

/// The first packet a MySQL server sends on `s`: Some(true) for a greeting, Some(false) for
/// an ERR (with its code), None when the connection closed or stayed silent for `wait`.
pub fn first_packet(s: &mut TcpStream, wait: Duration) -> Option<(bool, u16)> {
    s.set_read_timeout(Some(wait)).ok()?;
    let mut head = [0u8; 5];
    s.read_exact(&mut head).ok()?;
    match head[4] {
        0x0a => Some((true, 0)),
        0xff => {
            let mut code = [0u8; 2];
            s.read_exact(&mut code).ok()?;
            Some((false, u16::from_le_bytes(code)))
        }
        _ => None,
    }
}

/// A private CA with a server and a client certificate it signed, as PEM files in `dir`.
pub struct Pki {
    pub ca: std::path::PathBuf,
    pub server_cert: std::path::PathBuf,
    pub server_key: std::path::PathBuf,
    pub client_cert: std::path::PathBuf,
    pub client_key: std::path::PathBuf,
    /// A client certificate from a CA the proxy does not trust.
    pub stranger_cert: std::path::PathBuf,
    pub stranger_key: std::path::PathBuf,
}

impl Pki {
    pub fn new(dir: &std::path::Path) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        };
        let ca = |name: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(DnType::CommonName, name);
            let key = KeyPair::generate().unwrap();
            let cert = p.self_signed(&key).unwrap();
            (cert, key)
        };
        let leaf = |issuer: &(rcgen::Certificate, KeyPair), usage: ExtendedKeyUsagePurpose| {
            let mut p =
                CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                    .unwrap();
            p.distinguished_name
                .push(DnType::CommonName, "tiproxy test");
            p.extended_key_usages = vec![usage];
            let key = KeyPair::generate().unwrap();
            let cert = p.signed_by(&key, &issuer.0, &issuer.1).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let trusted = ca("tiproxy test CA");
        let other = ca("someone else's CA");
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let (sc, sk) = leaf(&trusted, ExtendedKeyUsagePurpose::ServerAuth);
        let (cc, ck) = leaf(&trusted, ExtendedKeyUsagePurpose::ClientAuth);
        let (xc, xk) = leaf(&other, ExtendedKeyUsagePurpose::ClientAuth);
        Pki {
            ca: write("ca.pem", &trusted.0.pem()),
            server_cert: write("server.pem", &sc),
            server_key: write("server-key.pem", &sk),
            client_cert: write("client.pem", &cc),
            client_key: write("client-key.pem", &ck),
            stranger_cert: write("stranger.pem", &xc),
            stranger_key: write("stranger-key.pem", &xk),
        }
    }

    /// A `[security.<section>]` table serving with this CA.
    pub fn table(&self, section: &str, skip_ca: bool) -> String {
        format!(
            "\n[security.{section}]\nca = {:?}\ncert = {:?}\nkey = {:?}\nskip-ca = {skip_ca}\n",
            self.ca.display().to_string(),
            self.server_cert.display().to_string(),
            self.server_key.display().to_string(),
        )
    }
}

/// The HTTP status `curl` gets for `/api/debug/health` over HTTPS on `port`, with a client
/// certificate and key when given ("000" when the TLS handshake is refused).
pub fn curl_health(port: u16, cert: Option<(&std::path::Path, &std::path::Path)>) -> String {
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-sk",
        "--max-time",
        "10",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
    ]);
    if let Some((c, k)) = cert {
        cmd.arg("--cert").arg(c).arg("--key").arg(k);
    }
    cmd.arg(format!("https://127.0.0.1:{port}/api/debug/health"));
    super::cli::run(&mut cmd, Duration::from_secs(20))
        .stdout
        .trim()
        .to_owned()
}
