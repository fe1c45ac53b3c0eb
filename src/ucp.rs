//! UCP's HTTPS API, for preflight: `/_ping`, and `POST /auth/login` with the plan's
//! credentials, so that a wrong password fails in seconds, before any container runs.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::plan::{UcpCfg, UcpTls};
use crate::secret::Secret;

fn client(ucp: &UcpCfg) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .connect_timeout(Duration::from_secs(10));
    b = match &ucp.tls {
        UcpTls::Ca(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                Error::ucp(format!(
                    "cannot read ucp.ca_file {}: {e}; download it with `curl -k {}/ca`",
                    path.display(),
                    ucp.url
                ))
            })?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                Error::ucp(format!(
                    "ucp.ca_file {} is not a PEM certificate: {e}",
                    path.display()
                ))
            })?;
            b.tls_certs_only([cert])
        }
        UcpTls::Insecure => b.tls_danger_accept_invalid_certs(true),
    };
    b.build()
        .map_err(|e| Error::ucp(format!("setting up HTTPS to UCP: {e}")))
}

/// Checks that UCP answers, and (with `login`) that it accepts the plan's credentials.
pub async fn check(ucp: &UcpCfg, password: &Secret, login: bool) -> Result<()> {
    let client = client(ucp)?;
    let tls_help = match &ucp.tls {
        UcpTls::Ca(p) => format!("check ucp.url and that {} is UCP's CA", p.display()),
        UcpTls::Insecure => "check ucp.url".to_owned(),
    };
    let ping = client
        .get(format!("{}/_ping", ucp.url))
        .send()
        .await
        .map_err(|e| {
            Error::ucp(format!(
                "UCP at {} does not answer: {}; {tls_help}",
                ucp.url,
                chain(&e)
            ))
        })?;
    if !ping.status().is_success() {
        return Err(Error::ucp(format!(
            "UCP at {} answered /_ping with {}; {tls_help}",
            ucp.url,
            ping.status()
        )));
    }
    if !login {
        return Ok(());
    }
    let body = serde_json::json!({"username": ucp.username, "password": password.expose()});
    let resp = client
        .post(format!("{}/auth/login", ucp.url))
        .json(&body)
        .send()
        .await
        .map_err(|e| Error::ucp(format!("logging in to UCP at {}: {}", ucp.url, chain(&e))))?;
    let status = resp.status();
    if status.as_u16() == 401 || status.as_u16() == 403 {
        return Err(Error::ucp(format!(
            "UCP at {} refused the login of {:?} ({status}): check the password reference {} and that the user is a UCP administrator",
            ucp.url,
            ucp.username,
            ucp.password.describe()
        )));
    }
    if !status.is_success() {
        return Err(Error::ucp(format!(
            "UCP at {} answered the login with {status}",
            ucp.url
        )));
    }
    let doc: serde_json::Value = resp
        .json()
        .await
        .map_err(|e| Error::ucp(format!("UCP's login answer is not JSON: {e}")))?;
    if doc
        .get("auth_token")
        .and_then(|t| t.as_str())
        .is_none_or(str::is_empty)
    {
        return Err(Error::ucp(format!(
            "UCP at {} answered the login without an auth_token",
            ucp.url
        )));
    }
    Ok(())
}

/// An error with its causes (reqwest hides the TLS reason in the source chain).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
