//! AES-256-CTR for capture files, as TiProxy's `encryption-method = "aes256-ctr"`: the key is
//! the first 32 bytes of the `security.encryption-key-path` file, each file begins with a
//! random 16-byte IV, and the counter runs big-endian over the whole block.

use aes::cipher::{KeyIvInit, StreamCipher};
use std::io::{self, Read, Write};
use zeroize::Zeroizing;

type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;

/// The name TiProxy gives the method.
pub const AES256_CTR: &str = "aes256-ctr";
const IV_LEN: usize = 16;

/// A capture key, wiped when dropped.
pub struct Key(Zeroizing<[u8; 32]>);

/// Why no key could be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("security.encryption-key-path is not set: aes256-ctr needs a key file of 32 bytes")]
    NoPath,
    #[error("cannot read the key file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("the key file {path} holds {len} bytes; aes256-ctr needs 32")]
    Short { path: String, len: usize },
}

impl Key {
    /// The first 32 bytes of the file at `path` (a trailing newline after them is ignored).
    pub fn load(path: &str) -> Result<Key, KeyError> {
        if path.is_empty() {
            return Err(KeyError::NoPath);
        }
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?);
        if bytes.len() < 32 {
            return Err(KeyError::Short {
                path: path.to_owned(),
                len: bytes.len(),
            });
        }
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&bytes[..32]);
        Ok(Key(key))
    }

    #[cfg(test)]
    pub fn from_bytes(b: [u8; 32]) -> Key {
        Key(Zeroizing::new(b))
    }

    fn cipher(&self, iv: &[u8; IV_LEN]) -> Aes256Ctr {
        Aes256Ctr::new(self.0.as_ref().into(), iv.into())
    }
}

/// Encrypts what is written to `inner`, after writing the IV.
pub struct CtrWriter<W: Write> {
    inner: W,
    cipher: Aes256Ctr,
    scratch: Vec<u8>,
}

impl<W: Write> CtrWriter<W> {
    pub fn new(mut inner: W, key: &Key) -> io::Result<CtrWriter<W>> {
        let iv: [u8; IV_LEN] = rand::random();
        inner.write_all(&iv)?;
        Ok(CtrWriter {
            inner,
            cipher: key.cipher(&iv),
            scratch: Vec::new(),
        })
    }

    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for CtrWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // The key stream advances with what is encrypted, so exactly what is encrypted must
        // reach `inner`: write it all before saying how much was taken.
        self.scratch.clear();
        self.scratch.extend_from_slice(buf);
        self.cipher.apply_keystream(&mut self.scratch);
        self.inner.write_all(&self.scratch)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Decrypts what `inner` holds after its IV.
pub struct CtrReader<R: Read> {
    inner: R,
    cipher: Aes256Ctr,
}

impl<R: Read> CtrReader<R> {
    pub fn new(mut inner: R, key: &Key) -> io::Result<CtrReader<R>> {
        let mut iv = [0u8; IV_LEN];
        inner.read_exact(&mut iv).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("no encryption IV at the file's start: {e}"),
            )
        })?;
        Ok(CtrReader {
            inner,
            cipher: key.cipher(&iv),
        })
    }
}

impl<R: Read> Read for CtrReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.cipher.apply_keystream(&mut buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_reads_back_and_is_not_stored_in_clear() {
        let key = Key::from_bytes([7; 32]);
        let text = b"INSERT INTO t VALUES ('a secret row')".repeat(50);
        let mut w = CtrWriter::new(Vec::new(), &key).unwrap();
        for chunk in text.chunks(33) {
            w.write_all(chunk).unwrap();
        }
        let stored = w.into_inner();
        assert_eq!(stored.len(), IV_LEN + text.len());
        assert!(!stored.windows(10).any(|w| w == b"secret row"));
        let mut back = Vec::new();
        CtrReader::new(&stored[..], &key)
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, text);
        let mut wrong = Vec::new();
        CtrReader::new(&stored[..], &Key::from_bytes([8; 32]))
            .unwrap()
            .read_to_end(&mut wrong)
            .unwrap();
        assert_ne!(wrong, text, "another key reads noise");
    }

    #[test]
    fn the_key_file_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(Key::load(""), Err(KeyError::NoPath)));
        let short = dir.path().join("short");
        std::fs::write(&short, b"0123456789").unwrap();
        let e = Key::load(short.to_str().unwrap()).err().unwrap();
        assert!(e.to_string().contains("holds 10 bytes"), "{e}");
        let missing = dir.path().join("missing");
        assert!(matches!(
            Key::load(missing.to_str().unwrap()),
            Err(KeyError::Read { .. })
        ));
        let good = dir.path().join("good");
        std::fs::write(&good, [b'k'; 33]).unwrap();
        assert!(Key::load(good.to_str().unwrap()).is_ok());
    }
}
