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
