//! Which keys a plan encrypts to and verifies with: passphrases, recipients' public keys,
//! secret keys for verification, resolved once per run.

use sequoia_openpgp as openpgp;

use openpgp::Cert;
use openpgp::cert::CertParser;
use openpgp::packet::Key;
use openpgp::packet::key::{PublicParts, UnspecifiedRole};
use openpgp::parse::Parse;
use openpgp::policy::StandardPolicy;

use crate::error::{Error, Result};

use super::*;

/// How artifacts are encrypted, with its secrets resolved.
#[derive(Clone, Debug)]
pub enum Encryption {
    None,
    Passphrase(Secret),
    /// Public keys; every artifact is encrypted to all of them.
    Recipients(Vec<Cert>),
}

impl Encryption {
    pub fn is_encrypted(&self) -> bool {
        !matches!(self, Encryption::None)
    }
}

/// The secrets of a run, resolved at preflight.
#[derive(Clone, Debug)]
pub struct Secrets {
    pub encryption: Encryption,
    pub ucp_password: Option<Secret>,
    /// How to read the artifacts back; `None` when the run holds no key that can (recipients
    /// encryption without `verify.key`).
    pub decryption: Option<Decryption>,
}

/// How encrypted artifacts are decrypted.
#[derive(Clone, Debug)]
pub enum Decryption {
    None,
    Passphrase(Secret),
    /// Secret keys (TSKs), with the passphrase that unlocks them if they are protected.
    Keys {
        certs: Vec<Cert>,
        passphrase: Option<Secret>,
    },
}

/// The keys of `cert` that may encrypt (storage or transport), valid now.
pub(super) fn encryption_keys(cert: &Cert) -> Vec<Key<PublicParts, UnspecifiedRole>> {
    cert.keys()
        .with_policy(&POLICY, None)
        .supported()
        .alive()
        .revoked(false)
        .for_storage_encryption()
        .for_transport_encryption()
        .map(|ka| ka.key().clone())
        .collect()
}

/// Reads OpenPGP certificates (armored or binary; a file may hold several).
pub fn parse_certs(bytes: &[u8], what: &str) -> Result<Vec<Cert>> {
    let certs: Vec<Cert> = CertParser::from_bytes(bytes)
        .map_err(|e| Error::crypto(format!("{what} is not an OpenPGP key: {e}")))?
        .collect::<openpgp::Result<_>>()
        .map_err(|e| Error::crypto(format!("{what} is not an OpenPGP key: {e}")))?;
    if certs.is_empty() {
        return Err(Error::crypto(format!("{what} holds no OpenPGP key")));
    }
    Ok(certs)
}

/// Loads the recipients' public keys; each needs a valid encryption-capable (sub)key.
pub fn load_recipients(paths: &[std::path::PathBuf]) -> Result<Vec<Cert>> {
    let mut all = Vec::new();
    for path in paths {
        let bytes = std::fs::read(path).map_err(|e| {
            Error::crypto(format!(
                "cannot read the recipient key {}: {e}",
                path.display()
            ))
        })?;
        for cert in parse_certs(&bytes, &path.display().to_string())? {
            if encryption_keys(&cert).is_empty() {
                return Err(Error::crypto(format!(
                    "the key {} ({}) has no valid encryption-capable key: it is expired, revoked, or for signing only",
                    path.display(),
                    cert.fingerprint()
                )));
            }
            all.push(cert);
        }
    }
    Ok(all)
}

pub(super) static POLICY: StandardPolicy = StandardPolicy::new();

/// Resolves how a plan's artifacts are encrypted and read back. Reads secrets.
pub fn for_plan(plan: &crate::plan::Plan) -> Result<(Encryption, Option<Decryption>)> {
    use crate::plan::EncryptionCfg;
    Ok(match &plan.encryption {
        EncryptionCfg::None => (Encryption::None, Some(Decryption::None)),
        EncryptionCfg::Passphrase(r) => {
            let s = resolve(r)?;
            (
                Encryption::Passphrase(s.clone()),
                Some(Decryption::Passphrase(s)),
            )
        }
        EncryptionCfg::Recipients(paths) => (
            Encryption::Recipients(load_recipients(paths)?),
            key_decryption(plan)?,
        ),
    })
}

/// The secret key of `verify.key`, if the plan names one.
fn key_decryption(plan: &crate::plan::Plan) -> Result<Option<Decryption>> {
    let Some(key) = &plan.verify_key else {
        return Ok(None);
    };
    let secret = resolve(key)?;
    let certs = parse_certs(
        secret.expose().as_bytes(),
        &format!("verify.key ({})", key.describe()),
    )?;
    if !certs.iter().any(Cert::is_tsk) {
        return Err(Error::crypto(format!(
            "verify.key ({}) holds a public key only; export the secret key (gpg --export-secret-keys --armor)",
            key.describe()
        )));
    }
    let passphrase = plan
        .verify_key_passphrase
        .as_ref()
        .map(resolve)
        .transpose()?;
    Ok(Some(Decryption::Keys { certs, passphrase }))
}
