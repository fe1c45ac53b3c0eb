//! Lowercase hexadecimal, and the sha256 digests written with it.

/// Lowercase hexadecimal of bytes.
pub fn encode(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
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
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
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
    }
}
