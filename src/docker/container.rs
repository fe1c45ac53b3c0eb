//! Containers dtr-backup runs: the `dtr backup` container (its stdout is the metadata archive)
//! and the helper that exposes a volume's files through the archive endpoint. Their bytes
//! arrive on the async side and are handed to blocking pipeline threads through a [`Feed`].

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};

use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder,
    DownloadFromContainerOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use super::Engine;
use crate::cancel::Cancel;
use crate::error::{Error, Result};
use crate::process::ProcessId;

/// Label on every container dtr-backup creates: the plan's name.
pub const LABEL_PLAN: &str = "io.dtr-backup.plan";
/// Label: the backup id of the run.
pub const LABEL_RUN: &str = "io.dtr-backup.run";
/// Label: what the container is for (`metadata`, `images-helper`).
pub const LABEL_ROLE: &str = "io.dtr-backup.role";
/// Label: the process that created the container ([`ProcessId`] as JSON), so that any later
/// run on the engine can tell a leftover (its creator is gone) from a live run's container.
pub const LABEL_OWNER: &str = "io.dtr-backup.owner";

/// A message from the async side to a pipeline thread.
pub enum Msg {
    Data(Bytes),
    /// The source ended: cleanly, or with the reason it failed.
    End(std::result::Result<(), String>),
}

/// Bytes arriving from a container, in order, with a bounded number in flight.
pub struct Feed {
    rx: mpsc::Receiver<Msg>,
}

/// Chunks in flight between the Docker stream and the pipeline thread.
const FEED_DEPTH: usize = 16;

fn feed() -> (mpsc::Sender<Msg>, Feed) {
    let (tx, rx) = mpsc::channel(FEED_DEPTH);
    (tx, Feed { rx })
}

impl Feed {
    /// Reads at least `want` bytes (fewer if the source ends first). Returns them and, if
    /// the source ended, how.
    pub async fn prefix(
        &mut self,
        want: usize,
    ) -> (Vec<u8>, Option<std::result::Result<(), String>>) {
        let mut buf = Vec::new();
        while buf.len() < want {
            match self.rx.recv().await {
                Some(Msg::Data(b)) => buf.extend_from_slice(&b),
                Some(Msg::End(end)) => return (buf, Some(end)),
                None => return (buf, Some(Err("the stream stopped unexpectedly".into()))),
            }
        }
        (buf, None)
    }

    /// A blocking reader for a pipeline thread. A failed end is a read error, so that a
    /// truncated stream never looks complete.
    /// `ended` is what `prefix` returned: a source that already ended cleanly is not read
    /// further.
    pub fn into_reader(
        self,
        first: Vec<u8>,
        ended: Option<std::result::Result<(), String>>,
    ) -> FeedReader {
        FeedReader {
            rx: self.rx,
            cur: Bytes::from(first),
            done: matches!(ended, Some(Ok(()))),
        }
    }
}

pub struct FeedReader {
    rx: mpsc::Receiver<Msg>,
    cur: Bytes,
    done: bool,
}

impl Read for FeedReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            if self.done {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Msg::Data(b)) => self.cur = b,
                Some(Msg::End(Ok(()))) => self.done = true,
                Some(Msg::End(Err(e))) => return Err(io::Error::other(e)),
                None => return Err(io::Error::other("the stream stopped unexpectedly")),
            }
        }
        let n = out.len().min(self.cur.len());
        out[..n].copy_from_slice(&self.cur[..n]);
        let _ = self.cur.split_to(n);
        Ok(n)
    }
}

/// What to create.
pub struct Spec {
    pub image: String,
    pub cmd: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    /// `NAME=value`; values may be secrets, never logged.
    pub env: Vec<String>,
    pub labels: HashMap<String, String>,
    pub binds: Vec<String>,
    /// Through UCP: run on this node (classic swarm constraint).
    pub node: Option<String>,
    /// Standard input open for one attached writer (closed when that writer closes it);
    /// otherwise closed.
    pub stdin: bool,
}

/// Creates a container: no TTY, stdin closed, log driver `none` (with a log driver,
/// credentials and the archive itself would end up in container logs).
pub async fn create(engine: &Engine, spec: Spec) -> Result<String> {
    let mut env = spec.env;
    if engine.via_bundle
        && let Some(node) = &spec.node
    {
        env.push(format!("constraint:node=={node}"));
    }
    let body = ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: Some(spec.cmd),
        entrypoint: spec.entrypoint,
        env: Some(env),
        labels: Some({
            let mut labels = spec.labels;
            labels.insert(
                LABEL_OWNER.to_owned(),
                serde_json::to_string(&ProcessId::current()).unwrap_or_default(),
            );
            labels
        }),
        tty: Some(false),
        open_stdin: Some(spec.stdin),
        attach_stdin: Some(spec.stdin),
        stdin_once: Some(spec.stdin),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        host_config: Some(HostConfig {
            binds: (!spec.binds.is_empty()).then_some(spec.binds),
            log_config: Some(HostConfigLogConfig {
                typ: Some("none".into()),
                config: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = engine
        .docker
        .create_container(Some(CreateContainerOptionsBuilder::new().build()), body)
        .await
        .map_err(|e| {
            Error::docker(format!(
                "creating a container from {} on {}: {e}; check that the image is present on the node",
                spec.image, engine.endpoint
            ))
        })?;
    Ok(created.id)
}

/// Removes a container, running or not. Errors are reported, not fatal.
pub async fn remove(engine: &Engine, id: &str) -> std::result::Result<(), String> {
    engine
        .docker
        .remove_container(
            id,
            Some(
                RemoveContainerOptionsBuilder::new()
                    .force(true)
                    .v(false)
                    .build(),
            ),
        )
        .await
        .map_err(|e| format!("removing container {id}: {e}"))
}

/// Waits for a container to exit and returns its exit status; `None` when no such container
/// exists (a container that never started counts as exited with status -1).
pub async fn wait_exit(engine: &Engine, id: &str, cancel: &Cancel) -> Result<Option<i64>> {
    let inspected = engine
        .docker
        .inspect_container(
            id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await;
    match inspected {
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => return Ok(None),
        Err(e) => return Err(Error::docker(format!("inspecting container {id}: {e}"))),
        Ok(c) => {
            let state = c.state.unwrap_or_default();
            if state.running != Some(true) {
                let started = state
                    .started_at
                    .as_deref()
                    .is_some_and(|t| !t.starts_with("0001-"));
                return Ok(Some(if started {
                    state.exit_code.unwrap_or(-1)
                } else {
                    -1
                }));
            }
        }
    }
    exit_status(&engine.docker, id, cancel).await
}

/// Waits for the started container `id` to exit and returns its exit status (`-1` when the
/// engine does not say); `None` when no such container exists; `Error::Interrupted` when
/// the run is cancelled first.
async fn exit_status(docker: &bollard::Docker, id: &str, cancel: &Cancel) -> Result<Option<i64>> {
    let mut wait = docker.wait_container(id, Some(WaitContainerOptionsBuilder::new().build()));
    let waited = tokio::select! {
        w = wait.next() => w,
        _ = cancel.cancelled() => return Err(Error::Interrupted),
    };
    match waited {
        Some(Ok(r)) => Ok(Some(r.status_code)),
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(Some(code)),
        Some(Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        })) => Ok(None),
        Some(Err(e)) => Err(Error::docker(format!("waiting for container {id}: {e}"))),
        None => Ok(Some(-1)),
    }
}

/// A container dtr-backup created.
pub struct Ours {
    pub id: String,
    pub name: String,
    pub plan: String,
    /// What it is for (`LABEL_ROLE`).
    pub role: String,
    /// Who created it; `None` for containers of releases that did not record it.
    pub owner: Option<ProcessId>,
}

/// Every container (running or not) that dtr-backup created on the engine, for any plan.
pub async fn ours(engine: &Engine) -> Result<Vec<Ours>> {
    let filters = HashMap::from([("label", vec![LABEL_PLAN.to_owned()])]);
    let list = engine
        .docker
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .map_err(|e| Error::docker(format!("listing containers on {}: {e}", engine.endpoint)))?;
    Ok(list
        .into_iter()
        .filter_map(|c| {
            let labels = c.labels.unwrap_or_default();
            Some(Ours {
                id: c.id?,
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_owned(),
                plan: labels.get(LABEL_PLAN).cloned().unwrap_or_default(),
                role: labels.get(LABEL_ROLE).cloned().unwrap_or_default(),
                owner: labels
                    .get(LABEL_OWNER)
                    .and_then(|o| serde_json::from_str(o).ok()),
            })
        })
        .collect())
}

/// Replaces each secret in a line by `<redacted>`.
pub fn redact(line: &str, secrets: &[Zeroizing<String>]) -> String {
    secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(line.to_owned(), |l, s| l.replace(s.as_str(), "<redacted>"))
}

/// Attaches to a created container, starts it, and forwards its stdout to the returned feed.
/// Each stderr line goes to `on_stderr` (already redacted). When stdout ends, the feed ends
/// with the container's exit status (non-zero: the last stderr lines).
pub async fn run_streaming(
    engine: &Engine,
    id: &str,
    secrets: Vec<Zeroizing<String>>,
    on_stderr: impl Fn(String) + Send + Sync + 'static,
    cancel: Cancel,
) -> Result<(Feed, tokio::task::JoinHandle<()>)> {
    let attached = engine
        .docker
        .attach_container(
            id,
            Some(
                AttachContainerOptionsBuilder::new()
                    .stream(true)
                    .stdout(true)
                    .stderr(true)
                    .stdin(false)
                    .logs(false)
                    .build(),
            ),
        )
        .await
        .map_err(|e| Error::docker(format!("attaching to container {id}: {e}")))?;
    engine
        .docker
        .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
        .await
        .map_err(|e| Error::docker(format!("starting container {id}: {e}")))?;
    let (tx, feed) = feed();
    let docker = engine.docker.clone();
    let id = id.to_owned();
    let mut output = attached.output;
    drop(attached.input);
    let task = tokio::spawn(async move {
        let mut lines = Lines::new(secrets, on_stderr);
        let end = loop {
            let item = tokio::select! {
                item = output.next() => item,
                _ = cancel.cancelled() => break Err("interrupted".to_owned()),
            };
            match item {
                Some(Ok(LogOutput::StdOut { message })) => {
                    if let Err(e) = send(&tx, Msg::Data(message), &cancel).await {
                        break Err(e);
                    }
                }
                Some(Ok(LogOutput::StdErr { message })) => lines.push(&message),
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(format!("reading the container's output: {e}")),
                None => break Ok(()),
            }
        };
        let tail = lines.finish();
        let end = match end {
            Err(e) => Err(e),
            Ok(()) => {
                let code = match exit_status(&docker, &id, &cancel).await {
                    Ok(code) => code.unwrap_or(-1),
                    Err(Error::Interrupted) => {
                        let _ = tx.send(Msg::End(Err("interrupted".to_owned()))).await;
                        return;
                    }
                    Err(e) => {
                        let _ = send(&tx, Msg::End(Err(e.to_string())), &cancel).await;
                        return;
                    }
                };
                if code == 0 {
                    Ok(())
                } else {
                    let lines: Vec<String> = tail;
                    Err(format!(
                        "the container exited with status {code}; its last output:\n  {}",
                        lines.join("\n  ")
                    ))
                }
            }
        };
        let _ = send(&tx, Msg::End(end), &cancel).await;
    });
    Ok((feed, task))
}

/// A container's output cut into lines, each redacted and handed on; the last 20 are kept
/// for the error message when the container fails.
struct Lines<F> {
    partial: String,
    tail: VecDeque<String>,
    secrets: Vec<Zeroizing<String>>,
    on_line: F,
}

impl<F: Fn(String)> Lines<F> {
    fn new(secrets: Vec<Zeroizing<String>>, on_line: F) -> Lines<F> {
        Lines {
            partial: String::new(),
            tail: VecDeque::new(),
            secrets,
            on_line,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.partial.push_str(&String::from_utf8_lossy(bytes));
        while let Some(pos) = self.partial.find('\n') {
            let line = redact(self.partial[..pos].trim_end(), &self.secrets);
            self.partial.drain(..=pos);
            if self.tail.len() == 20 {
                self.tail.pop_front();
            }
            self.tail.push_back(line.clone());
            (self.on_line)(line);
        }
    }

    /// The last lines, after the unterminated one, if any.
    fn finish(mut self) -> Vec<String> {
        if !self.partial.is_empty() {
            self.push(b"\n");
        }
        self.tail.into_iter().collect()
    }
}

/// Attaches to a created container (made with `Spec::stdin`), starts it, writes the chunks
/// `input` yields to its standard input and then closes it; each line of its stdout and
/// stderr goes to `on_line` (redacted). Returns once the container has exited: `Ok` on
/// status 0, else an error with its last lines. A failed chunk of input stops the container
/// and is returned as it is. `fed` is called once the whole input is written and the
/// standard input closed (the container got all of it), before waiting for the exit.
pub async fn run_with_input(
    engine: &Engine,
    id: &str,
    mut input: mpsc::Receiver<Result<Vec<u8>>>,
    secrets: Vec<Zeroizing<String>>,
    on_line: impl Fn(String) + Send + Sync + 'static,
    fed: impl FnOnce() -> Result<()>,
    cancel: Cancel,
) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let attached = engine
        .docker
        .attach_container(
            id,
            Some(
                AttachContainerOptionsBuilder::new()
                    .stream(true)
                    .stdin(true)
                    .stdout(true)
                    .stderr(true)
                    .logs(false)
                    .build(),
            ),
        )
        .await
        .map_err(|e| Error::docker(format!("attaching to container {id}: {e}")))?;
    engine
        .docker
        .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
        .await
        .map_err(|e| Error::docker(format!("starting container {id}: {e}")))?;
    let mut output = attached.output;
    let mut stdin = attached.input;
    let lines = tokio::spawn(async move {
        let mut lines = Lines::new(secrets, on_line);
        while let Some(item) = output.next().await {
            match item {
                Ok(LogOutput::StdOut { message }) | Ok(LogOutput::StdErr { message }) => {
                    lines.push(&message)
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        lines.finish()
    });
    let fed: Result<()> = async {
        loop {
            // An interruption wins over the end of the input: closing the standard input
            // would tell the container that the input is whole.
            let chunk = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(Error::Interrupted),
                c = input.recv() => c,
            };
            match chunk {
                Some(Ok(bytes)) => {
                    tokio::select! {
                        w = stdin.write_all(&bytes) => w.map_err(|e| Error::container(format!(
                            "writing to the standard input of container {id}: {e}; its output says why"
                        )))?,
                        _ = cancel.cancelled() => return Err(Error::Interrupted),
                    }
                }
                Some(Err(e)) => return Err(e),
                None => break,
            }
        }
        if cancel.is_cancelled() {
            return Err(Error::Interrupted);
        }
        stdin
            .shutdown()
            .await
            .map_err(|e| Error::container(format!("closing the standard input of container {id}: {e}")))?;
        fed()
    }
    .await;
    if let Err(e) = fed {
        // The container may wait for more input: stop it, then report why.
        let _ = remove(engine, id).await;
        let _ = lines.await;
        return Err(e);
    }
    let code = exit_status(&engine.docker, id, &cancel)
        .await?
        .unwrap_or(-1);
    let tail = lines.await.unwrap_or_default();
    if code == 0 {
        Ok(())
    } else {
        Err(Error::container(format!(
            "the container exited with status {code}; its last output:\n  {}",
            tail.join("\n  ")
        )))
    }
}

/// Sends down the feed, giving up when the run is cancelled (a reader that stopped reading
/// must never leave the sender blocked) or the reader is gone.
async fn send(
    tx: &mpsc::Sender<Msg>,
    msg: Msg,
    cancel: &Cancel,
) -> std::result::Result<(), String> {
    tokio::select! {
        sent = tx.send(msg) => sent.map_err(|_| "the pipeline stopped reading".to_owned()),
        _ = cancel.cancelled() => Err("interrupted".to_owned()),
    }
}

/// Streams the tar archive of `path` inside a (created, not started) container.
pub fn download(
    engine: &Engine,
    id: &str,
    path: &str,
    cancel: Cancel,
) -> (Feed, tokio::task::JoinHandle<()>) {
    let (tx, feed) = feed();
    let mut stream = engine.docker.download_from_container(
        id,
        Some(
            DownloadFromContainerOptionsBuilder::new()
                .path(path)
                .build(),
        ),
    );
    let endpoint = engine.endpoint.clone();
    let task = tokio::spawn(async move {
        let end = loop {
            let item = tokio::select! {
                item = stream.next() => item,
                _ = cancel.cancelled() => break Err("interrupted".to_owned()),
            };
            match item {
                Some(Ok(bytes)) => {
                    if let Err(e) = send(&tx, Msg::Data(bytes), &cancel).await {
                        break Err(e);
                    }
                }
                Some(Err(e)) => break Err(format!("reading the volume through {endpoint}: {e}")),
                None => break Ok(()),
            }
        };
        let _ = send(&tx, Msg::End(end), &cancel).await;
    });
    (feed, task)
}
