//! Metadata: the `dtr backup` container's archive, streamed into an encrypted artifact.

use crate::error::{Error, Result};
use crate::graph;
use crate::plan::{Plan, UcpTls};

use super::{Ctx, Outcome};

pub fn describe(plan: &Plan) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(ucp) = &plan.ucp {
        let tls = match &ucp.tls {
            UcpTls::Ca(p) => format!("--ucp-ca <content of {}>", p.display()),
            UcpTls::Insecure => "--ucp-insecure-tls".into(),
        };
        out.push(format!(
            "docker create {} backup --ucp-url {} --ucp-username {} --existing-replica-id <replica> {tls}{} (no tty, stdin closed, log driver none)",
            plan.dtr.image.as_deref().unwrap_or("?"),
            ucp.url,
            ucp.username,
            if plan.dtr.offline { " --offline-backup" } else { "" }
        ));
        out.push(format!("env UCP_PASSWORD={}", ucp.password.redacted()));
    }
    out.push(format!(
        "stream stdout into {}",
        graph::metadata_artifact(plan)
    ));
    out
}

pub async fn run(_ctx: Ctx) -> Result<Outcome> {
    Err(Error::failed(
        "the metadata part needs the Docker engine integration, which this build does not have yet; \
         use `parts: [images]`",
    ))
}
