//! UCP's HTTPS API, for preflight: `/_ping`, and `POST /auth/login` with the plan's
//! credentials, so that a wrong password fails in seconds, before any container runs.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::https;
use crate::plan::{UcpCfg, UcpTls};
use crate::secret::Secret;

fn client(ucp: &UcpCfg) -> Result<reqwest::Client> {
    https::client(trust(&ucp.tls), Duration::from_secs(20)).map_err(|e| match &ucp.tls {
        UcpTls::Ca(_) => Error::ucp(format!(
            "ucp.ca_file: {e}; download UCP's CA with `curl -k {}/ca` and check it",
            ucp.url
        )),
        UcpTls::Insecure => Error::ucp(e),
    })
}

/// The trust a plan's UCP TLS setting stands for.
pub fn trust(tls: &UcpTls) -> https::Trust<'_> {
    match tls {
        UcpTls::Ca(p) => https::Trust::CaFile(p),
        UcpTls::Insecure => https::Trust::Insecure,
    }
}

/// Why a request to UCP failed, in words when TLS is the reason.
fn unreachable(ucp: &UcpCfg, e: &reqwest::Error) -> String {
    match &ucp.tls {
        UcpTls::Ca(p) => match https::explain(e, p) {
            Some(why) => format!(
                "UCP at {} was refused: {why} (ucp.ca_file: {})",
                ucp.url,
                p.display()
            ),
            None => format!(
                "UCP at {} does not answer: {}; check ucp.url and that {} is UCP's CA",
                ucp.url,
                chain(e),
                p.display()
            ),
        },
        UcpTls::Insecure => format!(
            "UCP at {} does not answer: {}; check ucp.url",
            ucp.url,
            chain(e)
        ),
    }
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
        .map_err(|e| Error::ucp(unreachable(ucp, &e)))?;
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
        .map_err(|e| Error::ucp(format!("logging in: {}", unreachable(ucp, &e))))?;
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
