//! Re-authenticating a session as its own user without knowing the password. For
//! mysql_native_password the client's reply is SHA1(pw) XOR SHA1(scramble + SHA1(SHA1(pw))).
//! With the stored hash SHA1(SHA1(pw)) (read by the service account) the proxy recovers
//! SHA1(pw) from one observed exchange, checks it against the hash, and can then answer any
//! new scramble as the client would.

use sha1::{Digest, Sha1};

pub const NATIVE: &str = "mysql_native_password";

/// What the proxy saw of the client's authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// A mysql_native_password exchange: the scramble and the client's 20-byte reply.
    Native { scramble: Vec<u8>, reply: Vec<u8> },
    /// The user has an empty password: nothing to derive.
    EmptyPassword,
    /// Another plugin (ed25519, caching_sha2 over plain TCP, ...): not replayable.
    Other(String),
}

/// Tracks the auth exchange packet by packet, as relayed.
#[derive(Debug, Default)]
pub struct ProofCapture {
    plugin: String,
    scramble: Vec<u8>,
    reply: Option<Vec<u8>>,
}

impl ProofCapture {
    /// A login answered in the handshake response itself: the backend's greeting carried
    /// `plugin` and `scramble` (the proxy greeted the client with them) and `reply` answers it.
    pub fn answered_greeting(plugin: &str, scramble: &[u8], reply: &[u8]) -> Self {
        ProofCapture {
            plugin: plugin.to_owned(),
            scramble: scramble.to_vec(),
            reply: Some(reply.to_vec()),
        }
    }

    /// A backend packet during authentication.
    pub fn on_backend(&mut self, p: &[u8]) {
        if p.first() == Some(&0xfe) && p.len() > 1 {
            let rest = &p[1..];
            let nul = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            self.plugin = String::from_utf8_lossy(&rest[..nul]).into_owned();
            let data = rest.get(nul + 1..).unwrap_or_default();
            self.scramble = data.strip_suffix(&[0]).unwrap_or(data).to_vec();
            self.reply = None;
        }
    }

    /// A client packet during authentication.
    pub fn on_client(&mut self, p: &[u8]) {
        if self.reply.is_none() {
            self.reply = Some(p.to_vec());
        }
    }

    pub fn finish(self) -> Proof {
        match (self.plugin.as_str(), self.reply) {
            (NATIVE, Some(r)) if r.is_empty() => Proof::EmptyPassword,
            (NATIVE, Some(r)) if r.len() == 20 && self.scramble.len() >= 20 => Proof::Native {
                scramble: self.scramble,
                reply: r,
            },
            ("", _) => Proof::Other("unknown".into()),
            (p, _) => Proof::Other(p.to_owned()),
        }
    }
}

fn sha1(parts: &[&[u8]]) -> [u8; 20] {
    let mut h = Sha1::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// SHA1(password): what a native-password reply is built from.
pub fn stage1_from_password(password: &[u8]) -> [u8; 20] {
    sha1(&[password])
}

/// Parses a stored native hash "*<40 hex>" into SHA1(SHA1(pw)).
pub fn parse_stored_hash(s: &str) -> Option<[u8; 20]> {
    let hex = s.strip_prefix('*')?;
    if hex.len() != 40 {
        return None;
    }
    let mut out = [0u8; 20];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

/// Recovers SHA1(pw) from an observed exchange; `None` when it does not match the hash.
pub fn recover_stage1(scramble: &[u8], reply: &[u8], stage2: &[u8; 20]) -> Option<[u8; 20]> {
    if reply.len() != 20 {
        return None;
    }
    let mask = sha1(&[&scramble[..20.min(scramble.len())], stage2]);
    let mut s1 = [0u8; 20];
    for i in 0..20 {
        s1[i] = reply[i] ^ mask[i];
    }
    (sha1(&[&s1]) == *stage2).then_some(s1)
}

/// The native-password reply to `scramble` for a user whose SHA1(pw) is `stage1`.
pub fn native_reply(stage1: &[u8; 20], scramble: &[u8]) -> Vec<u8> {
    let stage2 = sha1(&[stage1]);
    let mask = sha1(&[&scramble[..20.min(scramble.len())], &stage2]);
    stage1.iter().zip(mask).map(|(a, b)| a ^ b).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_round_trip_recovers_and_answers_new_scrambles() {
        let pw = b"secret";
        let s1 = stage1_from_password(pw);
        let stage2 = sha1(&[&s1]);
        let scramble: Vec<u8> = (1..=20).collect();
        let reply = native_reply(&s1, &scramble);
        assert_eq!(recover_stage1(&scramble, &reply, &stage2), Some(s1));
        // a wrong stored hash is detected
        assert_eq!(recover_stage1(&scramble, &reply, &[0; 20]), None);
        // the stored form MySQL shows for "secret"
        let stored = parse_stored_hash("*14E65567ABDB5135D0CFD9A70B3032C179A49EE7").unwrap();
        assert_eq!(stored, stage2);
    }

    #[test]
    fn capture_reads_the_switch_and_the_reply() {
        let mut c = ProofCapture::default();
        let mut switch = vec![0xfe];
        switch.extend_from_slice(b"mysql_native_password\0");
        switch.extend((1..=20).collect::<Vec<u8>>());
        switch.push(0);
        c.on_backend(&switch);
        c.on_client(&[9; 20]);
        match c.finish() {
            Proof::Native { scramble, reply } => {
                assert_eq!(scramble, (1..=20).collect::<Vec<u8>>());
                assert_eq!(reply, vec![9; 20]);
            }
            other => panic!("{other:?}"),
        }
        let mut c = ProofCapture::default();
        let mut switch = vec![0xfe];
        switch.extend_from_slice(b"client_ed25519\0abc");
        c.on_backend(&switch);
        c.on_client(&[1; 64]);
        assert_eq!(c.finish(), Proof::Other("client_ed25519".into()));
    }
}
