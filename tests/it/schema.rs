//! The checked-in JSON Schema matches the types, and every shipped plan satisfies it.

use crate::common::*;

fn schema() -> serde_json::Value {
    let text =
        std::fs::read_to_string(root().join("schemas/plan.schema.json")).expect("schema file");
    serde_json::from_str(&text).expect("schema is JSON")
}

#[test]
fn checked_in_schema_matches_the_types() {
    let out = run(dtr_backup(&root()).arg("schema"));
    assert_eq!(out.status.code(), Some(0));
    let on_disk =
        std::fs::read_to_string(root().join("schemas/plan.schema.json")).expect("schema file");
    assert!(
        stdout(&out) == on_disk,
        "schemas/plan.schema.json is stale: run `cargo run -- schema > schemas/plan.schema.json`"
    );
}

fn yaml_to_json(source: &str) -> serde_json::Value {
    serde_saphyr::from_str(source).expect("plan parses as YAML")
}

#[test]
fn shipped_plans_satisfy_the_schema() {
    let validator = jsonschema::validator_for(&schema()).expect("schema compiles");
    for plan in shipped_plans() {
        let source = std::fs::read_to_string(&plan).expect("read plan");
        let value = yaml_to_json(&source);
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", plan.display());
        assert!(
            source.contains("$schema=../schemas/plan.schema.json"),
            "{}",
            plan.display()
        );
    }
}

#[test]
fn schema_and_loader_reject_the_same_structural_mistakes() {
    let validator = jsonschema::validator_for(&schema()).expect("schema compiles");
    let base = "version: 1\nname: p\nparts: [images]\nimages: {type: path, path: /r}\ndestination: {type: local, path: /b}\n";
    let cases = [
        format!("{base}retention: {{keep_lsat: 3}}\n"),
        format!("{base}retention: {{keep_last: seven}}\n"),
        base.replace("type: local", "type: s4"),
        base.replace("version: 1", "version: 2"),
        base.replace("name: p", "name: Bad_Name"),
        base.replace("[images]", "[imagez]"),
        format!("{base}encryption: {{type: passphrase, passphrase: literal}}\n"),
        format!("{base}dtr: {{replica: XYZ}}\n"),
        format!("{base}destinaton: 1\n"),
    ];
    let loaded = dtr_backup::plan::load_str(std::path::Path::new("p.yaml"), base);
    assert!(loaded.plan.is_some() && validator.is_valid(&yaml_to_json(base)));
    for case in cases {
        let loaded = dtr_backup::plan::load_str(std::path::Path::new("p.yaml"), &case);
        assert!(loaded.plan.is_none(), "loader accepted:\n{case}");
        assert!(
            !validator.is_valid(&yaml_to_json(&case)),
            "schema accepted:\n{case}"
        );
    }
}
