//! Validating newtypes for where a plan reaches things: UCP, the Docker API, S3 buckets,
//! prefixes and endpoints, NFS exports. `FromStr` is the one check for each, shared by the
//! plan decoder (which turns an [`Invalid`] into a diagnostic at the value's position) and any
//! command-line flag that takes the same value (an [`Invalid`] prints as one line).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator};

/// Why a value was refused: the diagnostic's code, message, label and help.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub code: &'static str,
    pub message: String,
    pub label: &'static str,
    pub help: String,
}

impl Invalid {
    fn new(
        code: &'static str,
        message: impl Into<String>,
        label: &'static str,
        help: impl Into<String>,
    ) -> Invalid {
        Invalid {
            code,
            message: message.into(),
            label,
            help: help.into(),
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; {}", self.message, self.help)
    }
}

impl std::error::Error for Invalid {}

/// A string newtype: `as_str` (and `Deref` to `str`), `Display`, and the JSON schema of a
/// string.
macro_rules! string_newtype {
    ($($name:ident),* $(,)?) => {
        $(
            impl $name {
                pub fn as_str(&self) -> &str {
                    &self.0
                }
            }

            impl std::ops::Deref for $name {
                type Target = str;
                fn deref(&self) -> &str {
                    &self.0
                }
            }

            impl fmt::Display for $name {
                fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str(&self.0)
                }
            }

            impl JsonSchema for $name {
                fn inline_schema() -> bool {
                    String::inline_schema()
                }
                fn schema_name() -> Cow<'static, str> {
                    String::schema_name()
                }
                fn schema_id() -> Cow<'static, str> {
                    String::schema_id()
                }
                fn json_schema(generator: &mut SchemaGenerator) -> Schema {
                    String::json_schema(generator)
                }
            }
        )*
    };
}

string_newtype!(
    UcpUrl,
    DtrUrl,
    DockerHost,
    BucketName,
    S3Prefix,
    EndpointUrl,
    NfsExport
);

/// UCP's address: `https://host[:port][/path]`, kept without a trailing `/`. Plain http is
/// refused: the password would travel in clear.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UcpUrl(String);

impl FromStr for UcpUrl {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        https_url(
            s,
            "UCP",
            "ucp-host",
            "this URL would send the password in clear",
        )
        .map(UcpUrl)
    }
}

/// DTR's external address (`dtr.external_url`), as its `--dtr-external-url` takes it:
/// `https://host[:port]`, kept without a trailing `/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DtrUrl(String);

impl FromStr for DtrUrl {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        let why = "DTR serves its registry and API over https only";
        let url = https_url(s, "DTR", "dtr-host", why)?;
        if url["https://".len()..].contains(['/', '@', '?', '#']) {
            return Err(Invalid::new(
                "plan::bad-url",
                "DTR's external URL is `https://host[:port]`: no path, no user, no query",
                "not a host and port",
                "write https://<dtr-host>[:port], as DTR was installed with --dtr-external-url",
            ));
        }
        Ok(DtrUrl(url))
    }
}

/// An `https://host[:port][/path]` URL of `what`, without its trailing `/`.
fn https_url(s: &str, what: &str, host_hint: &str, why_https: &str) -> Result<String, Invalid> {
    let rest = if let Some(rest) = s.strip_prefix("https://") {
        rest
    } else if s.starts_with("http://") {
        return Err(Invalid::new(
            "plan::insecure-url",
            format!("{what} must be reached over https: {why_https}"),
            "http://",
            format!("write {:?}", s.replacen("http://", "https://", 1)),
        ));
    } else if s.contains("://") {
        return Err(Invalid::new(
            "plan::bad-url",
            format!("the {what} URL must start with https://"),
            "unsupported scheme",
            format!("write https://<{host_hint}>[:port]"),
        ));
    } else {
        return Err(Invalid::new(
            "plan::bad-url",
            format!("the {what} URL has no scheme"),
            "no https://",
            format!("write \"https://{s}\""),
        ));
    };
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(Invalid::new(
            "plan::bad-url",
            format!("the {what} URL has no host"),
            "no host",
            format!("write https://<{host_hint}>[:port]"),
        ));
    }
    Ok(s.trim_end_matches('/').to_owned())
}

/// A Docker API address: `unix:///absolute/path` or `tcp://host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerHost(String);

impl FromStr for DockerHost {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        let ok = match s.split_once("://") {
            Some(("unix", path)) => path.starts_with('/'),
            Some(("tcp", addr)) => !addr.is_empty(),
            _ => false,
        };
        if !ok {
            return Err(Invalid::new(
                "plan::bad-docker-host",
                format!("{s:?} is not a Docker host address"),
                "expected unix:///path or tcp://host:port",
                "write e.g. `unix:///var/run/docker.sock` or `tcp://ucp.example.com:443`",
            ));
        }
        Ok(DockerHost(s.to_owned()))
    }
}

/// An S3 bucket name: 3 to 63 of `a-z`, `0-9`, `.` and `-`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketName(String);

impl FromStr for BucketName {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        let ok = (3..=63).contains(&s.len())
            && s.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.');
        if !ok {
            return Err(Invalid::new(
                "plan::bad-bucket",
                format!("{s:?} is not a valid S3 bucket name"),
                "3-63 of a-z, 0-9, '.', '-'",
                "give the bucket name only; put folders in `prefix`",
            ));
        }
        Ok(BucketName(s.to_owned()))
    }
}

/// A key prefix that S3 clients send as written: no character the object store client would
/// percent-encode (keys listed back would not match, and deletes would miss), no empty, `.`
/// or `..` folder. Kept without leading or trailing `/`; empty is the bucket's root.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct S3Prefix(String);

impl FromStr for S3Prefix {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        const ESCAPED: &[char] = &[
            '~', '%', '#', '[', ']', '{', '}', '^', '|', '<', '>', '*', '?', '"', '`', '\\',
        ];
        let bad_char = s.chars().find(|c| ESCAPED.contains(c) || c.is_control());
        let trimmed = s.trim_matches('/');
        let bad_part = !trimmed.is_empty()
            && trimmed
                .split('/')
                .any(|part| part.is_empty() || part == "." || part == "..");
        if bad_char.is_some() || bad_part {
            return Err(Invalid::new(
                "plan::bad-prefix",
                match bad_char {
                    Some(c) => {
                        format!("the S3 prefix {s:?} holds {c:?}, which S3 clients escape in keys")
                    }
                    None => format!("the S3 prefix {s:?} has an empty, `.` or `..` folder"),
                },
                "not a plain key prefix",
                "use letters, digits and `-_./!'()&$@=;:+, ` in folders separated by single `/`",
            ));
        }
        Ok(S3Prefix(trimmed.to_owned()))
    }
}

/// The URL of an S3-compatible server: `https://host[:port]` (or `http://`, which the plan
/// must allow separately).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointUrl(String);

impl EndpointUrl {
    pub fn is_http(&self) -> bool {
        self.0.starts_with("http://")
    }
}

impl FromStr for EndpointUrl {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        if !(s.starts_with("https://") || s.starts_with("http://")) {
            return Err(Invalid::new(
                "plan::bad-url",
                format!("{s:?} is not an endpoint URL"),
                "expected http(s)://host[:port]",
                "write the full URL, e.g. https://s3.eu-west-1.amazonaws.com",
            ));
        }
        Ok(EndpointUrl(s.to_owned()))
    }
}

/// An NFS export as `mount` shows a mount's source: `host:/export`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NfsExport(String);

impl FromStr for NfsExport {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        match s.split_once(":/") {
            Some((host, _)) if !host.is_empty() => Ok(NfsExport(s.to_owned())),
            _ => Err(Invalid::new(
                "plan::bad-nfs-server",
                format!("{s:?} is not an NFS export"),
                "expected host:/export",
                "write the source of the mount as `mount` shows it, e.g. `nfs.example.com:/dtr`",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code<T: FromStr<Err = Invalid>>(s: &str) -> &'static str {
        s.parse::<T>().err().map_or("ok", |e| e.code)
    }

    #[test]
    fn ucp_urls() {
        assert_eq!(
            "https://ucp.example.com/"
                .parse::<UcpUrl>()
                .unwrap()
                .as_str(),
            "https://ucp.example.com"
        );
        assert_eq!(code::<UcpUrl>("http://ucp"), "plan::insecure-url");
        assert_eq!(code::<UcpUrl>("ftp://ucp"), "plan::bad-url");
        assert_eq!(code::<UcpUrl>("ucp.example.com"), "plan::bad-url");
        assert_eq!(code::<UcpUrl>("https:///x"), "plan::bad-url");
        let e = "http://ucp:443".parse::<UcpUrl>().unwrap_err();
        assert_eq!(e.help, "write \"https://ucp:443\"");
        assert!(
            e.to_string().ends_with("; write \"https://ucp:443\""),
            "{e}"
        );
    }

    #[test]
    fn dtr_urls() {
        let u: DtrUrl = "https://dtr.example.com:4443/".parse().expect("valid");
        assert_eq!(u.as_str(), "https://dtr.example.com:4443");
        let e = "http://dtr".parse::<DtrUrl>().unwrap_err();
        assert_eq!(e.code, "plan::insecure-url");
        assert!(
            e.message.starts_with("DTR must be reached over https"),
            "{e}"
        );
        assert_eq!(code::<DtrUrl>("dtr.example.com"), "plan::bad-url");
        assert_eq!(
            code::<DtrUrl>("https://dtr.example.com/v2"),
            "plan::bad-url"
        );
        assert_eq!(
            code::<DtrUrl>("https://admin:pw@dtr.example.com"),
            "plan::bad-url"
        );
        assert!(
            "ucp.example.com"
                .parse::<UcpUrl>()
                .unwrap_err()
                .message
                .contains("UCP URL")
        );
    }

    #[test]
    fn docker_hosts() {
        assert_eq!(code::<DockerHost>("unix:///var/run/docker.sock"), "ok");
        assert_eq!(code::<DockerHost>("tcp://10.0.0.1:2376"), "ok");
        assert_eq!(
            code::<DockerHost>("unix://relative"),
            "plan::bad-docker-host"
        );
        assert_eq!(code::<DockerHost>("tcp://"), "plan::bad-docker-host");
        assert_eq!(code::<DockerHost>("10.0.0.1:2376"), "plan::bad-docker-host");
    }

    #[test]
    fn buckets_prefixes_endpoints_exports() {
        assert_eq!(code::<BucketName>("dtr-backups.eu"), "ok");
        assert_eq!(code::<BucketName>("ab"), "plan::bad-bucket");
        assert_eq!(code::<BucketName>("Dtr"), "plan::bad-bucket");
        assert_eq!(code::<BucketName>("b/prefix"), "plan::bad-bucket");

        assert_eq!("/a/b/".parse::<S3Prefix>().unwrap().as_str(), "a/b");
        assert!("".parse::<S3Prefix>().unwrap().is_empty());
        assert_eq!(code::<S3Prefix>("a//b"), "plan::bad-prefix");
        assert_eq!(code::<S3Prefix>("a/../b"), "plan::bad-prefix");
        assert_eq!(code::<S3Prefix>("a~b"), "plan::bad-prefix");

        assert!(
            "http://127.0.0.1:9000"
                .parse::<EndpointUrl>()
                .unwrap()
                .is_http()
        );
        assert_eq!(code::<EndpointUrl>("s3.example.com"), "plan::bad-url");

        assert_eq!(code::<NfsExport>("nfs:/exports/dtr"), "ok");
        assert_eq!(code::<NfsExport>(":/exports"), "plan::bad-nfs-server");
        assert_eq!(code::<NfsExport>("nfs"), "plan::bad-nfs-server");
    }
}
