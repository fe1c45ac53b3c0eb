//! `plan show`: the step graph in text, JSON and dot.

use crate::common::*;

fn graph_json(plan: &str) -> serde_json::Value {
    let out = run(dtr_backup(&root()).args(["plan", "show", plan, "--format", "json"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("json graph")
}

fn step_ids(graph: &serde_json::Value) -> Vec<String> {
    graph["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_owned())
        .collect()
}

#[test]
fn full_plan_follows_the_domain_order() {
    let g = graph_json("plans/dtr-node-volume.yaml");
    assert_eq!(g["format_version"], 1);
    assert_eq!(
        step_ids(&g),
        [
            "preflight",
            "discover",
            "metadata",
            "images",
            "manifest",
            "verify",
            "retention"
        ]
    );
    let steps = g["steps"].as_array().expect("steps");
    // Each step depends on the one before it: metadata strictly before images.
    for pair in steps.windows(2) {
        assert_eq!(pair[1]["depends_on"][0], pair[0]["id"]);
    }
    let metadata = &steps[2];
    assert_eq!(metadata["kind"], "metadata");
    let outputs = metadata["outputs"].to_string();
    assert!(
        outputs.contains("dtr-backup-v2.7.5.tar.gz.gpg"),
        "{outputs}"
    );
    let images = steps[3]["outputs"].to_string();
    assert!(
        images.contains("dtr-images-a1640e1c15b6.tar.gpg"),
        "{images}"
    );
}

#[test]
fn steps_of_absent_parts_do_not_appear() {
    let g = graph_json("plans/quickstart.yaml");
    assert_eq!(
        step_ids(&g),
        ["preflight", "images", "manifest", "verify", "retention"]
    );
}

#[test]
fn images_first_reverses_the_two_parts() {
    let dir = TempDir::new("show");
    let plan = dir.write(
        "p.yaml",
        "version: 1\nname: p\nucp:\n  url: https://ucp\n  username: admin\n  password: {env: UCP_PASSWORD}\n  ca_file: ca.pem\ndtr: {image: docker/dtr:2.9.4}\nimages: {type: volume}\ndestination: {type: local, path: /b}\nencryption: {type: passphrase, passphrase: {env: P}}\norder: images-first\nverify: {after_apply: false}\n",
    );
    let out = run(dtr_backup(dir.path())
        .args(["plan", "show", "--format", "json"])
        .arg(&plan));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let g: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        step_ids(&g),
        ["preflight", "discover", "images", "metadata", "manifest"]
    );
}

#[test]
fn text_and_dot_formats() {
    let out = run(dtr_backup(&root()).args(["plan", "show", "plans/dtr-node-volume.yaml"]));
    let text = stdout(&out);
    assert!(text.starts_with("plan dtr-prod: 7 steps"), "{text}");
    assert!(
        text.contains("UCP_PASSWORD <redacted from env:UCP_PASSWORD>"),
        "{text}"
    );
    let out = run(dtr_backup(&root()).args([
        "plan",
        "show",
        "plans/dtr-node-volume.yaml",
        "--format",
        "dot",
    ]));
    let dot = stdout(&out);
    assert!(dot.starts_with("digraph \"dtr-prod\" {"), "{dot}");
    assert!(dot.contains("\"metadata\" -> \"images\";"), "{dot}");
}

#[test]
fn show_of_an_invalid_plan_exits_3() {
    let dir = TempDir::new("showbad");
    let plan = dir.write("p.yaml", "version: 1\nname: p\n");
    let out = run(dtr_backup(dir.path()).args(["plan", "show"]).arg(&plan));
    assert_eq!(out.status.code(), Some(3));
    assert!(stdout(&out).is_empty());
}
