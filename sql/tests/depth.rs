//! Nesting limits: no text makes the parser, or dropping what it built, overflow a stack. Each
//! case runs on a thread with the stack the binaries give every thread that handles SQL
//! ([`SQL_STACK_SIZE`]), in this (debug) build; an overflow would abort the test binary.

use proptest::prelude::*;
use sluice_sql::{MAX_DEPTH, SQL_STACK_SIZE, ast::Statement, parse_expression, parse_statements};

fn on_worker_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(SQL_STACK_SIZE)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("the parser thread died")
}

/// Parse on a worker-sized stack: Ok(depth of the expression) or the error's text.
fn parse(sql: String) -> Result<usize, String> {
    on_worker_stack(move || parse_expression(&sql).map(|e| e.depth()).map_err(|e| e.to_string()))
}

fn too_deep(result: Result<usize, String>) -> bool {
    matches!(&result, Err(e) if e.contains("nested too deeply"))
}

#[test]
fn parentheses_up_to_the_limit_parse_and_beyond_it_are_refused_with_a_position() {
    let nest = |n: usize| format!("{}1{}", "(".repeat(n), ")".repeat(n));
    assert_eq!(parse(nest(100)), Ok(1));
    assert_eq!(parse(nest(MAX_DEPTH - 1)), Ok(1));
    for n in [MAX_DEPTH, 5_000, 1_000_000] {
        let e = parse(nest(n)).unwrap_err();
        assert!(e.starts_with(&format!("line 1:{}: expression nested too deeply", MAX_DEPTH + 1)), "{n}: {e}");
    }
}

#[test]
fn every_recursive_rule_is_bounded() {
    let n = 200_000;
    let cases = [
        format!("{}1", "NOT ".repeat(n)),
        format!("{}1", "- ".repeat(n)),
        format!("{}1{}", "ABS(".repeat(n), ")".repeat(n)),
        format!("{}1{}", "CAST(".repeat(n), " AS INT)".repeat(n)),
        format!("{}1{}", "ARRAY[".repeat(n), "]".repeat(n)),
        format!("{}1{}", "CASE WHEN TRUE THEN ".repeat(n), " END".repeat(n)),
        format!("{}x => 1{}", "TRANSFORM(A, ".repeat(n), ")".repeat(n)),
        format!("A{}", "[1]".repeat(n)),
        format!("A{}", "->F".repeat(n)),
    ];
    for sql in cases {
        let head: String = sql.chars().take(24).collect();
        assert!(too_deep(parse(sql)), "{head}…");
    }
}

#[test]
fn chains_of_binary_operators_count_once_per_link() {
    for op in ["OR", "AND", "+", "-", "*", "/", "||"] {
        let chain = |n: usize| format!("1{}", format!(" {op} 1").repeat(n));
        assert_eq!(parse(chain(10)), Ok(11), "{op}");
        assert!(parse(chain(MAX_DEPTH - 2)).is_ok(), "{op}");
        assert!(too_deep(parse(chain(MAX_DEPTH))), "{op}");
        assert!(too_deep(parse(chain(1_000_000))), "{op}");
    }
    // Chains inside chains, inside parentheses: the depth of the whole tree is what counts.
    let mut sql = "1".to_owned();
    for _ in 0..100 {
        sql = format!("({sql} + 1 + 1 + 1)");
    }
    assert!(too_deep(parse(sql)));
    // The way to write a long disjunction.
    let list = (0..100_000).map(|i| i.to_string()).collect::<Vec<_>>().join(", ");
    assert_eq!(parse(format!("A IN ({list})")), Ok(2));
}

#[test]
fn statements_types_and_joins_are_bounded() {
    let deep_where = format!("SELECT * FROM T WHERE C = {}1{};", "(".repeat(5000), ")".repeat(5000));
    let e = on_worker_stack(move || parse_statements(&deep_where).map(|_| ()).map_err(|e| e.to_string()));
    assert!(e.as_ref().is_err_and(|e| e.contains("nested too deeply")), "{e:?}");

    let n = 100_000;
    let deep_type = format!(
        "CREATE STREAM S (A {}INT{}) WITH (kafka_topic='s', value_format='json');",
        "ARRAY<".repeat(n),
        ">".repeat(n)
    );
    let e = on_worker_stack(move || parse_statements(&deep_type).map(|_| ()).map_err(|e| e.to_string()));
    assert!(e.as_ref().is_err_and(|e| e.contains("nested too deeply")), "{e:?}");
    let fine =
        "CREATE STREAM S (A ARRAY<MAP<STRING, STRUCT<B ARRAY<INT>>>>) WITH (kafka_topic='s', value_format='json');";
    assert!(parse_statements(fine).is_ok());

    let joins = format!("SELECT * FROM A{};", " JOIN B ON A.K = B.K".repeat(n));
    let e = on_worker_stack(move || parse_statements(&joins).map(|_| ()).map_err(|e| e.to_string()));
    assert!(e.as_ref().is_err_and(|e| e.contains("too many joins")), "{e:?}");
    let three = "SELECT * FROM A JOIN B ON A.K = B.K JOIN C ON A.K = C.K;";
    assert!(matches!(&parse_statements(three).unwrap()[0].0, Statement::Query(_)));
}

/// One layer of a generated deep expression.
#[derive(Debug, Clone)]
enum Layer {
    Parens,
    Not,
    Minus,
    Call,
    /// `inner op 1 op 1 ...`, so many links.
    Chain(usize),
    /// `1 op inner`: the inner tree as the right operand.
    Right,
    Subscript,
}

fn layer() -> impl Strategy<Value = Layer> {
    prop_oneof![
        Just(Layer::Parens),
        Just(Layer::Not),
        Just(Layer::Minus),
        Just(Layer::Call),
        (1usize..40).prop_map(Layer::Chain),
        Just(Layer::Right),
        Just(Layer::Subscript),
    ]
}

fn build(layers: &[Layer]) -> String {
    let mut sql = "A".to_owned();
    for l in layers {
        sql = match l {
            Layer::Parens => format!("({sql})"),
            Layer::Not => format!("(NOT {sql})"),
            Layer::Minus => format!("- {sql}"),
            Layer::Call => format!("ABS({sql})"),
            Layer::Chain(n) => format!("{sql}{}", " + 1".repeat(*n)),
            Layer::Right => format!("(1 * {sql})"),
            Layer::Subscript => format!("({sql})[1]"),
        };
    }
    sql
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever the shape, the parser answers (on a worker's stack), and what it accepts is
    /// never deeper than twice the limit (what analysis and evaluation are sized for).
    #[test]
    fn deep_expressions_of_any_shape_are_answered(layers in prop::collection::vec(layer(), 0..2_000)) {
        match parse(build(&layers)) {
            Ok(depth) => prop_assert!(depth <= 2 * MAX_DEPTH, "accepted a tree {depth} deep"),
            Err(e) => prop_assert!(e.contains("nested too deeply"), "{e}"),
        }
    }
}
