//! Printing a step graph as text, JSON or Graphviz dot.

use std::fmt::Write;

use super::StepGraph;

/// A human-readable listing, one block per step.
pub fn render_text(graph: &StepGraph) -> String {
    let mut out = format!("plan {}: {} steps\n", graph.plan, graph.steps.len());
    for (i, step) in graph.steps.iter().enumerate() {
        let _ = write!(out, "\n{:>2}. {} ({})", i + 1, step.id, step.kind.as_str());
        if !step.depends_on.is_empty() {
            let _ = write!(out, "  after {}", step.depends_on.join(", "));
        }
        out.push('\n');
        for input in &step.inputs {
            let _ = writeln!(out, "      in:  {input}");
        }
        for output in &step.outputs {
            let _ = writeln!(out, "      out: {output}");
        }
    }
    out
}

/// The graph as a JSON document with a format version.
pub fn render_json(graph: &StepGraph) -> String {
    let doc = serde_json::json!({
        "format_version": 1,
        "plan": graph.plan,
        "steps": graph.steps,
    });
    serde_json::to_string_pretty(&doc).unwrap_or_else(|_| "{}".into())
}

/// The graph for Graphviz (`dtr-backup plan show P --format dot | dot -Tsvg`).
pub fn render_dot(graph: &StepGraph) -> String {
    let mut out = format!("digraph {:?} {{\n  rankdir=LR;\n", graph.plan);
    for step in &graph.steps {
        // Step ids and kinds are plain words: nothing to escape.
        let _ = writeln!(
            out,
            "  \"{}\" [shape=box, label=\"{}\\n({})\"];",
            step.id,
            step.id,
            step.kind.as_str()
        );
    }
    for step in &graph.steps {
        for dep in &step.depends_on {
            let _ = writeln!(out, "  {dep:?} -> {:?};", step.id);
        }
    }
    out.push_str("}\n");
    out
}
