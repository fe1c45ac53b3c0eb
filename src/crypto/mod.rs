//! OpenPGP streams: encryption of artifacts on their way out (to a passphrase or to public
//! keys), decryption for verification (with the passphrase or a secret key).
//!
//! Messages are what gpg 2.2 reads: SKESK v4 or PKESK v3 key packets, then SEIPD v1 (with
//! MDC), AES-256, no OpenPGP compression (artifacts are tar files of mostly compressed layers;
//! compressing again costs CPU for nothing). The key packets are built and opened by
//! sequoia-openpgp (pure-Rust crypto, `crypto-rust`: building needs no system libraries); the
//! bulk, framing and cipher, is [`seipd`]'s, for speed (see there). Messages that `seipd` does
//! not read (compressed, signed, SEIPD v2, other ciphers) go to sequoia's general parser.

//!
//! `keys.rs` says which keys a plan uses, `encrypt.rs` writes messages, `decrypt.rs` reads
//! them. Secret references are resolved by `crate::secret`, a leaf that `storage` and
//! `ucp` use without `crypto`.

mod decrypt;
mod encrypt;
mod keys;
mod seipd;

pub use crate::secret::{Secret, resolve};
pub use decrypt::{MAX_KEY_PACKETS, decrypt};
pub use encrypt::{Digesting, FinishWrite, FinishWriteBox, Framed, Session, encrypt, encrypt_in};
pub use keys::{Decryption, Encryption, Secrets, for_plan, load_recipients, parse_certs};

use sequoia_openpgp as openpgp;

fn to_io(e: openpgp::anyhow::Error) -> std::io::Error {
    std::io::Error::other(e.to_string())
}
