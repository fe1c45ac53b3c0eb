//! DTR's HTTPS API at `dtr.external_url`, for the one setting a backup changes: the
//! registry's read-only mode (`GET`/`POST /api/v0/meta/settings`, `readOnlyRegistry`). DTR
//! takes UCP's admin credentials over HTTP basic authentication. TLS trusts `dtr.ca_file`, or
//! else what the plan trusts for UCP.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::https;
use crate::plan::{Plan, UcpTls};
use crate::secret::Secret;

const SETTINGS: &str = "/api/v0/meta/settings";

/// A client of one DTR's API.
pub struct Api {
    client: reqwest::Client,
    url: String,
    username: String,
    password: Secret,
    /// The file the server is checked against, for messages (None: insecure).
    trusted: Option<std::path::PathBuf>,
}

impl Api {
    /// The plan's DTR API (at `url`, which is the plan's `dtr.external_url` or the one a
    /// previous run recorded), with UCP's admin credentials.
    pub fn new(plan: &Plan, url: &str, password: &Secret) -> Result<Api> {
        let ucp = plan.ucp.as_ref().ok_or_else(|| {
            Error::ucp(format!(
                "DTR's API at {url} takes UCP's admin credentials, and the plan has no `ucp` section"
            ))
        })?;
        let trusted = match (&plan.dtr.ca_file, &ucp.tls) {
            (Some(f), _) => Some(f.clone()),
            (None, UcpTls::Ca(f)) => Some(f.clone()),
            (None, UcpTls::Insecure) => None,
        };
        let trust = trusted
            .as_deref()
            .map_or(https::Trust::Insecure, https::Trust::CaFile);
        let client = https::client(trust, Duration::from_secs(20)).map_err(|e| {
            Error::ucp(format!(
                "DTR's API: {e}; set dtr.ca_file to DTR's CA (`curl -k {url}/ca`), checked"
            ))
        })?;
        Ok(Api {
            client,
            url: url.trim_end_matches('/').to_owned(),
            username: ucp.username.clone(),
            password: password.clone(),
            trusted,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether the registry is read-only now.
    pub async fn read_only(&self) -> Result<bool> {
        let resp = self
            .client
            .get(format!("{}{SETTINGS}", self.url))
            .basic_auth(&self.username, Some(self.password.expose()))
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let doc = self.answer(resp, "reading its settings").await?;
        doc.get("readOnlyRegistry")
            .and_then(serde_json::Value::as_bool)
            .ok_or_else(|| {
                Error::ucp(format!(
                    "DTR at {} answered {SETTINGS} without `readOnlyRegistry`: check that dtr.external_url is DTR's address",
                    self.url
                ))
            })
    }

    /// Sets the registry read-only (or writable), and checks that DTR says so.
    pub async fn set_read_only(&self, on: bool) -> Result<()> {
        let resp = self
            .client
            .post(format!("{}{SETTINGS}", self.url))
            .basic_auth(&self.username, Some(self.password.expose()))
            .json(&serde_json::json!({ "readOnlyRegistry": on }))
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let what = if on {
            "setting the registry read-only"
        } else {
            "setting the registry writable"
        };
        let doc = self.answer(resp, what).await?;
        match doc
            .get("readOnlyRegistry")
            .and_then(serde_json::Value::as_bool)
        {
            Some(v) if v == on => Ok(()),
            _ => Err(Error::ucp(format!(
                "DTR at {} did not take the setting readOnlyRegistry={on}",
                self.url
            ))),
        }
    }

    async fn answer(&self, resp: reqwest::Response, doing: &str) -> Result<serde_json::Value> {
        let status = resp.status();
        if status.as_u16() == 401 || status.as_u16() == 403 {
            return Err(Error::ucp(format!(
                "DTR at {} refused {doing} to {:?} ({status}): the user must be a UCP administrator; check the ucp password reference",
                self.url, self.username
            )));
        }
        if !status.is_success() {
            return Err(Error::ucp(format!(
                "DTR at {} answered {doing} with {status}: check that dtr.external_url is DTR's address",
                self.url
            )));
        }
        resp.json().await.map_err(|e| {
            Error::ucp(format!(
                "DTR at {} answered {doing} with something that is not JSON ({e}): check that dtr.external_url is DTR's address",
                self.url
            ))
        })
    }

    fn unreachable(&self, e: &reqwest::Error) -> Error {
        let why = self
            .trusted
            .as_deref()
            .and_then(|f| https::explain(e, f))
            .unwrap_or_else(|| crate::ucp::chain(e));
        Error::ucp(format!(
            "DTR's API at {} cannot be reached: {why}; check dtr.external_url{}",
            self.url,
            match &self.trusted {
                Some(f) => format!(" and that {} is DTR's CA", f.display()),
                None => String::new(),
            }
        ))
    }
}
