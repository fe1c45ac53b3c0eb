//! Property tests on the loader: no input makes it panic, and every diagnostic points inside
//! the source it came from.

use std::path::Path;

use proptest::prelude::*;

fn check_no_panic_and_spans_in_bounds(source: &str) {
    let loaded = dtr_backup::plan::load_str(Path::new("fuzz.yaml"), source);
    for d in &loaded.report.diags {
        assert!(
            d.span.offset + d.span.len <= source.len(),
            "{d:?} outside {} bytes",
            source.len()
        );
        assert!(source.is_char_boundary(d.span.offset), "{d:?}");
        assert!(d.line() >= 1 && d.column() >= 1, "{d:?}");
    }
    // Rendering must not panic either.
    let handler =
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor());
    let _ = dtr_backup::plan::diag::render_all(&loaded.report, &handler);
    assert_eq!(loaded.plan.is_some(), !loaded.report.has_errors());
}

fn quickstart() -> String {
    std::fs::read_to_string(crate::common::root().join("plans/quickstart.yaml"))
        .expect("quickstart")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        check_no_panic_and_spans_in_bounds(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn yamlish_text_never_panics(s in "[a-z_:{}\\[\\], \\n\\-'\"&*!|>#0-9.]{0,300}") {
        check_no_panic_and_spans_in_bounds(&s);
    }

    #[test]
    fn mutated_plans_never_panic(cut in 0usize..2000, len in 0usize..40, insert in "[a-z:{}\\[\\] \\n\\-]{0,8}") {
        let src = quickstart();
        let start = src.char_indices().map(|(i, _)| i).nth(cut % src.chars().count()).unwrap_or(0);
        let end = src[start..].char_indices().map(|(i, _)| start + i).nth(len).unwrap_or(src.len());
        let mutated = format!("{}{}{}", &src[..start], insert, &src[end..]);
        check_no_panic_and_spans_in_bounds(&mutated);
    }
}
