//! Every case of `$CLIP_FIXTURES/tokenizer/cases.jsonl` (open_clip's own ids) exactly.

use clip_core::ClipTokenizer;
use clip_fixtures as fixtures;

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    ids: Vec<i64>,
}

#[test]
fn every_tokenizer_case_matches_open_clip() {
    check_every_case(&ClipTokenizer::new());
}

#[test]
fn tokenizer_json_round_trip_matches_open_clip() {
    let dir = tempfile::Builder::new().prefix("clip-core-tokenizer-").tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    ClipTokenizer::new().save(&path).unwrap();
    let loaded = ClipTokenizer::from_file(&path).unwrap();
    check_every_case(&loaded);
}

#[test]
fn unreadable_tokenizer_file_is_named() {
    let err = ClipTokenizer::from_file("no/such/tokenizer.json".as_ref()).unwrap_err();
    assert!(err.to_string().contains("no/such/tokenizer.json"), "{err}");
}

fn check_every_case(tokenizer: &ClipTokenizer) {
    let path = fixtures::root().join("tokenizer/cases.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut checked = 0;
    let mut failures = Vec::new();
    for (line, json) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let case: Case = serde_json::from_str(json).unwrap_or_else(|e| panic!("{}:{}: {e}", path.display(), line + 1));
        let tokenizer = tokenizer.clone().with_context_length(case.ids.len()).unwrap();
        let got = tokenizer.tokenize(&case.text).unwrap();
        if got != case.ids {
            failures.push(format!("line {}: {:?}\n  expected {:?}\n  got      {:?}", line + 1, case.text, case.ids, got));
        }
        checked += 1;
    }
    assert!(checked > 0, "no cases in {}", path.display());
    assert!(failures.is_empty(), "{} of {checked} cases differ:\n{}", failures.len(), failures.join("\n"));
    eprintln!("{checked} tokenizer cases identical to open_clip");
}
