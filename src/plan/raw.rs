//! The plan as written: one type per YAML section, keys as in the file.
//!
//! These types are filled by `decode/` (which keeps positions for later checks) and describe
//! the JSON Schema (`dtr-backup schema`, `schemas/plan.schema.json`) through `schemars`. The
//! resolved, typed plan that the rest of the program uses is [`crate::plan::Plan`].

use std::borrow::Cow;
use std::path::PathBuf;

use schemars::{JsonSchema, Schema, SchemaGenerator};

use super::yaml::Span;
use super::{
    BucketName, DockerHost, DtrUrl, EndpointUrl, NfsExport, ReplicaSel, S3Prefix, SecretRef, UcpUrl,
};

/// A value with the position it was written at.
#[derive(Clone, Debug)]
pub struct Sp<T> {
    pub value: T,
    pub span: Span,
}

impl<T: JsonSchema> JsonSchema for Sp<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }
    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }
    fn schema_id() -> Cow<'static, str> {
        T::schema_id()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
}

/// A dtr-backup plan (version 1).
#[derive(Clone, Debug, JsonSchema)]
#[schemars(deny_unknown_fields, title = "dtr-backup plan")]
pub struct RawPlan {
    /// Plan format version. Always `1`.
    #[schemars(range(min = 1, max = 1))]
    pub version: Sp<u32>,
    /// Names the backups: lowercase letters, digits and `-`, at most 63 characters.
    #[schemars(regex(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"))]
    pub name: Sp<String>,
    /// What to back up. Default: both.
    #[schemars(length(min = 1))]
    pub parts: Option<Sp<Vec<Sp<Part>>>>,
    /// The UCP that DTR belongs to. Needed when `parts` includes `metadata` or `ucp`.
    pub ucp: Option<Sp<Ucp>>,
    /// How to reach the Docker API that runs DTR.
    pub docker: Option<Sp<Docker>>,
    /// The DTR deployment.
    pub dtr: Option<Sp<Dtr>>,
    /// Where DTR keeps image content. Needed when `parts` includes `images`.
    pub images: Option<Sp<ImageSource>>,
    /// Where backups go.
    pub destination: Sp<Destination>,
    /// How artifacts are encrypted. Required when `parts` includes `metadata`.
    pub encryption: Option<Sp<Encryption>>,
    /// Which complete backups to keep.
    pub retention: Option<Sp<Retention>>,
    /// Where the run state (checkpoints, lock) lives.
    pub state: Option<Sp<StateCfg>>,
    /// Checks made before anything is written.
    pub preflight: Option<Sp<Preflight>>,
    /// Verification after `plan apply`.
    pub verify: Option<Sp<VerifyCfg>>,
    /// Which part is copied first. Default `metadata-first` (see the README).
    pub order: Option<Sp<Order>>,
    /// Commands run around each `plan apply`.
    pub hooks: Option<Sp<Hooks>>,
    /// Who is told how each `plan apply` ended.
    #[schemars(length(min = 1))]
    pub notify: Option<Sp<Vec<Sp<Notifier>>>>,
    /// Metrics of each `plan apply` for Prometheus.
    pub metrics: Option<Sp<Metrics>>,
}

/// A part of a DTR backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(rename_all = "snake_case")]
pub enum Part {
    /// UCP's own backup (users, organizations, teams) through the UCP image's `backup`
    /// command, in the same run and under the same backup id. Needs `ucp.image`.
    Ucp,
    /// DTR metadata through the `dtr backup` container.
    Metadata,
    /// Image content (the registry storage).
    Images,
}

/// How image content is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(rename_all = "snake_case")]
pub enum ImagesMode {
    /// Blobs in the plan's blob store, each once, shared by the backups that list them; the
    /// rest (repositories) as the backup's archive. A repeat backup costs the change.
    Incremental,
    /// One self-contained tar of everything, every backup (`gpg -d | tar -x` restores it).
    Archive,
}

/// The order of the two parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(rename_all = "kebab-case")]
pub enum Order {
    MetadataFirst,
    ImagesFirst,
}

/// UCP endpoint and credentials.
#[derive(Clone, Debug, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Ucp {
    /// `https://` URL of UCP.
    pub url: Sp<UcpUrl>,
    /// A UCP administrator.
    pub username: Sp<String>,
    /// The administrator's password, as a secret reference.
    pub password: Sp<SecretRef>,
    /// PEM file of UCP's CA (fetch it from `https://<ucp>/ca`).
    pub ca_file: Option<Sp<PathBuf>>,
    /// Skip TLS verification of UCP. Insecure; prefer `ca_file`.
    pub insecure_tls: Option<Sp<bool>>,
    /// UCP image whose tag is the running UCP version, e.g. `docker/ucp:3.2.6` or
    /// `mirantis/ucp:3.3.16`. Needed when `parts` includes `ucp`.
    pub image: Option<Sp<String>>,
    /// The Docker socket on the UCP manager node, mounted into UCP's backup and restore
    /// containers at `/var/run/docker.sock`. Default `/var/run/docker.sock`.
    #[schemars(regex(pattern = r"^/"))]
    pub docker_socket: Option<Sp<String>>,
}

/// Docker API connection.
#[derive(Clone, Debug, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Docker {
    /// `unix:///path` or `tcp://host:port`. Default `$DOCKER_HOST`, else the local socket.
    pub host: Option<Sp<DockerHost>>,
    /// A UCP client bundle folder (`ca.pem`, `cert.pem`, `key.pem`, optional `env.sh`).
    pub bundle: Option<Sp<PathBuf>>,
}

/// The DTR deployment.
#[derive(Clone, Debug, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Dtr {
    /// DTR image whose tag is the running DTR version, e.g. `docker/dtr:2.7.5`.
    pub image: Option<Sp<String>>,
    /// `auto` or a 12-hex-digit replica id.
    #[schemars(with = "Option<String>", regex(pattern = r"^(auto|[0-9a-f]{12})$"))]
    pub replica: Option<Sp<ReplicaSel>>,
    /// Stop the replica's RethinkDB for a consistent copy (`--offline-backup`).
    pub offline: Option<Sp<bool>>,
    /// DTR's external URL (`https://dtr.example.com`), recorded in each backup and passed to
    /// DTR's restore as `--dtr-external-url`.
    pub external_url: Option<Sp<DtrUrl>>,
    /// Set the registry read-only (DTR's `readOnlyRegistry` setting, through DTR's API at
    /// `external_url` with UCP's admin credentials) from before metadata until after images,
    /// so that no blob is pushed or collected in between. Default false.
    pub read_only_during_backup: Option<Sp<bool>>,
    /// The CA (or DTR's own self-signed certificate) that DTR's API at `external_url` is
    /// checked against. Default: UCP's `ca_file` (or `insecure_tls`).
    pub ca_file: Option<Sp<PathBuf>>,
}

/// Where DTR keeps image content.
#[derive(Clone, Debug, JsonSchema)]
#[schemars(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ImageSource {
    /// A Docker volume on the replica's node.
    Volume {
        /// Volume name. Default `dtr-registry-<replica>`.
        name: Option<Sp<String>>,
        /// Image for the helper container that mounts the volume. Default: the DTR image.
        helper_image: Option<Sp<String>>,
        /// `incremental` (default) or `archive`.
        mode: Option<Sp<ImagesMode>>,
    },
    /// A local folder holding `docker/registry/v2`.
    Path {
        path: Sp<PathBuf>,
        /// Folder name in the archive (`<name>/_data/docker/...`). Default
        /// `dtr-registry-<replica>` for a pinned replica, else the folder's own name.
        name: Option<Sp<String>>,
        /// Accept a tree without `docker/registry/v2`.
        allow_empty: Option<Sp<bool>>,
        /// `incremental` (default) or `archive`.
        mode: Option<Sp<ImagesMode>>,
    },
    /// An NFS mount point holding `docker/registry/v2`.
    Nfs {
        /// Mount point.
        path: Sp<PathBuf>,
        /// `host:/export` the mount must come from.
        server: Sp<NfsExport>,
        name: Option<Sp<String>>,
        /// `incremental` (default) or `archive`.
        mode: Option<Sp<ImagesMode>>,
    },
    /// An S3 bucket (DTR's S3 storage driver).
    S3(Box<S3>),
}

/// An S3 or S3-compatible location.
#[derive(Clone, Debug, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct S3 {
    pub bucket: Sp<BucketName>,
    /// Key prefix (DTR's `rootdirectory` for image content).
    pub prefix: Option<Sp<S3Prefix>>,
    pub region: Option<Sp<String>>,
    /// Endpoint URL of an S3-compatible server.
    pub endpoint: Option<Sp<EndpointUrl>>,
    /// Access key id; default: the standard AWS chain.
    pub access_key_id: Option<Sp<SecretRef>>,
    pub secret_access_key: Option<Sp<SecretRef>>,
    /// Allow plain `http://` endpoints (test servers).
    pub allow_http: Option<Sp<bool>>,
    /// Use path-style requests (`endpoint/bucket/key`).
    pub path_style: Option<Sp<bool>>,
    /// Image content in S3: objects copied at once (default 4).
    #[schemars(range(min = 1, max = 64))]
    pub parallel: Option<Sp<u32>>,
    /// Image content in S3: accept a prefix without `docker/registry/v2` objects.
    pub allow_empty: Option<Sp<bool>>,
}

/// Where backups go.
#[derive(Clone, Debug, JsonSchema)]
#[schemars(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Destination {
    /// A local folder.
    Local { path: Sp<PathBuf> },
    /// An S3 bucket.
    S3(Box<S3>),
}

/// How artifacts are encrypted.
#[derive(Clone, Debug, JsonSchema)]
#[schemars(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Encryption {
    /// OpenPGP symmetric encryption (what `gpg --symmetric` does).
    Passphrase { passphrase: Sp<SecretRef> },
    /// OpenPGP public-key encryption to every listed key file.
    Recipients {
        #[schemars(length(min = 1))]
        recipients: Sp<Vec<Sp<PathBuf>>>,
    },
    /// No encryption. The metadata archive holds private keys: avoid.
    None {},
}

/// Which complete backups to keep; a backup kept by any rule is kept.
#[derive(Clone, Debug, Default, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Retention {
    pub keep_last: Option<Sp<u32>>,
    pub keep_daily: Option<Sp<u32>>,
    pub keep_weekly: Option<Sp<u32>>,
    pub keep_monthly: Option<Sp<u32>>,
}

/// Where the run state lives.
#[derive(Clone, Debug, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct StateCfg {
    /// A local folder for state and lock. Default: `<destination>/<name>/.state`.
    pub path: Option<Sp<PathBuf>>,
    /// How long the lock of a run stays valid without being refreshed (a running holder
    /// refreshes it every fifth of that): a lock left by a holder that cannot be checked from
    /// here (another host, another container, a killed job) is taken over once it is older.
    /// `90s`, `15m`, `1h`; at least `10s`. Default `15m`.
    #[schemars(with = "Option<String>", regex(pattern = r"^[0-9]+[smhd]?$"))]
    pub lock_lease: Option<Sp<std::time::Duration>>,
}

/// Checks made before anything is written.
#[derive(Clone, Debug, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Preflight {
    /// Log in to UCP with the plan's credentials first. Default `true`.
    pub check_ucp_login: Option<Sp<bool>>,
}

/// Verification after `plan apply`.
#[derive(Clone, Debug, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct VerifyCfg {
    /// Verify the new backup as the last step of `plan apply`. Default `true`.
    pub after_apply: Option<Sp<bool>>,
    /// The OpenPGP secret key (TSK) that opens `recipients`-encrypted artifacts, as a secret
    /// reference. Without it, artifacts encrypted to recipients are checked by size and sha256.
    pub key: Option<Sp<SecretRef>>,
    /// The passphrase of `key`, when it is protected.
    pub key_passphrase: Option<Sp<SecretRef>>,
}

/// A list of commands, each an argv list.
pub type Commands = Vec<Sp<Vec<Sp<String>>>>;

/// Commands run around each `plan apply`: each an argv list (no shell), run in order, with the
/// run's facts in `DTR_BACKUP_*` variables.
#[derive(Clone, Debug, Default, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Hooks {
    /// Before the run's first step; one failing fails the run before anything is written.
    pub before: Option<Sp<Commands>>,
    /// Once the backup is published; one failing fails the run, and the backup stays.
    pub after: Option<Sp<Commands>>,
    /// When the run fails or is interrupted (a `before` or `after` hook failing included).
    pub on_error: Option<Sp<Commands>>,
    /// How long each hook may run: `90s`, `5m`, `1h`. Default `5m`.
    #[schemars(with = "Option<String>", regex(pattern = r"^[0-9]+[smh]?$"))]
    pub timeout: Option<Sp<std::time::Duration>>,
}

/// Who is told how a run ended.
#[derive(Clone, Debug, JsonSchema)]
#[schemars(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Notifier {
    /// The healthchecks.io protocol (also self-hosted): `<url>/start` when the run starts,
    /// `<url>` on success, `<url>/fail` on failure with the last lines of the run's log.
    Healthchecks {
        /// The ping URL, written out or as a secret reference (it is a secret either way).
        url: Sp<UrlRef>,
        /// Which outcomes are sent. Default both.
        on: Option<Sp<Vec<Sp<NotifyOn>>>>,
    },
    /// A `POST` of the run's `run_finished` event as JSON.
    Webhook {
        /// The URL, written out or as a secret reference (it is a secret either way).
        url: Sp<UrlRef>,
        /// Which outcomes are sent. Default both.
        on: Option<Sp<Vec<Sp<NotifyOn>>>>,
    },
}

/// A URL written in the plan, or a reference to a secret that holds it.
#[derive(Clone, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(untagged)]
pub enum UrlRef {
    /// An `http://` or `https://` URL.
    Url(
        #[schemars(regex(pattern = r"^https?://"))]
        String,
    ),
    Secret(SecretRef),
}

/// An outcome of a run, for `notify.on`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(rename_all = "snake_case")]
pub enum NotifyOn {
    Success,
    /// A failed, interrupted or locked-out run.
    Failure,
}

/// Metrics for Prometheus.
#[derive(Clone, Debug, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Metrics {
    /// A file for node_exporter's textfile collector (`*.prom`); several plans may share it.
    pub textfile: Sp<PathBuf>,
}
