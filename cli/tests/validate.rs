//! `sluice validate` as users run it: the real binary, real files, exit codes and messages.

use std::process::Command;

fn validate(yaml: &str) -> (i32, String, String) {
    let dir = std::env::temp_dir().join(format!("sluice-validate-{}-{}", std::process::id(), yaml.len()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pipeline.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice")).arg("validate").arg(&file).output().unwrap();
    std::fs::remove_dir_all(&dir).ok();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn example() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/stocktrade/pipeline.yaml")).unwrap()
}

#[test]
fn the_example_is_valid() {
    let (code, stdout, stderr) = validate(&example());
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(r#"Pipeline "trades" is valid (8 SQL statements, 5 persistent queries, 1 function)"#),
        "{stdout}"
    );
}

#[test]
fn a_spec_error_names_the_field_and_exits_1() {
    let (code, _, stderr) = validate(&example().replace("maxRecords: 100", "maxRecords: lots"));
    assert_eq!(code, 1);
    assert!(stderr.contains("spec.functions[0].batch.maxRecords: invalid type"), "{stderr}");
}

#[test]
fn a_sql_error_gives_line_and_column_and_exits_1() {
    let (code, _, stderr) = validate(&example().replace("GROUP BY symbol\n        EMIT", "GROUP symbol\n        EMIT"));
    assert_eq!(code, 1);
    assert!(stderr.contains("spec.processor.sql: line 20:9: expected 'BY', found 'symbol'"), "{stderr}");
}

#[test]
fn a_name_or_type_error_gives_line_and_column_and_exits_1() {
    let (code, _, stderr) = validate(&example().replacen("WHERE disposition LIKE", "WHERE dispositon LIKE", 1));
    assert_eq!(code, 1);
    assert!(
        stderr.contains(
            "spec.processor.sql: line 19:9: Error in WHERE expression: WHERE column 'DISPOSITON' cannot be resolved."
        ),
        "{stderr}"
    );
    let (code, _, stderr) =
        validate(&example().replacen("COUNT(*) AS num_completed", "COUNT(*) + 'x' AS num_completed", 1));
    assert_eq!(code, 1);
    assert!(stderr.contains("spec.processor.sql: line 17:18:"), "{stderr}");
}

#[test]
fn a_missing_file_is_reported() {
    let out =
        Command::new(env!("CARGO_BIN_EXE_sluice")).args(["validate", "/nonexistent/pipeline.yaml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}
