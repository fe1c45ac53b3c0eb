//! The Docker API that runs DTR: a node's own socket, or UCP through a client bundle (mutual
//! TLS). Connection, replica discovery, and the containers dtr-backup runs.
//!
//! TLS goes through rustls with the aws-lc-rs provider (bollard's `aws-lc-rs` feature), the
//! same provider the rest of the program uses, so that only one is ever compiled in.

pub mod container;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bollard::query_parameters::{InspectContainerOptions, ListContainersOptionsBuilder};
use bollard::{API_DEFAULT_VERSION, Docker};
use regex::Regex;

use crate::error::{Error, Result};
use crate::plan::{DockerCfg, ReplicaSel};

/// Seconds a Docker API call may take.
const TIMEOUT: u64 = 600;

/// A connected Docker API.
#[derive(Clone)]
pub struct Engine {
    pub docker: Docker,
    /// `unix:///var/run/docker.sock`, `tcp://ucp:443 (client bundle /etc/bundle)`.
    pub endpoint: String,
    /// Through a UCP client bundle: containers need a node constraint.
    pub via_bundle: bool,
}

/// Where and how to connect, from the plan or the Docker CLI's conventions.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    host: String,
    /// Folder with ca.pem, cert.pem, key.pem.
    tls: Option<PathBuf>,
    bundle: bool,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// `DOCKER_HOST` as set by a bundle's `env.sh` (`export DOCKER_HOST=tcp://...`).
fn bundle_host(bundle: &Path) -> Option<String> {
    let text = std::fs::read_to_string(bundle.join("env.sh")).ok()?;
    text.lines().find_map(|l| {
        let l = l.trim().strip_prefix("export ").unwrap_or(l.trim());
        let v = l.strip_prefix("DOCKER_HOST=")?;
        Some(v.trim_matches(['"', '\'']).to_owned())
    })
}

fn target(cfg: &DockerCfg) -> Result<Target> {
    if let Some(bundle) = &cfg.bundle {
        for f in ["ca.pem", "cert.pem", "key.pem"] {
            if !bundle.join(f).is_file() {
                return Err(Error::docker(format!(
                    "the client bundle {} has no {f}; download the bundle again from UCP (My Profile → Client Bundles)",
                    bundle.display()
                )));
            }
        }
        let plan_host = cfg.host.as_ref().map(|h| h.to_string());
        let host = plan_host.or_else(|| bundle_host(bundle)).ok_or_else(|| {
            Error::docker(format!(
                "no Docker host for the client bundle {}: set docker.host, or keep env.sh in the bundle",
                bundle.display()
            ))
        })?;
        return Ok(Target {
            host,
            tls: Some(bundle.clone()),
            bundle: true,
        });
    }
    let host = cfg
        .host
        .as_ref()
        .map(|h| h.to_string())
        .or_else(|| env("DOCKER_HOST"))
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
    let tls = (cfg.host.is_none()
        && env("DOCKER_TLS_VERIFY").is_some_and(|v| v != "0")
        && host.starts_with("tcp://"))
    .then(|| {
        env("DOCKER_CERT_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env("HOME").unwrap_or_else(|| "/root".into())).join(".docker")
            })
    });
    Ok(Target {
        host,
        tls,
        bundle: false,
    })
}

/// Connects (lazily: nothing is sent until the first call).
pub fn connect(cfg: &DockerCfg) -> Result<Engine> {
    let t = target(cfg)?;
    let fail = |e: bollard::errors::Error| {
        Error::docker(format!(
            "cannot set up the Docker connection to {}: {e}",
            t.host
        ))
    };
    let docker = if let Some(path) = t.host.strip_prefix("unix://") {
        Docker::connect_with_unix(path, TIMEOUT, API_DEFAULT_VERSION).map_err(fail)?
    } else if let Some(certs) = &t.tls {
        Docker::connect_with_ssl(
            &t.host,
            &certs.join("key.pem"),
            &certs.join("cert.pem"),
            &certs.join("ca.pem"),
            TIMEOUT,
            API_DEFAULT_VERSION,
        )
        .map_err(fail)?
    } else {
        Docker::connect_with_http(&t.host, TIMEOUT, API_DEFAULT_VERSION).map_err(fail)?
    };
    let endpoint = match (&t.tls, t.bundle) {
        (Some(dir), true) => format!("{} (client bundle {})", t.host, dir.display()),
        (Some(dir), false) => format!("{} (TLS certificates in {})", t.host, dir.display()),
        (None, _) => t.host.clone(),
    };
    Ok(Engine {
        docker,
        endpoint,
        via_bundle: t.bundle,
    })
}

impl Engine {
    /// `/_ping` and `/version`: the API answers. Returns the engine's version.
    pub async fn check(&self) -> Result<String> {
        let what = if self.via_bundle {
            "check the bundle's cert.pem and key.pem (a bundle expires; download a new one), ca.pem, and that UCP is reachable"
        } else {
            "check docker.host and that the daemon runs and this user may use its socket"
        };
        self.docker.ping().await.map_err(|e| {
            Error::docker(format!(
                "the Docker API at {} does not answer: {e}; {what}",
                self.endpoint
            ))
        })?;
        let v = self.docker.version().await.map_err(|e| {
            Error::docker(format!("the Docker API at {}: {e}; {what}", self.endpoint))
        })?;
        Ok(v.version.unwrap_or_else(|| "unknown".into()))
    }
}

/// A DTR replica as seen through the Docker API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replica {
    pub id: String,
    /// The node it runs on (from a bundle's `node/name`, or the engine's name).
    pub node: Option<String>,
    /// `DTR_VERSION` of its `dtr-registry-<id>` container.
    pub version: Option<String>,
}

fn rethink_name() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"(?:^|/)dtr-rethinkdb-([0-9a-f]{12})$").expect("valid regex"))
}

/// The node part of a container name seen through UCP (`node-1/dtr-api-...`).
fn node_of(name: &str) -> Option<String> {
    let name = name.trim_start_matches('/');
    name.rsplit_once('/').map(|(node, _)| node.to_owned())
}

/// Finds the DTR replicas among the running containers.
pub async fn replicas(engine: &Engine) -> Result<Vec<Replica>> {
    let list = engine
        .docker
        .list_containers(Some(ListContainersOptionsBuilder::new().all(false).build()))
        .await
        .map_err(|e| Error::docker(format!("listing containers on {}: {e}", engine.endpoint)))?;
    let mut registry_names: HashMap<String, String> = HashMap::new();
    let mut found: Vec<Replica> = Vec::new();
    for c in &list {
        for name in c.names.iter().flatten() {
            let bare = name.trim_start_matches('/');
            if let Some(cap) = rethink_name().captures(bare) {
                let id = cap[1].to_owned();
                if !found.iter().any(|r| r.id == id) {
                    found.push(Replica {
                        id,
                        node: node_of(bare),
                        version: None,
                    });
                }
            } else if let Some(pos) = bare.rfind("dtr-registry-") {
                let id = &bare[pos + "dtr-registry-".len()..];
                if pos == 0 || bare.as_bytes()[pos - 1] == b'/' {
                    registry_names.insert(id.to_owned(), bare.to_owned());
                }
            }
        }
    }
    let engine_name = if found.iter().any(|r| r.node.is_none()) {
        engine.docker.info().await.ok().and_then(|i| i.name)
    } else {
        None
    };
    for r in &mut found {
        if r.node.is_none() {
            r.node = engine_name.clone();
        }
        let Some(name) = registry_names.get(&r.id) else {
            continue;
        };
        if let Ok(info) = engine
            .docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
        {
            let env = info.config.and_then(|c| c.env).unwrap_or_default();
            r.version = env
                .iter()
                .find_map(|e| e.strip_prefix("DTR_VERSION="))
                .map(str::to_owned);
        }
    }
    found.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(found)
}

/// UCP's controller as seen through the Docker API: a `ucp-controller` container runs on
/// every manager node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Controller {
    /// The node it runs on (from a bundle's `node/name`, or the engine's name).
    pub node: Option<String>,
    /// The image it runs, as created (`docker/ucp-controller:3.2.6`...).
    pub image: String,
    /// The image's tag: the UCP version.
    pub version: Option<String>,
}

fn controller_name() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"(?:^|/)ucp-controller$").expect("valid regex"))
}

/// Finds UCP's controllers among the running containers.
pub async fn ucp_controllers(engine: &Engine) -> Result<Vec<Controller>> {
    let list = engine
        .docker
        .list_containers(Some(ListContainersOptionsBuilder::new().all(false).build()))
        .await
        .map_err(|e| Error::docker(format!("listing containers on {}: {e}", engine.endpoint)))?;
    let mut found = Vec::new();
    for c in &list {
        let Some(name) = c
            .names
            .iter()
            .flatten()
            .map(|n| n.trim_start_matches('/'))
            .find(|n| controller_name().is_match(n))
        else {
            continue;
        };
        let image = c.image.clone().unwrap_or_default();
        // An image shown by its id has no tag: UCP labels its containers with its version.
        let version = crate::plan::image_version(&image).ok().or_else(|| {
            c.labels
                .as_ref()?
                .get("com.docker.ucp.version")
                .filter(|v| crate::plan::image_version(&format!("ucp:{v}")).is_ok())
                .cloned()
        });
        found.push(Controller {
            node: node_of(name),
            version,
            image,
        });
    }
    if found.iter().any(|c| c.node.is_none()) {
        let name = engine.docker.info().await.ok().and_then(|i| i.name);
        for c in &mut found {
            if c.node.is_none() {
                c.node = name.clone();
            }
        }
    }
    found.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(found)
}

fn listing(replicas: &[Replica]) -> String {
    replicas
        .iter()
        .map(|r| {
            format!(
                "{} on {} (DTR {})",
                r.id,
                r.node.as_deref().unwrap_or("?"),
                r.version.as_deref().unwrap_or("?")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Picks the replica to back up. `last` is the replica of the last complete backup.
pub fn choose(found: &[Replica], sel: &ReplicaSel, last: Option<&str>) -> Result<Replica> {
    if found.is_empty() {
        return Err(Error::replica(
            "no DTR replica found: no running container is named dtr-rethinkdb-<replica>; check docker.host or the client bundle, and that DTR runs",
        ));
    }
    match sel {
        ReplicaSel::Pinned(id) => found
            .iter()
            .find(|r| r.id == id.as_str())
            .cloned()
            .ok_or_else(|| {
                Error::replica(format!(
                    "the replica {id} named in the plan does not exist; running replicas: {}",
                    listing(found)
                ))
            }),
        ReplicaSel::Auto => {
            if let Some(last) = last
                && let Some(r) = found.iter().find(|r| r.id == last)
            {
                return Ok(r.clone());
            }
            match found {
                [only] => Ok(only.clone()),
                _ => Err(Error::replica(format!(
                    "{} DTR replicas run and the plan does not say which to back up: {}; set `dtr.replica` to one of them (always back up from the same replica)",
                    found.len(),
                    listing(found)
                ))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(id: &str, node: &str) -> Replica {
        Replica {
            id: id.into(),
            node: Some(node.into()),
            version: Some("2.9.4".into()),
        }
    }

    #[test]
    fn names_through_a_bundle_carry_the_node() {
        let cap = rethink_name()
            .captures("node-1/dtr-rethinkdb-a1640e1c15b6")
            .unwrap();
        assert_eq!(&cap[1], "a1640e1c15b6");
        assert!(
            rethink_name()
                .captures("dtr-rethinkdb-a1640e1c15b6-old")
                .is_none()
        );
        assert!(
            rethink_name()
                .captures("xdtr-rethinkdb-a1640e1c15b6")
                .is_none()
        );
        assert_eq!(
            node_of("/node-1/dtr-api-a1640e1c15b6").as_deref(),
            Some("node-1")
        );
        assert_eq!(node_of("/dtr-api-a1640e1c15b6"), None);
    }

    #[test]
    fn choosing_a_replica() {
        let a = r("aaaaaaaaaaaa", "n1");
        let b = r("bbbbbbbbbbbb", "n2");
        assert_eq!(
            choose(std::slice::from_ref(&a), &ReplicaSel::Auto, None).unwrap(),
            a
        );
        let err = choose(&[a.clone(), b.clone()], &ReplicaSel::Auto, None).unwrap_err();
        assert!(matches!(err, Error::Replica(_)), "{err:?}");
        // The message names the candidates to choose from.
        assert!(err.to_string().contains("aaaaaaaaaaaa on n1"), "{err}");
        assert_eq!(
            choose(
                &[a.clone(), b.clone()],
                &ReplicaSel::Auto,
                Some("bbbbbbbbbbbb")
            )
            .unwrap(),
            b
        );
        let pinned = ReplicaSel::Pinned("cccccccccccc".parse().unwrap());
        assert!(matches!(
            choose(std::slice::from_ref(&a), &pinned, None),
            Err(Error::Replica(_))
        ));
        assert!(matches!(
            choose(&[], &ReplicaSel::Auto, None),
            Err(Error::Replica(_))
        ));
    }

    #[test]
    fn bundle_env_sh() {
        let dir = std::env::temp_dir().join(format!("dtr-backup-bundle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("env.sh"), "export COMPOSE_TLS_VERSION=TLSv1_2\nexport DOCKER_CERT_PATH=$PWD\nexport DOCKER_HOST=tcp://ucp.example.com:443\n").unwrap();
        assert_eq!(
            bundle_host(&dir).as_deref(),
            Some("tcp://ucp.example.com:443")
        );
        let err = target(&DockerCfg {
            host: None,
            bundle: Some(dir.clone()),
        })
        .unwrap_err();
        assert!(matches!(err, Error::Docker(_)), "{err:?}");
        assert!(err.to_string().contains("has no ca.pem"), "{err}");
        for f in ["ca.pem", "cert.pem", "key.pem"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        let t = target(&DockerCfg {
            host: None,
            bundle: Some(dir.clone()),
        })
        .unwrap();
        assert_eq!(t.host, "tcp://ucp.example.com:443");
        assert!(t.bundle);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
