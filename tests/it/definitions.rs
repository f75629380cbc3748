//! `tthc validate` and `tthc show` on the shipped procedures and on invalid and hostile files.

use std::fs;
use std::path::Path;

use crate::support::{bless, repo_root, stderr, stdout, tthc};

#[test]
fn every_shipped_procedure_validates_without_warnings() {
    let out = tthc(&["validate", "--strict"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    let files: Vec<String> = fs::read_dir(repo_root().join("procedures"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| p.strip_prefix(repo_root()).unwrap().display().to_string())
        .collect();
    assert!(
        files.len() >= 4,
        "expected at least four procedures, found {files:?}"
    );
    for f in files {
        assert!(
            text.lines()
                .any(|l| l.starts_with("ok ") && l.ends_with(&f)),
            "{f} is not reported valid:\n{text}"
        );
    }
}

#[test]
fn the_medical_licence_reuses_the_judicial_record_certificate() {
    let out = tthc(&["show", "1.012265"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(
        text.lines()
            .any(|l| l.contains("reuses KQ.LLTP.01 from Kho DL")),
        "{text}"
    );
}

#[test]
fn show_prints_components_results_and_steps_in_order() {
    let out = tthc(&["show", "2.000488"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(
        text.starts_with("2.000488 — Cấp Phiếu lý lịch tư pháp"),
        "{text}"
    );
    for section in ["Components:", "Results:", "Steps:", "KQ.LLTP.01"] {
        assert!(text.contains(section), "missing {section}:\n{text}");
    }
    let steps = text.split("Steps:").nth(1).unwrap();
    let first = steps.lines().find(|l| !l.trim().is_empty()).unwrap();
    assert!(first.trim_start().starts_with("1. "), "{first}");
    assert!(
        first.contains("role mot_cua"),
        "the first step is the one-stop desk: {first}"
    );
}

#[test]
fn show_names_the_known_procedures_when_the_code_is_unknown() {
    let out = tthc(&["show", "0.000000"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("no valid procedure 0.000000") && err.contains("2.000488"),
        "{err}"
    );
}

/// Each file in tests/data/invalid has its expected diagnostics beside it, one per line
/// as `line:column: severity: message` with its hint.
#[test]
fn invalid_definitions_report_every_problem_where_it_was_written() {
    let dir = repo_root().join("tests/data/invalid");
    let mut failures = Vec::new();
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 27, "the corpus shrank: {files:?}");
    for file in files {
        let rel = file
            .strip_prefix(repo_root())
            .unwrap()
            .display()
            .to_string();
        let out = tthc(&["--schemas", "tests/data/schemas", "validate", &rel]);
        let actual = stdout(&out).replace(&format!("{rel}:"), "");
        let expected_path = file.with_extension("expected");
        if out.status.code() != Some(1) {
            failures.push(format!(
                "{rel}: exit code {:?}, stderr: {}",
                out.status.code(),
                stderr(&out)
            ));
        }
        if bless() {
            fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        let expected = fs::read_to_string(&expected_path).unwrap_or_default();
        if actual != expected {
            failures.push(format!(
                "{rel}: diagnostics differ\n--- expected ({})\n{expected}--- actual\n{actual}",
                expected_path.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn an_unknown_step_id_is_reported_at_its_line_and_column() {
    let out = tthc(&["validate", "tests/data/invalid/unknown-step.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.starts_with(
            "tests/data/invalid/unknown-step.yaml:17:15: error: unknown step id `tham_dinhh`\n  hint: did you mean `tham_dinh`?"
        ),
        "{text}"
    );
}

fn validate_text(name: &str, text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    fs::write(&path, text).unwrap();
    let out = tthc(&["validate", path.to_str().unwrap()]);
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!all.contains("panicked"), "{all}");
    (out.status.code(), all)
}

#[test]
fn hostile_yaml_is_refused_with_a_clear_error() {
    let deep = format!("code: {}1{}\n", "[".repeat(5000), "]".repeat(5000));
    let (code, text) = validate_text("deep.yaml", &deep);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("deep.yaml:1:") && text.contains("invalid YAML"),
        "{text}"
    );

    // A "billion laughs": each level repeats the one before ten times.
    let mut bomb = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (prev, cur) in ["a", "b", "c", "d", "e", "f", "g", "h"]
        .windows(2)
        .map(|w| (w[0], w[1]))
    {
        bomb.push_str(&format!("{cur}: &{cur} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
    }
    let (code, text) = validate_text("bomb.yaml", &bomb);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("invalid YAML"), "{text}");

    let huge = format!("code: \"{}\"\n", "x".repeat(600 * 1024));
    let (code, text) = validate_text("huge.yaml", &huge);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("bytes a definition may have"), "{text}");

    let big_scalar = format!("name: \"{}\"\n", "x".repeat(400 * 1024));
    let (code, text) = validate_text("scalar.yaml", &big_scalar);
    assert_eq!(code, Some(1), "{text}");
    assert!(!text.is_empty());

    let (code, text) = validate_text("binary.yaml", "\u{0}\u{1}\u{2}: [");
    assert_eq!(code, Some(1), "{text}");
}

#[test]
fn a_missing_path_is_an_error_not_an_empty_success() {
    let out = tthc(&["validate", "no/such/folder"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("no/such/folder:1:1: error: no such file or folder"));
}

#[test]
fn the_format_schema_is_valid_json_schema_for_editors() {
    let text = fs::read_to_string(repo_root().join("schemas/procedure.schema.json")).unwrap();
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    // Every step kind the engine knows is offered to editors.
    let kinds = &schema["$defs"]["step"]["properties"]["kind"]["enum"];
    for k in [
        "user_task",
        "decision",
        "parallel",
        "join",
        "timer",
        "hook",
        "end",
    ] {
        assert!(kinds.as_array().unwrap().iter().any(|v| v == k), "{k}");
    }
    assert!(Path::new(&repo_root().join("docs/authoring.md")).exists());
}

/// Outside the repository root, the catalog is not found: the message says how to point at it.
#[test]
fn outside_the_repository_root_the_error_says_use_root() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tthc"))
        .arg("validate")
        .current_dir(dir.path())
        .env_remove("TTHC_ROOT")
        .env_remove("TTHC_SCHEMAS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        text.contains("procedures/catalog/results.yaml:1:1: error:")
            && text.contains("--root PATH"),
        "{text}"
    );
    // With --root it finds everything.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tthc"))
        .args([
            "--root",
            repo_root().to_str().unwrap(),
            "validate",
            "--strict",
        ])
        .current_dir(dir.path())
        .env_remove("TTHC_ROOT")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stdout(&out));
}
