//! Notifiers: who is told how a run ended (`notify`).
//!
//! `healthchecks` speaks the healthchecks.io protocol (`<url>/start`, `<url>`, `<url>/fail`,
//! the body logged by the service); `webhook` posts the run's `run_finished` event as JSON.
//! Each request has a 10 s timeout and is tried three times. A notifier that cannot be
//! reached is the caller's warning, never a failed backup. The URL is a secret: no message
//! here holds it (reqwest's errors are stripped of it).

use std::time::Duration;

use crate::plan::{NotifyCfg, NotifyKind};
use crate::secret::Secret;

/// Tries per request, and the wait before the second and third.
const TRIES: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_secs(1),
    Duration::from_secs(3),
];
const TIMEOUT: Duration = Duration::from_secs(10);
/// Healthchecks.io keeps the first 100 kB of a ping's body.
const MAX_BODY: usize = 100_000;

/// A notifier whose URL is resolved.
pub struct Notifier {
    pub kind: NotifyKind,
    url: Secret,
    /// How messages name it: its kind and where its URL comes from, never the URL.
    pub label: String,
    on_success: bool,
    on_failure: bool,
}

impl Notifier {
    /// Resolves the URL of `cfg` (`Err`: why, without the URL).
    pub fn resolve(cfg: &NotifyCfg) -> Result<Notifier, String> {
        let label = format!("{} notifier ({})", cfg.kind.as_str(), cfg.url.redacted());
        let url = match &cfg.url {
            crate::plan::UrlSource::Literal(u) => Secret::from_string(u.clone()),
            crate::plan::UrlSource::Secret(r) => {
                let s = crate::secret::resolve(r).map_err(|e| e.to_string())?;
                let u = s.expose().trim();
                if !(u.starts_with("https://") || u.starts_with("http://")) {
                    return Err(format!(
                        "the secret {} does not hold an http:// or https:// URL",
                        r.describe()
                    ));
                }
                Secret::from_string(u.to_owned())
            }
        };
        Ok(Notifier {
            kind: cfg.kind,
            url,
            label,
            on_success: cfg.on_success,
            on_failure: cfg.on_failure,
        })
    }

    /// Whether the run's start is sent (healthchecks measures the run's length from it).
    pub fn sends_start(&self) -> bool {
        self.kind == NotifyKind::Healthchecks
    }

    /// Whether an outcome is sent.
    pub fn sends(&self, ok: bool) -> bool {
        if ok { self.on_success } else { self.on_failure }
    }

    /// `healthchecks`: the start signal.
    pub async fn start(&self, client: &reqwest::Client) -> Result<(), String> {
        if !self.sends_start() {
            return Ok(());
        }
        post(
            client,
            &with_suffix(self.url.expose(), "/start"),
            "",
            "text/plain",
        )
        .await
    }

    /// The outcome: `summary` is one line, `tail` the last lines of the run's log, `event`
    /// the `run_finished` event as JSON.
    pub async fn finish(
        &self,
        client: &reqwest::Client,
        ok: bool,
        summary: &str,
        tail: &str,
        event: &str,
    ) -> Result<(), String> {
        match self.kind {
            NotifyKind::Healthchecks => {
                let (url, body) = if ok {
                    (self.url.expose().to_owned(), summary.to_owned())
                } else {
                    (
                        with_suffix(self.url.expose(), "/fail"),
                        format!("{summary}\n\n{tail}"),
                    )
                };
                post(client, &url, &cap(&body), "text/plain").await
            }
            NotifyKind::Webhook => post(client, self.url.expose(), event, "application/json").await,
        }
    }
}

/// `url` with `suffix` added to its path (before a query string).
fn with_suffix(url: &str, suffix: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = format!("{}{suffix}", base.trim_end_matches('/'));
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// The last [`MAX_BODY`] bytes of `body`, cut at a character boundary.
fn cap(body: &str) -> String {
    if body.len() <= MAX_BODY {
        return body.to_owned();
    }
    let mut start = body.len() - MAX_BODY;
    while !body.is_char_boundary(start) {
        start += 1;
    }
    body[start..].to_owned()
}

/// An HTTP client for notifiers.
pub fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .user_agent(concat!("dtr-backup/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("setting up HTTP for notifiers: {}", e.without_url()))
}

/// `POST`s `body`, tried up to three times; any 2xx answer is success.
async fn post(
    client: &reqwest::Client,
    url: &str,
    body: &str,
    content_type: &str,
) -> Result<(), String> {
    let mut last = String::new();
    for wait in TRIES {
        tokio::time::sleep(wait).await;
        let sent = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body.to_owned())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => last = format!("it answered {}", r.status()),
            Err(e) => last = crate::ucp::chain(&e.without_url()),
        }
    }
    Err(format!("not reached after {} tries: {last}", TRIES.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_go_before_the_query() {
        assert_eq!(
            with_suffix("https://hc.example/ping/abc", "/start"),
            "https://hc.example/ping/abc/start"
        );
        assert_eq!(
            with_suffix("https://hc.example/ping/abc/?rid=1", "/fail"),
            "https://hc.example/ping/abc/fail?rid=1"
        );
    }

    #[test]
    fn bodies_keep_their_end() {
        let long = format!("{}é{}", "a".repeat(MAX_BODY), "end");
        let c = cap(&long);
        assert!(c.len() <= MAX_BODY && c.ends_with("éend"), "{}", c.len());
        assert_eq!(cap("short"), "short");
    }
}
