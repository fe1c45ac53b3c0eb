//! Preflight: everything that can fail before anything is written. Runs on every apply (also
//! when resuming) and is never recorded as done: secrets are held in memory only.

use crate::crypto::{self, Secrets};
use crate::error::Result;
use crate::plan::{DestinationCfg, EncryptionCfg, Plan};
use crate::storage::Stores;
use crate::{docker, ucp};

use super::Described;

pub fn describe(plan: &Plan) -> Described {
    let mut inputs = vec![format!("destination {}", super::destination_text(plan))];
    if plan.needs_docker() {
        inputs.push(format!(
            "docker {}",
            plan.docker
                .host
                .as_deref()
                .or(plan.docker.bundle.as_ref().map(|_| "from bundle"))
                .unwrap_or("$DOCKER_HOST or unix:///var/run/docker.sock")
        ));
    }
    if let Some(ucp) = &plan.ucp {
        let login = if plan.check_ucp_login {
            " (login check)"
        } else {
            ""
        };
        inputs.push(format!("ucp {}{login}", ucp.url));
    }
    if let Some(images) = &plan.images {
        inputs.extend(super::images::source(images).preflight_inputs());
    }
    match &plan.encryption {
        EncryptionCfg::Passphrase(s) => inputs.push(format!("passphrase {}", s.redacted())),
        EncryptionCfg::Recipients(keys) => inputs.extend(
            keys.iter()
                .map(|k| format!("recipient key {}", k.display())),
        ),
        EncryptionCfg::None => {}
    }
    let mut out = Vec::new();
    if plan.needs_docker() {
        out.push(format!(
            "ping the Docker API at {}",
            plan.docker
                .host
                .as_deref()
                .or(plan
                    .docker
                    .bundle
                    .as_ref()
                    .map(|_| "the client bundle's DOCKER_HOST"))
                .unwrap_or("$DOCKER_HOST or unix:///var/run/docker.sock")
        ));
    }
    if let Some(u) = plan.ucp.as_ref().filter(|_| plan.metadata) {
        out.push(format!("GET {}/_ping", u.url));
        if plan.check_ucp_login {
            out.push(format!(
                "POST {}/auth/login as {} with the password {}",
                u.url,
                u.username,
                u.password.redacted()
            ));
        }
    }
    match &plan.destination {
        DestinationCfg::Local { path } => out.push(format!(
            "check that {} can be written",
            path.join(plan.name.as_str()).display()
        )),
        DestinationCfg::S3(s3) => out.push(format!("check access to s3://{}", s3.bucket)),
    }
    if let Some(images) = &plan.images {
        out.extend(super::images::source(images).describe_preflight());
    }
    match &plan.encryption {
        EncryptionCfg::Passphrase(s) => out.push(format!("read the passphrase {}", s.redacted())),
        EncryptionCfg::Recipients(keys) => {
            for k in keys {
                out.push(format!("read the public key {}", k.display()));
            }
        }
        EncryptionCfg::None => out.push("no encryption".into()),
    }
    Described {
        inputs,
        outputs: vec![],
        actions: out,
    }
}

/// Resolves the secrets and checks the source, the Docker API, UCP and the destination;
/// removes the containers that interrupted runs left on the engine.
pub async fn run(plan: &Plan, stores: &Stores, warn: &(dyn Fn(String) + Sync)) -> Result<Secrets> {
    let (encryption, decryption) = crypto::for_plan(plan)?;
    if let Some(images) = &plan.images {
        super::images::source(images).preflight()?;
    }
    let ucp_password = match (&plan.ucp, plan.metadata) {
        (Some(u), true) => Some(crypto::resolve(&u.password)?),
        _ => None,
    };
    if plan.needs_docker() {
        let engine = docker::connect(&plan.docker)?;
        engine.check().await?;
        remove_leftovers(&engine, plan, false, warn).await?;
    }
    if let (Some(u), Some(pw)) = (&plan.ucp, &ucp_password) {
        ucp::check(u, pw, plan.check_ucp_login).await?;
    }
    // One name: a probe left by a killed run is overwritten and removed by the next (runs
    // of a plan take turns under its lock).
    let probe = ".probe".to_owned();
    stores.backups.put(&probe, b"").map_err(|e| {
        e.context(format!(
            "the destination {} cannot be written",
            stores.backups.describe()
        ))
    })?;
    stores.backups.delete(&probe)?;
    Ok(Secrets {
        encryption,
        ucp_password,
        decryption,
    })
}

/// Removes the containers dtr-backup created whose creator is gone, of any plan: a `dtr
/// backup` container holds the UCP password in its environment (readable with `docker
/// inspect`) for as long as it exists. Containers of a live run are left alone; those of
/// releases that did not record their creator, only for this plan (whose lock this run holds).
/// DTR's restore containers are judged only by a restore of their own plan (`restoring`),
/// which has read its journal first: their exit status says whether the metadata is restored.
pub async fn remove_leftovers(
    engine: &docker::Engine,
    plan: &Plan,
    restoring: bool,
    warn: &(dyn Fn(String) + Sync),
) -> Result<()> {
    let me = crate::process::ProcessId::current();
    for c in docker::container::ours(engine).await? {
        // A restore container may still be restoring after its run was killed: only a
        // restore of its own plan, which reads its journal, judges it.
        let restore = match c.role.as_str() {
            "restore" => Some("DTR's restore"),
            "ucp-restore" => Some("UCP's restore"),
            _ => None,
        };
        if let Some(what) = restore
            && !(restoring && c.plan == plan.name.as_str())
        {
            if c.owner.as_ref().and_then(|o| o.gone(&me)).is_some() {
                warn(format!(
                    "container {} of {what}, left by an interrupted restore of plan {}, is kept: `dtr-backup restore` of that plan judges and removes it{}",
                    if c.name.is_empty() { &c.id } else { &c.name },
                    c.plan,
                    if c.role == "restore" {
                        " (it holds the UCP password in its environment)"
                    } else {
                        ""
                    }
                ));
            }
            continue;
        }
        let why = match &c.owner {
            Some(owner) => owner.gone(&me),
            None => (c.plan == plan.name.as_str()).then_some("an earlier run of this plan"),
        };
        let Some(why) = why else { continue };
        match docker::container::remove(engine, &c.id).await {
            Ok(()) => warn(format!(
                "removed container {} left by an interrupted run of plan {} ({why}); it held the UCP password in its environment",
                if c.name.is_empty() { &c.id } else { &c.name },
                c.plan
            )),
            Err(e) => warn(format!(
                "{e}; remove it by hand (`docker rm -f {}`): it may hold the UCP password in its environment",
                c.id
            )),
        }
    }
    Ok(())
}
