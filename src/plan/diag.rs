//! Diagnostics about a plan: what is wrong, where, and what to do next.
//!
//! Every problem found while loading a plan becomes one [`Diag`] with a span in the plan's
//! source. They are collected, never thrown, so one `plan validate` shows them all. Rendering
//! goes through miette (terminal) or serde_json (`--output json`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::{LabeledSpan, SourceSpan};
use serde::Serialize;

use super::yaml::Span;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem in a plan.
#[derive(Clone, Debug)]
pub struct Diag {
    pub severity: Severity,
    /// Stable identifier, e.g. `plan::unknown-key`.
    pub code: &'static str,
    pub message: String,
    pub span: Span,
    /// Text under the underlined span.
    pub label: String,
    /// What to do next.
    pub help: Option<String>,
}

impl Diag {
    pub fn error(code: &'static str, span: Span, message: impl Into<String>) -> Diag {
        Diag {
            severity: Severity::Error,
            code,
            message: message.into(),
            span,
            label: String::new(),
            help: None,
        }
    }

    pub fn warning(code: &'static str, span: Span, message: impl Into<String>) -> Diag {
        Diag {
            severity: Severity::Warning,
            ..Diag::error(code, span, message)
        }
    }

    pub fn label(mut self, label: impl Into<String>) -> Diag {
        self.label = label.into();
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Diag {
        self.help = Some(help.into());
        self
    }

    /// 1-based line of the span's start.
    pub fn line(&self) -> usize {
        self.span.line
    }

    /// 1-based column (in characters) of the span's start.
    pub fn column(&self) -> usize {
        self.span.column
    }
}

/// The diagnostics of one plan file, with its source for rendering.
#[derive(Clone, Debug)]
pub struct FileReport {
    pub file: PathBuf,
    pub source: Arc<str>,
    pub diags: Vec<Diag>,
}

impl FileReport {
    /// The source kept for rendering has `masked` (values that may be secrets written in the
    /// plan) replaced by `*`: a snippet, of any diagnostic, never shows them on stderr, which
    /// CI jobs log.
    pub fn new(file: &Path, source: Arc<str>, mut diags: Vec<Diag>, masked: &[Span]) -> FileReport {
        diags.sort_by_key(|d| (d.span.offset, d.span.line, d.span.column));
        let secrets: Vec<Span> = diags
            .iter()
            .filter(|d| d.code == LITERAL_SECRET)
            .map(|d| d.span)
            .chain(masked.iter().copied())
            .collect();
        FileReport {
            file: file.to_path_buf(),
            source: if secrets.is_empty() {
                source
            } else {
                mask(&source, &secrets).into()
            },
            diags,
        }
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diag> {
        self.diags.iter().filter(|d| d.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diag> {
        self.diags
            .iter()
            .filter(|d| d.severity == Severity::Warning)
    }

    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }

    /// One miette report per diagnostic, carrying the plan source.
    pub fn reports(&self) -> impl Iterator<Item = Rendered<'_>> {
        self.diags.iter().map(|d| Rendered {
            report: self,
            diag: d,
        })
    }

    /// The diagnostics in the stable JSON form of `plan validate --output json`.
    pub fn json(&self) -> Vec<DiagJson> {
        self.diags
            .iter()
            .map(|d| DiagJson {
                severity: d.severity,
                code: d.code,
                message: d.message.clone(),
                file: self.file.display().to_string(),
                line: d.span.line,
                column: d.span.column,
                label: d.label.clone(),
                help: d.help.clone(),
            })
            .collect()
    }
}

/// The code of a secret written in the plan itself; its span is masked when rendered.
pub const LITERAL_SECRET: &str = "plan::literal-secret";

/// `source` with every character inside `spans` (widened to whole characters) replaced by
/// `*`, one per octet, so that offsets stay as they were.
fn mask(source: &str, spans: &[Span]) -> String {
    let mut bytes = source.as_bytes().to_vec();
    for s in spans {
        let mut start = s.offset.min(source.len());
        let mut end = (s.offset + s.len).min(source.len());
        while !source.is_char_boundary(start) {
            start -= 1;
        }
        while !source.is_char_boundary(end) {
            end += 1;
        }
        for b in &mut bytes[start..end] {
            if *b != b'\n' && *b != b'\r' {
                *b = b'*';
            }
        }
    }
    // Whole characters were replaced by ASCII: still UTF-8.
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Keys whose values are secrets (or references to them).
const SECRET_KEYS: &[&str] = &[
    "password",
    "passphrase",
    "access_key_id",
    "secret_access_key",
    "key",
    "key_passphrase",
];

/// For a file that is not valid YAML (no values to go by): the plain values of the keys that
/// hold secrets, line by line (`password: hunter2`, not `password: {env: P}`).
pub fn secret_lines(source: &str) -> Vec<Span> {
    let mut out = Vec::new();
    let mut offset = 0;
    for (n, line) in source.split_inclusive('\n').enumerate() {
        let body = line.trim_end_matches(['\n', '\r']);
        let item = body.trim_start().trim_start_matches("- ").trim_start();
        if let Some((key, value)) = item.split_once(':')
            && SECRET_KEYS.contains(&key.trim().trim_matches(['"', '\'']))
        {
            let v = value.trim();
            if !v.is_empty() && !v.starts_with('{') {
                let at = offset + body.len() - value.trim_start().len();
                out.push(Span {
                    offset: at,
                    len: v.len(),
                    line: n + 1,
                    column: 0,
                });
            }
        }
        offset += line.len();
    }
    out
}

/// A diagnostic as it appears in JSON output.
#[derive(Clone, Debug, Serialize)]
pub struct DiagJson {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub label: String,
    pub help: Option<String>,
}

/// A diagnostic joined with its file, ready for a miette handler.
pub struct Rendered<'a> {
    report: &'a FileReport,
    diag: &'a Diag,
}

impl fmt::Debug for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.diag, f)
    }
}

impl fmt::Display for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.diag.message)
    }
}

impl std::error::Error for Rendered<'_> {}

impl miette::Diagnostic for Rendered<'_> {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.diag.code))
    }
    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.diag.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.diag
            .help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(self)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let span = SourceSpan::new(self.diag.span.offset.into(), self.diag.span.len);
        let label = (!self.diag.label.is_empty()).then(|| self.diag.label.clone());
        Some(Box::new(std::iter::once(LabeledSpan::new_with_span(
            label, span,
        ))))
    }
}

impl miette::SourceCode for Rendered<'_> {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn miette::SpanContents<'a> + 'a>, miette::MietteError> {
        let inner =
            self.report
                .source
                .read_span(span, context_lines_before, context_lines_after)?;
        Ok(Box::new(miette::MietteSpanContents::new_named(
            self.report.file.display().to_string(),
            inner.data(),
            *inner.span(),
            inner.line(),
            inner.column(),
            inner.line_count(),
        )))
    }
}

/// Renders a report's diagnostics with a handler (graphical with or without colour).
pub fn render_all(report: &FileReport, handler: &miette::GraphicalReportHandler) -> String {
    let mut out = String::new();
    for r in report.reports() {
        if handler.render_report(&mut out, &r).is_err() {
            // A rendering failure must not hide the problem itself.
            out.push_str(&format!(
                "{}:{}:{}: {}\n",
                report.file.display(),
                r.diag.span.line,
                r.diag.span.column,
                r.diag.message
            ));
        }
        out.push('\n');
    }
    out
}

/// Byte offset of a 1-based line and (character) column in `source`.
pub fn offset_of(source: &str, line: usize, column: usize) -> usize {
    let mut offset = 0;
    for (i, l) in source.split_inclusive('\n').enumerate() {
        if i + 1 == line {
            let col = l
                .char_indices()
                .nth(column.saturating_sub(1))
                .map(|(b, _)| b)
                .unwrap_or(l.len());
            return offset + col;
        }
        offset += l.len();
    }
    source.len()
}

/// Smallest edit distance between two words (for "did you mean").
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest candidate within a small distance, if any.
pub fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(2);
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("keep_lsat", &["keep_last", "keep_daily"]),
            Some("keep_last")
        );
        assert_eq!(did_you_mean("zzzzzz", &["url", "username"]), None);
        assert_eq!(
            did_you_mean("usrname", &["url", "username"]),
            Some("username")
        );
    }

    #[test]
    fn offsets() {
        let s = "a: 1\nbé: 2\n";
        assert_eq!(offset_of(s, 1, 1), 0);
        assert_eq!(offset_of(s, 2, 1), 5);
        assert_eq!(offset_of(s, 2, 3), 8);
    }
}
