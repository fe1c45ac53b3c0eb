//! `metrics.textfile`: the outcome of each run in the Prometheus text format, for
//! node_exporter's textfile collector.
//!
//! Several plans may share one file: each run replaces only the series labelled with its own
//! `plan`, under an exclusive `flock` of a side file (`.<name>.lock`, which the collector
//! ignores), and publishes the whole file atomically (temporary name, fsync, rename; mode
//! 0644 so that the collector can read it). A failed run keeps the plan's last success time
//! from the file as it was.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// What one run reports.
#[derive(Clone, Debug, PartialEq)]
pub struct RunMetrics {
    pub plan: String,
    /// When the run ended (Unix seconds).
    pub finished_at: i64,
    pub ok: bool,
    pub duration_seconds: f64,
    /// Bytes the run wrote into the backup.
    pub bytes: u64,
    /// Complete backups of the plan after the run; `None` when they could not be counted
    /// (the previous value stays).
    pub backups: Option<u64>,
}

/// Our series, in the order written, with their help text.
const SERIES: [(&str, &str); 6] = [
    (
        "dtr_backup_last_run_timestamp_seconds",
        "When the last plan apply ended (Unix time).",
    ),
    (
        "dtr_backup_last_success_timestamp_seconds",
        "When the last successful plan apply ended (Unix time; 0: never).",
    ),
    (
        "dtr_backup_last_run_status",
        "1 if the last plan apply succeeded, 0 otherwise.",
    ),
    (
        "dtr_backup_last_run_duration_seconds",
        "How long the last plan apply took.",
    ),
    (
        "dtr_backup_last_run_bytes",
        "Bytes the last plan apply wrote into its backup.",
    ),
    (
        "dtr_backup_backups",
        "Complete backups of the plan at its destination.",
    ),
];

/// Writes `m` into the textfile at `path`, keeping the other plans' series.
pub fn record(path: &Path, m: &RunMetrics) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{} names no file", path.display())))?
        .to_string_lossy()
        .into_owned();
    let lock = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(dir.join(format!(".{name}.lock")))?;
    lock.lock()?;
    let old = match fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let text = merge(&old, m);
    let temp = dir.join(format!(".{name}.partial-{}", std::process::id()));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&temp)?;
        // Readable by the collector whatever the umask.
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&temp, path)?;
        File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

/// The file's new text: `old` with the series of `m.plan` replaced.
fn merge(old: &str, m: &RunMetrics) -> String {
    let label = format!("plan=\"{}\"", m.plan);
    // Our series: metric → (labels → value), every plan's.
    let mut ours: BTreeMap<&str, BTreeMap<String, String>> = BTreeMap::new();
    // Lines of series that are not ours, kept as they were.
    let mut foreign: Vec<&str> = Vec::new();
    for line in old.lines() {
        let name = if let Some(rest) = line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "))
        {
            rest.split_whitespace().next().unwrap_or("")
        } else {
            line.split(['{', ' ']).next().unwrap_or("")
        };
        match SERIES.iter().find(|(n, _)| *n == name) {
            Some((n, _)) if !line.starts_with('#') => {
                if let Some((labels, value)) = sample(line) {
                    ours.entry(n).or_default().insert(labels, value);
                }
            }
            Some(_) => {}
            None if line.trim().is_empty() => {}
            None => foreign.push(line),
        }
    }
    let previous = |metric: &str| ours.get(metric).and_then(|by| by.get(&label)).cloned();
    let success = if m.ok {
        m.finished_at.to_string()
    } else {
        previous("dtr_backup_last_success_timestamp_seconds").unwrap_or_else(|| "0".into())
    };
    let backups = m
        .backups
        .map(|b| b.to_string())
        .or_else(|| previous("dtr_backup_backups"));
    let values = [
        Some(m.finished_at.to_string()),
        Some(success),
        Some(u8::from(m.ok).to_string()),
        Some(format!("{:.3}", m.duration_seconds)),
        Some(m.bytes.to_string()),
        backups,
    ];
    for ((metric, _), value) in SERIES.iter().zip(values) {
        let by = ours.entry(metric).or_default();
        match value {
            Some(v) => {
                by.insert(label.clone(), v);
            }
            None => {
                by.remove(&label);
            }
        }
    }
    let mut out = String::new();
    for (metric, help) in SERIES {
        let Some(by) = ours.get(metric).filter(|by| !by.is_empty()) else {
            continue;
        };
        out.push_str(&format!("# HELP {metric} {help}\n# TYPE {metric} gauge\n"));
        for (labels, value) in by {
            out.push_str(&format!("{metric}{{{labels}}} {value}\n"));
        }
    }
    for line in foreign {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// `name{labels} value` → (labels, value).
fn sample(line: &str) -> Option<(String, String)> {
    let open = line.find('{')?;
    let close = line.rfind('}')?;
    let labels = line.get(open + 1..close)?.to_owned();
    let value = line.get(close + 1..)?.split_whitespace().next()?.to_owned();
    Some((labels, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(plan: &str, at: i64, ok: bool, backups: Option<u64>) -> RunMetrics {
        RunMetrics {
            plan: plan.into(),
            finished_at: at,
            ok,
            duration_seconds: 12.5,
            bytes: 1024,
            backups,
        }
    }

    fn value(text: &str, metric: &str, plan: &str) -> Option<String> {
        let prefix = format!("{metric}{{plan=\"{plan}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(str::to_owned)
    }

    #[test]
    fn a_failure_keeps_the_last_success_and_other_plans_stay() {
        let t = merge("", &run("a", 100, true, Some(3)));
        let t = merge(&t, &run("b", 150, true, Some(1)));
        let t = merge(&t, &run("a", 200, false, None));
        let last_success = "dtr_backup_last_success_timestamp_seconds";
        assert_eq!(value(&t, last_success, "a").as_deref(), Some("100"));
        assert_eq!(
            value(&t, "dtr_backup_last_run_timestamp_seconds", "a").as_deref(),
            Some("200")
        );
        assert_eq!(
            value(&t, "dtr_backup_last_run_status", "a").as_deref(),
            Some("0")
        );
        assert_eq!(
            value(&t, "dtr_backup_backups", "a").as_deref(),
            Some("3"),
            "kept"
        );
        assert_eq!(value(&t, last_success, "b").as_deref(), Some("150"));
        // One HELP and TYPE per metric, the samples of both plans under it.
        assert_eq!(
            t.matches(&format!("# TYPE {last_success} gauge")).count(),
            1
        );
        let never = merge("", &run("c", 10, false, None));
        assert_eq!(value(&never, last_success, "c").as_deref(), Some("0"));
        assert_eq!(value(&never, "dtr_backup_backups", "c"), None);
    }

    #[test]
    fn lines_of_other_metrics_are_kept() {
        let old = "# HELP other_thing x\n# TYPE other_thing gauge\nother_thing{a=\"1\"} 5\n";
        let t = merge(old, &run("a", 1, true, Some(1)));
        assert!(t.contains(old), "{t}");
        assert_eq!(
            value(&t, "dtr_backup_last_run_status", "a").as_deref(),
            Some("1")
        );
    }

    #[test]
    fn the_file_is_written_whole_and_readable() {
        let dir = std::env::temp_dir().join(format!("dtr-backup-metrics-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dtr_backup.prom");
        record(&path, &run("a", 5, true, Some(2))).unwrap();
        record(&path, &run("b", 6, true, Some(1))).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(
            value(&text, "dtr_backup_backups", "a").as_deref(),
            Some("2")
        );
        assert_eq!(
            value(&text, "dtr_backup_backups", "b").as_deref(),
            Some("1")
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o044, 0o044, "readable by the collector: {mode:o}");
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.starts_with(".dtr_backup.prom.lock"))
            .collect();
        assert_eq!(names, ["dtr_backup.prom"], "no temporary left");
        fs::remove_dir_all(&dir).unwrap();
    }
}
