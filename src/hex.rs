//! Lowercase hexadecimal, and the sha256 digests written with it.

/// Lowercase hexadecimal of bytes.
pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Whether `d` is a sha256 digest as written here: 64 lowercase hex digits.
pub fn is_sha256(d: &str) -> bool {
    d.len() == 64
        && d.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A sha256 digest.
pub type Sha = [u8; 32];

/// The digest written as 64 lowercase hex digits, or `None`.
pub fn parse_sha(hex: &str) -> Option<Sha> {
    if !is_sha256(hex) {
        return None;
    }
    let digit = |c: u8| {
        if c.is_ascii_digit() {
            c - b'0'
        } else {
            c - b'a' + 10
        }
    };
    let mut out = [0u8; 32];
    for (b, pair) in out.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        *b = digit(pair[0]) << 4 | digit(pair[1]);
    }
    Some(out)
}

/// The digest as 64 lowercase hex digits.
pub fn sha_hex(d: &Sha) -> String {
    encode(d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_and_digests() {
        assert_eq!(super::encode(&[0, 0xab, 0x10]), "00ab10");
        assert!(super::is_sha256(&"ab".repeat(32)));
        assert!(!super::is_sha256(&"AB".repeat(32)));
        assert!(!super::is_sha256(&"ab".repeat(31)));
        let all: Vec<u8> = (0..=255).collect();
        let hex = super::encode(&all);
        assert_eq!(&hex[..8], "00010203");
        assert_eq!(&hex[hex.len() - 4..], "feff");
        let digest: Vec<u8> = (0..32).map(|i| i * 8 + 7).collect();
        assert_eq!(
            super::parse_sha(&super::encode(&digest)).unwrap().to_vec(),
            digest
        );
    }
}
