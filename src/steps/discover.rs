//! Discover: find the DTR replica (and its node and version) through the Docker API.

use crate::error::{Error, Result};
use crate::plan::Plan;

use super::{Ctx, Outcome};

pub fn describe(plan: &Plan) -> Vec<String> {
    vec![
        format!(
            "list containers on {} matching (?:^|/)dtr-rethinkdb-([0-9a-f]{{12}})$",
            plan.docker
                .host
                .as_deref()
                .unwrap_or("$DOCKER_HOST or unix:///var/run/docker.sock")
        ),
        format!("choose replica {}", plan.dtr.replica),
        "read DTR_VERSION and DTR_REPLICA_ID from the replica's dtr-registry container".into(),
    ]
}

pub async fn run(_ctx: Ctx) -> Result<Outcome> {
    Err(Error::failed(
        "replica discovery needs the Docker engine integration, which this build does not have yet; \
         back up image content with `parts: [images]` and `images.type: path`",
    ))
}
