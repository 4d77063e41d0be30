//! Checking a Pipeline file the way the apiserver will: parse with field paths (and YAML line and
//! column), apply defaults, then the CRD's structural constraints (patterns, lengths, ranges,
//! enums) and its CEL rules, evaluated locally from the same generated schema.
//!
//! Errors are [`Problem`]s with a field path such as `spec.functions[0].scaling.maxReplicas`, so
//! a user sees where to look whether the file is checked here or rejected by the cluster.

use std::fmt;

use kube::CustomResourceExt;
use serde::Deserialize;
use serde_json::Value;

use crate::pipeline::Pipeline;

/// One thing wrong with a Pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Which document of a multi-document file (0-based); 0 for a single document.
    pub document: usize,
    /// Field path, e.g. `spec.functions[0].runtime`; empty for the document as a whole.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// 1-based line in the file, when the YAML parser knows it.
    pub line: Option<usize>,
    /// 1-based column in the file, when the YAML parser knows it.
    pub column: Option<usize>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, "line {line} column {column}: ")?;
        }
        if self.path.is_empty() { f.write_str(&self.message) } else { write!(f, "{}: {}", self.path, self.message) }
    }
}

impl Problem {
    fn new(document: usize, path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem { document, path: path.into(), message: message.into(), line: None, column: None }
    }
}

/// Parse every Pipeline in a YAML file (one or more `---`-separated documents) and check each one
/// against the CRD. Returns the pipelines with defaults applied, or every problem found.
pub fn load_pipelines(text: &str) -> Result<Vec<Pipeline>, Vec<Problem>> {
    let mut pipelines = Vec::new();
    let mut problems = Vec::new();
    for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        // Read into a generic value first: an empty document, or a document that is not a
        // Pipeline, gets a clear message instead of a type error.
        let value = match Value::deserialize(document) {
            Ok(Value::Null) => continue,
            Ok(value) => value,
            Err(e) => {
                // The parser cannot resynchronise after a syntax error: report it and stop.
                problems.push(yaml_problem(index, e));
                break;
            }
        };
        match check_value(index, &value) {
            Ok(pipeline) => pipelines.push(pipeline),
            Err(mut found) => problems.append(&mut found),
        }
    }
    if pipelines.is_empty() && problems.is_empty() {
        problems.push(Problem::new(0, "", "the file holds no Pipeline"));
    }
    if problems.is_empty() { Ok(pipelines) } else { Err(problems) }
}

fn yaml_problem(document: usize, e: serde_norway::Error) -> Problem {
    let (line, column) = match e.location() {
        Some(l) => (Some(l.line()), Some(l.column())),
        None => (None, None),
    };
    Problem { document, path: String::new(), message: format!("invalid YAML: {e}"), line, column }
}

/// Check one document: kind, types (with field paths), then the CRD's constraints and rules.
pub fn check_value(document: usize, value: &Value) -> Result<Pipeline, Vec<Problem>> {
    let api_version = value.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or_default();
    if api_version != "sluice.dev/v1alpha1" || kind != "Pipeline" {
        return Err(vec![Problem::new(
            document,
            "",
            format!(
                "expected apiVersion sluice.dev/v1alpha1 and kind Pipeline, found apiVersion {api_version:?} and kind {kind:?}"
            ),
        )]);
    }
    let pipeline: Pipeline = match serde_path_to_error::deserialize(value) {
        Ok(p) => p,
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            return Err(vec![Problem::new(document, path, e.into_inner().to_string())]);
        }
    };
    let mut problems = Vec::new();
    if pipeline.metadata.name.as_deref().unwrap_or_default().is_empty() {
        problems.push(Problem::new(document, "metadata.name", "required"));
    }
    // The object as the apiserver would store it: with every default filled in.
    let defaulted = serde_json::to_value(&pipeline).expect("a Pipeline always serializes");
    let schema = crd_schema();
    structural(&schema, &defaulted, "", document, &mut problems);
    if let Err(errors) = kube::core::cel::Validator::new().validate(&schema, &defaulted, None) {
        for e in errors.into_vec() {
            problems.push(Problem::new(document, e.field_path.clone(), e.message.clone()));
        }
    }
    // What the schema cannot say (bounds and relations of durations, duplicate variables): the
    // operator refuses these too.
    if problems.is_empty() {
        for (i, f) in pipeline.spec.functions.iter().enumerate() {
            if let Err(p) = f.check() {
                problems.push(Problem::new(document, format!("spec.functions[{i}].{}", p.path), p.message));
            }
        }
    }
    if problems.is_empty() { Ok(pipeline) } else { Err(problems) }
}

/// The CRD's `openAPIV3Schema` as JSON.
fn crd_schema() -> Value {
    let crd = Pipeline::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("the derived CRD has a schema");
    serde_json::to_value(schema).expect("a schema always serializes")
}

/// The value checks of a structural schema that the apiserver applies besides CEL: `pattern`,
/// `minLength`/`maxLength`, `minimum`/`maximum`, `maxItems`, `enum`, `required`.
fn structural(schema: &Value, value: &Value, path: &str, document: usize, out: &mut Vec<Problem>) {
    let mut fail = |message: String| out.push(Problem::new(document, path, message));
    match value {
        Value::String(s) => {
            let chars = s.chars().count() as u64;
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                && chars < min
            {
                fail(format!("must be at least {min} characters"));
            }
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && chars > max
            {
                fail(format!("must be at most {max} characters"));
            }
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
                match regex::Regex::new(pattern) {
                    Ok(re) if !re.is_match(s) => fail(format!("{s:?} does not match {pattern}")),
                    _ => {}
                }
            }
        }
        Value::Number(n) => {
            if let (Some(min), Some(v)) = (schema.get("minimum").and_then(Value::as_f64), n.as_f64())
                && v < min
            {
                fail(format!("must be at least {min}"));
            }
            if let (Some(max), Some(v)) = (schema.get("maximum").and_then(Value::as_f64), n.as_f64())
                && v > max
            {
                fail(format!("must be at most {max}"));
            }
        }
        Value::Array(items) => {
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && items.len() as u64 > max
            {
                fail(format!("must have at most {max} items"));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    structural(item_schema, item, &format!("{path}[{i}]"), document, out);
                }
            }
            return;
        }
        Value::Object(map) => {
            if let Some(required) = schema.get("required").and_then(Value::as_array) {
                for name in required.iter().filter_map(Value::as_str) {
                    if !map.contains_key(name) {
                        out.push(Problem::new(document, join(path, name), "required"));
                    }
                }
            }
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            for (key, item) in map {
                let sub = properties.and_then(|p| p.get(key)).or(additional);
                if let Some(sub) = sub {
                    structural(sub, item, &join(path, key), document, out);
                }
            }
            return;
        }
        _ => {}
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let names: Vec<String> = allowed.iter().map(|v| v.to_string()).collect();
        out.push(Problem::new(document, path, format!("must be one of {}", names.join(", "))));
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: Pipeline
metadata: {name: trades}
spec:
  kafka: {bootstrapServers: "kafka:9092"}
  processor:
    sql: "CREATE STREAM S (ID INT KEY) WITH (kafka_topic='s', value_format='json');"
  functions:
    - name: settle
      source: {topic: user_trades}
      runtime:
        lambda: {image: "registry.example/settle:1.0"}
      output: {topic: trade-settlements}
"#;

    fn problems(yaml: &str) -> Vec<String> {
        match load_pipelines(yaml) {
            Ok(_) => vec![],
            Err(p) => p.iter().map(ToString::to_string).collect(),
        }
    }

    fn with(replace: &str, by: &str) -> String {
        assert!(VALID.contains(replace), "{replace:?} is not in the sample");
        VALID.replace(replace, by)
    }

    #[test]
    fn a_valid_pipeline_gets_its_defaults() {
        let pipelines = load_pipelines(VALID).unwrap();
        let spec = &pipelines[0].spec;
        let f = &spec.functions[0];
        assert_eq!(f.batch.max_records, 100);
        assert_eq!(f.batch.max_bytes.bytes(), 6 * 1024 * 1024);
        assert_eq!(f.scaling.scale_to_zero_after.get().as_secs(), 300);
        assert_eq!(f.on_failure.max_retries, 3);
        let p = spec.processor.as_ref().unwrap();
        assert_eq!(p.replicas, 1);
        assert!(p.exactly_once);
        assert_eq!(p.commit_interval.get().as_millis(), 100);
    }

    #[test]
    fn both_runtimes_is_rejected_by_the_cel_rule() {
        let yaml = with(
            r#"lambda: {image: "registry.example/settle:1.0"}"#,
            r#"lambda: {image: "registry.example/settle:1.0"}
        http: {url: "http://x:8080/"}"#,
        );
        let p = problems(&yaml);
        assert!(p.iter().any(|m| m.contains("exactly one of runtime.lambda and runtime.http")), "{p:?}");
    }

    #[test]
    fn min_above_max_replicas_is_rejected() {
        let yaml = with(
            "output: {topic: trade-settlements}",
            "output: {topic: trade-settlements}\n      scaling: {minReplicas: 5, maxReplicas: 2}",
        );
        let p = problems(&yaml);
        assert!(p.iter().any(|m| m.contains("minReplicas must not exceed")), "{p:?}");
    }

    #[test]
    fn duplicate_function_names_are_rejected() {
        let second = r#"
    - name: settle
      source: {topic: other}
      runtime: {http: {url: "http://x/"}}"#;
        let yaml = format!("{}{second}\n", VALID.trim_end());
        let p = problems(&yaml);
        assert!(p.iter().any(|m| m.contains("function names must be unique")), "{p:?}");
    }

    #[test]
    fn unknown_fields_name_their_path() {
        let yaml = with("source: {topic: user_trades}", "source: {topic: user_trades, startingPositon: earliest}");
        let p = problems(&yaml);
        assert!(p.iter().any(|m| m.starts_with("spec.functions[0].source") && m.contains("startingPositon")), "{p:?}");
    }

    #[test]
    fn bad_durations_and_sizes_name_their_path() {
        let p = problems(&with(
            "source: {topic: user_trades}",
            "source: {topic: user_trades}\n      batch: {maxWait: 5 seconds}",
        ));
        assert!(
            p.iter().any(|m| m.starts_with("spec.functions[0].batch.maxWait") && m.contains("invalid duration")),
            "{p:?}"
        );
        let p = problems(&with(
            "source: {topic: user_trades}",
            "source: {topic: user_trades}\n      batch: {maxBytes: 6MB}",
        ));
        assert!(
            p.iter().any(|m| m.starts_with("spec.functions[0].batch.maxBytes") && m.contains("invalid size")),
            "{p:?}"
        );
    }

    #[test]
    fn out_of_range_durations_and_duplicate_variables_name_their_path() {
        for (field, path, says) in [
            ("batch: {maxWait: 10m}", "spec.functions[0].batch.maxWait", "out of range"),
            ("batch: {maxBytes: 8Mi}", "spec.functions[0].batch.maxBytes", "Lambda's payload limit"),
            (
                "onFailure: {backoff: {initial: 1m, max: 10s}}",
                "spec.functions[0].onFailure.backoff.initial",
                "out of range",
            ),
            ("scaling: {pollInterval: 10ms}", "spec.functions[0].scaling.pollInterval", "out of range"),
        ] {
            let p = problems(&with(
                "source: {topic: user_trades}",
                &format!("source: {{topic: user_trades}}\n      {field}"),
            ));
            assert!(p.iter().any(|m| m.starts_with(path) && m.contains(says)), "{field}: {p:?}");
        }
        let p = problems(&with(
            r#"lambda: {image: "registry.example/settle:1.0"}"#,
            r#"lambda: {image: "registry.example/settle:1.0", timeout: 2h, env: [{name: A, value: "1"}]}"#,
        ));
        assert!(p.iter().any(|m| m.starts_with("spec.functions[0].runtime.lambda.timeout")), "{p:?}");
        let p = problems(&with(
            r#"lambda: {image: "registry.example/settle:1.0"}"#,
            r#"lambda: {image: "registry.example/settle:1.0", env: [{name: A, value: "1"}, {name: A, value: "2"}]}"#,
        ));
        assert!(
            p.iter().any(|m| m.starts_with("spec.functions[0].runtime.lambda.env[1].name") && m.contains("duplicate")),
            "{p:?}"
        );
    }

    #[test]
    fn names_must_be_dns_labels() {
        let p = problems(&with("- name: settle", "- name: Settle_Trades"));
        assert!(p.iter().any(|m| m.starts_with("spec.functions[0].name") && m.contains("does not match")), "{p:?}");
    }

    #[test]
    fn sasl_needs_a_sasl_protocol() {
        let p = problems(&with(
            r#"kafka: {bootstrapServers: "kafka:9092"}"#,
            r#"kafka: {bootstrapServers: "kafka:9092", securityProtocol: SASL_SSL}"#,
        ));
        assert!(p.iter().any(|m| m.contains("sasl is required")), "{p:?}");
    }

    #[test]
    fn invalid_yaml_reports_line_and_column() {
        let p = problems("apiVersion: sluice.dev/v1alpha1\nkind: Pipeline\nspec: [unclosed\n");
        assert!(p.iter().any(|m| m.starts_with("line ")), "{p:?}");
    }

    #[test]
    fn wrong_kind_is_named() {
        let p = problems("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n");
        assert!(p[0].contains("expected apiVersion sluice.dev/v1alpha1"), "{p:?}");
    }

    #[test]
    fn long_names_are_rejected() {
        let long = "a".repeat(45);
        let p = problems(&with("metadata: {name: trades}", &format!("metadata: {{name: {long}}}")));
        assert!(p.iter().any(|m| m.contains("at most 40 characters")), "{p:?}");
    }
}
