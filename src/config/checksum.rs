//! A stable checksum of the effective configuration, reported by /api/debug/health.

use super::types::Config;

impl Config {
    /// CRC-32 (IEEE) of the canonical TOML, like the Go TiProxy's `config_checksum`.
    /// It stays below 2^32 so JSON consumers never lose precision, and it is
    /// independent of the Rust version (unlike `DefaultHasher`).
    pub fn checksum(&self) -> u64 {
        let mut canonical = toml::to_string(self).unwrap_or_default();
        // Whether PD is contacted depends on this flag, so it is part of the effective config.
        if self.proxy.pd_addrs_explicit {
            canonical.push_str("\n#pd-addrs-explicit\n");
        }
        u64::from(crc32fast::hash(canonical.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bitwise CRC-32 (IEEE) the checksum was computed with before `crc32fast`: the values
    /// reported to operators must not change with the implementation.
    fn bitwise_crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                let mask = (crc & 1).wrapping_neg();
                crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
            }
        }
        !crc
    }

    #[test]
    fn crc32_known_vector() {
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
        assert_eq!(bitwise_crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn checksum_matches_the_former_implementation() {
        let mut c = Config::default();
        for explicit in [false, true] {
            c.proxy.pd_addrs_explicit = explicit;
            let mut canonical = toml::to_string(&c).unwrap();
            if explicit {
                canonical.push_str("\n#pd-addrs-explicit\n");
            }
            assert_eq!(c.checksum(), u64::from(bitwise_crc32(canonical.as_bytes())));
        }
    }

    #[test]
    fn checksum_is_stable_and_sensitive() {
        let a = Config::default();
        assert_eq!(a.checksum(), Config::default().checksum());
        assert!(a.checksum() <= u64::from(u32::MAX));
        let mut b = a.clone();
        b.proxy.max_connections = 1;
        assert_ne!(a.checksum(), b.checksum());
    }
}
