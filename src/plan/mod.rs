//! Plans: loading, checking, and the resolved [`Plan`] the rest of the program uses.
//!
//! `load_str` is pure: it parses the YAML (`yaml.rs`), decodes it into the raw types
//! (`decode/`, `raw.rs`), checks the sections against each other (`check.rs`) and resolves
//! defaults and relative paths. It never reads the environment, a secret, or the network.

pub mod addresses;
mod check;
mod decode;
pub mod diag;
mod names;
pub mod raw;
pub mod yaml;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

pub use addresses::{BucketName, DockerHost, DtrUrl, EndpointUrl, NfsExport, S3Prefix, UcpUrl};
pub use diag::{Diag, FileReport, Severity};
pub use names::{PlanName, ReplicaId, ReplicaSel, SecretRef};
pub use raw::{ImagesMode, Order, RawPlan};

/// A checked plan with defaults applied and paths made absolute.
#[derive(Clone, Debug)]
pub struct Plan {
    pub name: PlanName,
    /// The plan file.
    pub file: PathBuf,
    /// sha256 of the plan file's bytes, hex.
    pub digest: String,
    pub metadata: bool,
    /// `parts` includes `ucp`: UCP's own backup in the same run (`ucp.image` is then set).
    pub ucp_backup: bool,
    pub images: Option<ImagesCfg>,
    pub order: Order,
    pub ucp: Option<UcpCfg>,
    pub docker: DockerCfg,
    pub dtr: DtrCfg,
    pub destination: DestinationCfg,
    pub encryption: EncryptionCfg,
    pub retention: Option<RetentionCfg>,
    /// A local folder for state and lock instead of the destination.
    pub state_path: Option<PathBuf>,
    /// `state.lock_lease`: how long a lock stays valid without a refresh.
    pub lock_lease: std::time::Duration,
    pub check_ucp_login: bool,
    pub verify_after_apply: bool,
    /// The secret key that opens recipients-encrypted artifacts (for verification).
    pub verify_key: Option<SecretRef>,
    pub verify_key_passphrase: Option<SecretRef>,
    /// Commands run around each `plan apply` (`hooks`).
    pub hooks: HooksCfg,
    /// Who is told how each `plan apply` ended (`notify`).
    pub notify: Vec<NotifyCfg>,
    /// The Prometheus textfile written after each `plan apply` (`metrics.textfile`).
    pub metrics_textfile: Option<PathBuf>,
}

impl Plan {
    /// Whether running the plan talks to a Docker engine (UCP, metadata, or images from a
    /// volume).
    pub fn needs_docker(&self) -> bool {
        self.ucp_backup || self.metadata || matches!(self.images, Some(ImagesCfg::Volume { .. }))
    }
}

#[derive(Clone, Debug)]
pub struct UcpCfg {
    pub url: UcpUrl,
    pub username: String,
    pub password: SecretRef,
    pub tls: UcpTls,
    /// The UCP image (`ucp.image`), for UCP's backup and restore.
    pub image: Option<String>,
    /// The tag of `image`: the UCP version.
    pub version: Option<String>,
    /// The Docker socket on the manager node, for UCP's containers (`ucp.docker_socket`).
    pub docker_socket: String,
}

/// How long a lock stays valid without a refresh, unless `state.lock_lease` says otherwise.
pub const DEFAULT_LOCK_LEASE: std::time::Duration = std::time::Duration::from_secs(15 * 60);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UcpTls {
    /// Verify UCP against this CA file (PEM).
    Ca(PathBuf),
    /// `--ucp-insecure-tls`.
    Insecure,
}

#[derive(Clone, Debug, Default)]
pub struct DockerCfg {
    pub host: Option<DockerHost>,
    pub bundle: Option<PathBuf>,
}

#[derive(Clone, Debug, Default)]
pub struct DtrCfg {
    pub image: Option<String>,
    /// The tag of `image`: the DTR version.
    pub version: Option<String>,
    pub replica: ReplicaSel,
    pub offline: bool,
    /// DTR's external URL, for DTR's restore and DTR's API.
    pub external_url: Option<DtrUrl>,
    /// `read_only_during_backup`: the registry is read-only from before metadata until after
    /// images (checked: `external_url` and the `ucp` section are there).
    pub read_only_window: bool,
    /// DTR's API trusts this file (`dtr.ca_file`), else UCP's TLS setting.
    pub ca_file: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub enum ImagesCfg {
    Volume {
        name: Option<String>,
        helper_image: Option<String>,
        mode: ImagesMode,
    },
    Path {
        path: PathBuf,
        name: Option<String>,
        allow_empty: bool,
        mode: ImagesMode,
    },
    Nfs {
        path: PathBuf,
        server: NfsExport,
        name: Option<String>,
        mode: ImagesMode,
    },
    S3(S3Cfg),
}

impl ImagesCfg {
    pub fn kind(&self) -> &'static str {
        match self {
            ImagesCfg::Volume { .. } => "volume",
            ImagesCfg::Path { .. } => "path",
            ImagesCfg::Nfs { .. } => "nfs",
            ImagesCfg::S3(_) => "s3",
        }
    }

    /// How the content is kept: S3 content always object by object (incremental).
    pub fn mode(&self) -> ImagesMode {
        match self {
            ImagesCfg::Volume { mode, .. }
            | ImagesCfg::Path { mode, .. }
            | ImagesCfg::Nfs { mode, .. } => *mode,
            ImagesCfg::S3(_) => ImagesMode::Incremental,
        }
    }
}

#[derive(Clone, Debug)]
pub struct S3Cfg {
    pub bucket: BucketName,
    /// Key prefix without leading or trailing `/` (may be empty).
    pub prefix: S3Prefix,
    pub region: Option<String>,
    pub endpoint: Option<EndpointUrl>,
    pub access_key_id: Option<SecretRef>,
    pub secret_access_key: Option<SecretRef>,
    pub allow_http: bool,
    pub path_style: bool,
    /// Image content in S3: objects copied at once.
    pub parallel: Option<u32>,
    pub allow_empty: bool,
}

impl S3Cfg {
    /// The key prefix of a plan's backups in this bucket: `<prefix>/<plan>`, or `<plan>`.
    /// The one place that says where a plan lives at an S3 destination.
    pub fn plan_root(&self, plan: &str) -> String {
        if self.prefix.is_empty() {
            plan.to_owned()
        } else {
            format!("{}/{plan}", self.prefix)
        }
    }
}

#[derive(Clone, Debug)]
pub enum DestinationCfg {
    Local { path: PathBuf },
    S3(S3Cfg),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EncryptionCfg {
    None,
    Passphrase(SecretRef),
    Recipients(Vec<PathBuf>),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionCfg {
    pub keep_last: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
}

/// `hooks`: argv lists run in order, each within `timeout`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HooksCfg {
    pub before: Vec<Vec<String>>,
    pub after: Vec<Vec<String>>,
    pub on_error: Vec<Vec<String>>,
    pub timeout: std::time::Duration,
}

impl Default for HooksCfg {
    fn default() -> Self {
        HooksCfg {
            before: Vec::new(),
            after: Vec::new(),
            on_error: Vec::new(),
            timeout: std::time::Duration::from_secs(300),
        }
    }
}

/// One `notify` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifyCfg {
    pub kind: NotifyKind,
    pub url: UrlSource,
    pub on_success: bool,
    pub on_failure: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotifyKind {
    Healthchecks,
    Webhook,
}

impl NotifyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyKind::Healthchecks => "healthchecks",
            NotifyKind::Webhook => "webhook",
        }
    }
}

/// Where a notifier's URL comes from. A URL written in the plan is still treated as a secret:
/// it never prints.
#[derive(Clone, PartialEq, Eq)]
pub enum UrlSource {
    Literal(String),
    Secret(SecretRef),
}

impl UrlSource {
    /// How the URL is shown: never the URL itself.
    pub fn redacted(&self) -> String {
        match self {
            UrlSource::Literal(_) => "<redacted URL from the plan>".to_owned(),
            UrlSource::Secret(r) => r.redacted(),
        }
    }
}

impl std::fmt::Debug for UrlSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// The outcome of loading one plan file: the plan when it has no errors, and every diagnostic.
#[derive(Debug)]
pub struct Loaded {
    pub plan: Option<Plan>,
    pub report: FileReport,
}

/// Reads and checks a plan file. Only the file itself is read.
pub fn load(file: &Path) -> std::io::Result<Loaded> {
    let bytes = std::fs::read(file)?;
    let source = String::from_utf8(bytes).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text ({e}); save the plan as UTF-8"),
        )
    })?;
    Ok(load_str(file, &source))
}

/// Checks a plan given as text. `file` names it in messages and anchors relative paths.
pub fn load_str(file: &Path, source: &str) -> Loaded {
    let shared: Arc<str> = Arc::from(source);
    let root = match yaml::parse(source) {
        Ok(root) => root,
        Err(e) => {
            let diag = syntax_diag(source, &e);
            return Loaded {
                plan: None,
                report: FileReport::new(file, shared, vec![diag], &diag::secret_lines(source)),
            };
        }
    };
    let mut decoder = decode::Decoder::new(source);
    let raw = decoder.plan(&root);
    let dir = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let diags = decoder.diags;
    let report = FileReport::new(file, shared, diags, &decoder.masked);
    let plan = match raw {
        Some(raw) if !report.has_errors() => {
            let digest = crate::hex::encode(&Sha256::digest(source.as_bytes()));
            check::resolve(raw, file, &dir, digest)
        }
        _ => None,
    };
    Loaded { plan, report }
}

fn syntax_diag(source: &str, e: &serde_saphyr::Error) -> Diag {
    let inner = e.without_snippet().to_string();
    // The crate's text starts with "error: line L column C: "; the position is shown apart.
    let message = inner
        .split_once(": ")
        .filter(|(head, _)| head.starts_with("error"))
        .map(|(_, rest)| rest)
        .unwrap_or(&inner);
    let message = match message.split_once(": ") {
        Some((head, rest)) if head.starts_with("line ") => rest,
        _ => message,
    };
    let (line, column) = e
        .location()
        .map(|l| (l.line() as usize, l.column() as usize))
        .unwrap_or((1, 1));
    let offset = diag::offset_of(source, line, column);
    let len = source[offset..].chars().next().map_or(0, char::len_utf8);
    let span = yaml::Span {
        offset,
        len,
        line,
        column,
    };
    if message.contains("duplicate mapping key") {
        let key = message
            .split("duplicate mapping key: ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .unwrap_or("")
            .to_owned();
        return Diag::error(
            "plan::duplicate-key",
            span,
            format!("the key `{key}` appears twice in the same section"),
        )
        .label("second occurrence")
        .help("keep one of the two; YAML would silently drop the other");
    }
    let message = message.split(", set ").next().unwrap_or(message).trim();
    let message = match message.rfind(" at line ") {
        Some(i) => &message[..i],
        None => message,
    };
    Diag::error(
        "plan::syntax",
        span,
        format!("the plan is not valid YAML: {message}"),
    )
    .label(message.to_owned())
    .help("check the indentation (spaces, not tabs) and the quotes around this point")
}

/// The DTR version named by an image reference's tag (`docker/dtr:2.9.4` → `2.9.4`).
pub fn image_version(image: &str) -> Result<String, String> {
    let name = image.split('@').next().unwrap_or(image);
    let last = name.rsplit('/').next().unwrap_or(name);
    let Some((_, tag)) = last.rsplit_once(':') else {
        return Err("has no tag".to_owned());
    };
    if tag == "latest" {
        return Err("is tagged `latest`".to_owned());
    }
    let numeric: Vec<&str> = tag.splitn(4, ['.', '-']).take(3).collect();
    let looks_like_version = numeric.len() == 3
        && numeric
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if !looks_like_version {
        return Err(format!("has the tag {tag:?}, which is not a version"));
    }
    Ok(tag.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_tags() {
        assert_eq!(image_version("docker/dtr:2.7.5").unwrap(), "2.7.5");
        assert_eq!(
            image_version("registry.mirantis.com/msr/dtr:2.9.29").unwrap(),
            "2.9.29"
        );
        assert_eq!(
            image_version("localhost:5000/dtr:2.9.4-rc1").unwrap(),
            "2.9.4-rc1"
        );
        assert!(image_version("localhost:5000/dtr").is_err());
        assert!(image_version("docker/dtr:latest").is_err());
        assert!(image_version("docker/dtr").is_err());
        assert!(image_version("docker/dtr:stable").is_err());
    }
}
