//! HTTPS clients for UCP's and DTR's APIs, trusting what the plan says: a CA file, or nothing
//! (`insecure_tls: true`).
//!
//! A CA file may hold the server's own self-signed certificate rather than a CA's, as
//! `openssl req -x509` makes it (`CA:TRUE`, presented as the server certificate). curl, Go and
//! the DTR container accept that; webpki refuses it (`CaUsedAsEndEntity`). [`Pinned`] accepts
//! it: the server must present exactly a certificate of the file, byte for byte, within its
//! validity (webpki checks dates before the CA flag), and for the host asked for; being
//! trusted as itself, its extended key usage is not checked. Every other certificate goes
//! through webpki's full verification.
//!
//! [`explain`] turns a TLS failure into words: what did not match and what to check.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// How a client trusts the server.
#[derive(Clone, Copy, Debug)]
pub enum Trust<'a> {
    /// The certificates (CAs, or the server's own) in this PEM file.
    CaFile(&'a Path),
    /// No verification at all.
    Insecure,
}

/// A client with the given trust and timeouts. The error says what to fix in words.
pub fn client(trust: Trust<'_>, timeout: Duration) -> Result<reqwest::Client, String> {
    let b = reqwest::Client::builder()
        .https_only(true)
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(10));
    let b = match trust {
        Trust::CaFile(path) => b.tls_backend_preconfigured(config(path)?),
        Trust::Insecure => b.tls_danger_accept_invalid_certs(true),
    };
    b.build().map_err(|e| format!("setting up HTTPS: {e}"))
}

/// Reads every certificate of a PEM file.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no certificate (no -----BEGIN CERTIFICATE----- block)",
            path.display()
        ));
    }
    Ok(certs)
}

fn config(path: &Path) -> Result<rustls::ClientConfig, String> {
    let certs = read_certs(path)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in &certs {
        roots.add(c.clone()).map_err(|e| {
            format!(
                "{} holds a certificate that cannot be used: {e}",
                path.display()
            )
        })?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let verifier = Pinned {
        inner,
        pinned: certs,
    };
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("setting up TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// webpki's verification, plus one exception: a server that presents exactly a certificate of
/// the trusted file, which webpki refuses only because that certificate is a CA.
#[derive(Debug)]
pub struct Pinned {
    inner: Arc<WebPkiServerVerifier>,
    pinned: Vec<CertificateDer<'static>>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(e)
                if is_ca_used_as_end_entity(&e)
                    && self
                        .pinned
                        .iter()
                        .any(|p| p.as_ref() == end_entity.as_ref()) =>
            {
                let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
                rustls::client::verify_server_name(&parsed, server_name)?;
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn is_ca_used_as_end_entity(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(CertificateError::Other(o))
            if matches!(o.0.downcast_ref::<webpki::Error>(), Some(webpki::Error::CaUsedAsEndEntity))
    )
}

/// Says in words why a request failed, when TLS is the reason: what did not match, what to
/// check. `trusted` names the file the server was checked against. None when TLS is not the
/// cause.
pub fn explain(e: &(dyn std::error::Error + 'static), trusted: &Path) -> Option<String> {
    let tls = rustls_error(e)?;
    let file = trusted.display();
    if is_ca_used_as_end_entity(tls) {
        return Some(format!(
            "the server presents a self-signed (CA) certificate that is not one of the certificates in {file}; put the server's own certificate in {file}, after checking its fingerprint over a path you trust"
        ));
    }
    Some(match tls {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => format!(
                "the server's certificate is not signed by a CA in {file} and is not one of the certificates in {file}; put the server's CA (or, when it is self-signed, the server's own certificate) in {file}, fetched over a path you trust"
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!(
                    "the server's certificate is not issued for the host in the URL ({}); use the name the certificate was issued for",
                    name_context(c)
                )
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server's certificate has expired; renew it, or check this machine's clock"
                    .to_owned()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet; check this machine's clock".to_owned()
            }
            CertificateError::BadSignature => {
                "the server's certificate does not carry a valid signature of its issuer".to_owned()
            }
            other => format!("the server's certificate was refused: {other:?}"),
        },
        other => format!("the TLS handshake failed: {other}"),
    })
}

fn name_context(c: &CertificateError) -> String {
    match c {
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => format!(
            "asked for {}, the certificate names {}",
            expected.to_str(),
            if presented.is_empty() {
                "no host".to_owned()
            } else {
                presented.join(", ")
            }
        ),
        _ => "the host does not match".to_owned(),
    }
}

/// The rustls error in a request error's chain (io::Error hides its inner error from
/// `source()`, so each io::Error is opened by hand).
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(found) = rustls_error(inner)
        {
            return Some(found);
        }
        cur = err.source();
    }
    None
}
