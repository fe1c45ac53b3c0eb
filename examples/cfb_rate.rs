//! The speed of the one part of an OpenPGP (SEIPD v1) encryption that cannot be spread over
//! cores: AES-256 in CFB mode, where every block's input is the previous block's output.
//! Encrypts a buffer in memory, on one thread, with the `aes` crate (AES-NI where the CPU has
//! it), the way `src/crypto/seipd.rs` does, and prints MB/s (the best of three passes).
//!
//! `scripts/bench` runs it to put the floor and `apply` next to what the cipher alone allows.
//!
//! Usage: cargo run --release --example cfb_rate [MiB]

use std::time::Instant;

use aes::cipher::consts::U16;
use aes::cipher::{BlockBackend, BlockClosure, BlockEncrypt, BlockSizeUser, KeyInit};

struct Cfb<'a> {
    iv: &'a mut aes::Block,
    data: &'a mut [u8],
}

impl BlockSizeUser for Cfb<'_> {
    type BlockSize = U16;
}

impl BlockClosure for Cfb<'_> {
    fn call<B: BlockBackend<BlockSize = U16>>(self, backend: &mut B) {
        for block in self.data.chunks_exact_mut(16) {
            backend.proc_block_inplace(self.iv);
            let keystream = u128::from_ne_bytes((*self.iv).into());
            let plain = u128::from_ne_bytes(block.try_into().expect("a block"));
            let c = (plain ^ keystream).to_ne_bytes();
            block.copy_from_slice(&c);
            *self.iv = c.into();
        }
    }
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(512);
    let mut data: Vec<u8> = (0..mib << 20).map(|i| (i * 31 % 251) as u8).collect();
    let cipher = aes::Aes256::new_from_slice(&[7u8; 32]).expect("a 256-bit key");
    let mut best = f64::MAX;
    for _ in 0..3 {
        let mut iv = aes::Block::default();
        let t = Instant::now();
        cipher.encrypt_with_backend(Cfb {
            iv: &mut iv,
            data: &mut data,
        });
        best = best.min(t.elapsed().as_secs_f64());
        std::hint::black_box(&iv);
    }
    println!("{:.0}", data.len() as f64 / best / 1e6);
}
