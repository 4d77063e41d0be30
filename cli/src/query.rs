//! `sluice query`: statements against a processor's ksqlDB-compatible API, one from the command
//! line or many in an interactive session in the habits of ksqlDB's CLI. A `SELECT` goes to
//! `/query-stream` — a pull query's rows are printed once they are all in, a push query's
//! (`EMIT CHANGES`) as they arrive, until its `LIMIT` or Ctrl-C — and anything else (`SHOW`,
//! `DESCRIBE`, `EXPLAIN`, `LIST`) to `/ksql`. `--output table` (aligned tables, by display width),
//! `json` or `csv`.

use std::io::Write;

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{Value, json};
use unicode_width::UnicodeWidthStr;

type Http = hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned tables, as ksqlDB's CLI prints them.
    Table,
    /// JSON: a pull query's rows as one array of objects, a push query's as one object per
    /// line, other answers as the processor gave them.
    Json,
    /// CSV with a header line.
    Csv,
}

/// A connection to one processor.
pub struct Client {
    http: Http,
    server: String,
}

impl Client {
    /// A client of the processor at `server` (`http://host:port`).
    pub fn new(server: &str) -> Client {
        Client {
            http: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http(),
            server: server.trim_end_matches('/').to_owned(),
        }
    }

    /// Run one statement; results go to `out` as `output` says. A push query runs until its
    /// `LIMIT`, the end of its stream, or `stop`.
    pub async fn execute(
        &self,
        sql: &str,
        output: Output,
        out: &mut impl Write,
        stop: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let statements = sluice_sql::parse_statements(sql).map_err(|e| anyhow::anyhow!("{e}"))?;
        let [(statement, _)] = statements.as_slice() else {
            anyhow::bail!("give one statement (found {})", statements.len());
        };
        let (is_query, push) = match statement {
            sluice_sql::ast::Statement::Query(q) => (true, q.emit.is_some()),
            _ => (false, false),
        };
        let (path, body, accept) = if is_query {
            ("/query-stream", json!({"sql": sql, "properties": {}}), "application/vnd.ksqlapi.delimited.v1")
        } else {
            ("/ksql", json!({"ksql": sql, "streamsProperties": {}}), "application/json")
        };
        let server = &self.server;
        let uri: hyper::Uri = format!("{server}{path}").parse().with_context(|| format!("--server {server}"))?;
        let request = hyper::Request::post(uri)
            .header("Content-Type", "application/json")
            .header("Accept", accept)
            .body(Full::new(Bytes::from(body.to_string())))?;
        let response = self.http.request(request).await.with_context(|| {
            format!(
                "cannot reach the processor at {server} (is it running? `sluice run` serves it on http://127.0.0.1:8088)"
            )
        })?;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let message = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            anyhow::bail!("{message}");
        }
        if !is_query {
            let bytes = body.collect().await.context("reading the answer")?.to_bytes();
            let value: Value = serde_json::from_slice(&bytes).context("the answer is not JSON")?;
            return write_answer(out, &value, output);
        }
        // Delimited: a header object, then one JSON array per line.
        let mut buffer = Vec::new();
        let mut header: Option<Vec<String>> = None;
        let mut rows: Vec<Vec<Value>> = Vec::new();
        let mut widths: Vec<usize> = Vec::new();
        tokio::pin!(stop);
        loop {
            let frame = tokio::select! {
                f = body.frame() => f,
                () = &mut stop => break,
            };
            let Some(frame) = frame else { break };
            let Ok(data) = frame.context("reading rows")?.into_data() else { continue };
            buffer.extend_from_slice(&data);
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line).trim().to_owned();
                if line.is_empty() {
                    continue;
                }
                let value: Value =
                    serde_json::from_str(&line).with_context(|| format!("a line of the answer: {line}"))?;
                match (&header, value) {
                    (None, Value::Object(h)) => {
                        let names: Vec<String> = h
                            .get("columnNames")
                            .and_then(Value::as_array)
                            .map(|a| a.iter().map(|n| n.as_str().unwrap_or_default().to_owned()).collect())
                            .unwrap_or_default();
                        if push {
                            widths = names.iter().map(|n| n.width().max(12)).collect();
                            match output {
                                Output::Table => writeln!(out, "{}\n{}", line_of(&names, &widths), rule(&widths))?,
                                Output::Csv => write_csv(out, &names, &[])?,
                                Output::Json => {}
                            }
                            out.flush()?;
                        }
                        header = Some(names);
                    }
                    (Some(names), Value::Array(cells)) => {
                        if push {
                            match output {
                                Output::Table => {
                                    let texts: Vec<String> = cells.iter().map(cell).collect();
                                    writeln!(out, "{}", line_of(&texts, &widths))?;
                                }
                                Output::Csv => {
                                    let texts: Vec<String> = cells.iter().map(cell).collect();
                                    write_csv(out, &[], &[texts])?;
                                }
                                Output::Json => writeln!(out, "{}", object(names, &cells))?,
                            }
                            out.flush()?;
                        } else {
                            rows.push(cells);
                        }
                    }
                    (_, other) => {
                        // An error object in the stream (a push query that failed).
                        let message = other["message"].as_str().map_or_else(|| other.to_string(), str::to_owned);
                        anyhow::bail!("{message}");
                    }
                }
            }
        }
        if !push {
            let names = header.unwrap_or_default();
            match output {
                Output::Table => {
                    let texts: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(cell).collect()).collect();
                    write_table(out, &names, &texts)?;
                }
                Output::Csv => {
                    let texts: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(cell).collect()).collect();
                    write_csv(out, &names, &texts)?;
                }
                Output::Json => {
                    let objects: Vec<Value> = rows.iter().map(|r| object(&names, r)).collect();
                    writeln!(out, "{}", serde_json::to_string_pretty(&objects)?)?;
                }
            }
        }
        Ok(())
    }
}

/// Run `sql` against the processor at `server`; results go to `out`. Ctrl-C ends a push query.
pub async fn run(server: &str, sql: &str, output: Output, out: &mut impl Write) -> anyhow::Result<()> {
    Client::new(server).execute(sql, output, out, sluice_telemetry::stop_requested()).await
}

/// The interactive session: statements end with `;` (several lines each, several per line),
/// with line editing and a history kept in `history`; Ctrl-C ends a push query (or clears the
/// line being typed), Ctrl-D or `exit` leaves.
pub async fn interactive(server: &str, output: Output, history: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    use rustyline::error::ReadlineError;
    let client = Client::new(server);
    let mut editor = rustyline::DefaultEditor::new().context("starting the line editor")?;
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    println!("sluice query: connected to {server} (statements end with ';', `exit` or Ctrl-D leaves)");
    let mut pending = String::new();
    loop {
        let prompt = if pending.is_empty() { "sluice> " } else { "   ...> " };
        let line = match editor.readline(prompt) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                pending.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e).context("reading a line"),
        };
        if pending.is_empty()
            && matches!(line.trim().to_ascii_lowercase().as_str(), "exit" | "quit" | "exit;" | "quit;")
        {
            break;
        }
        if !pending.is_empty() {
            pending.push('\n');
        }
        pending.push_str(&line);
        let (complete, rest) = split_complete(&pending);
        if complete.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(complete.join(" ").as_str());
        pending = rest;
        for statement in complete {
            let mut out = std::io::stdout();
            let stop = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            if let Err(e) = client.execute(&statement, output, &mut out, stop).await {
                eprintln!("{e:#}");
            }
        }
    }
    if let Some(h) = &history {
        if let Some(dir) = h.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = editor.save_history(h);
    }
    Ok(())
}

/// The statements of `text` that end with a `;` outside quotes and comments, and what follows
/// the last of them.
pub fn split_complete(text: &str) -> (Vec<String>, String) {
    let mut done = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    let mut quote: Option<char> = None;
    while let Some((i, c)) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => {
                // '' inside a string is an escaped quote.
                if chars.peek().is_some_and(|(_, n)| *n == q) {
                    chars.next();
                } else {
                    quote = None;
                }
            }
            (Some(_), _) => {}
            (None, '\'' | '"' | '`') => quote = Some(c),
            (None, '-') if chars.peek().is_some_and(|(_, n)| *n == '-') => {
                // A comment to the end of the line.
                for (_, n) in chars.by_ref() {
                    if n == '\n' {
                        break;
                    }
                }
            }
            (None, ';') => {
                let statement = text[start..=i].trim();
                if statement != ";" {
                    done.push(statement.to_owned());
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    (done, text[start..].trim_start().to_owned())
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn object(names: &[String], cells: &[Value]) -> Value {
    Value::Object(names.iter().cloned().zip(cells.iter().cloned()).collect())
}

fn pad(text: &str, width: usize) -> String {
    format!("{text}{}", " ".repeat(width.saturating_sub(text.width())))
}

fn rule(widths: &[usize]) -> String {
    widths.iter().map(|w| format!("+{}", "-".repeat(w + 2))).collect::<String>() + "+"
}

fn line_of(cells: &[String], widths: &[usize]) -> String {
    widths
        .iter()
        .enumerate()
        .map(|(i, w)| format!("| {} ", pad(cells.get(i).map_or("", String::as_str), *w)))
        .collect::<String>()
        + "|"
}

/// Rows as an aligned table with a header rule, as ksqlDB's CLI prints them, and a count.
/// Widths are display widths: wide characters (CJK, emoji) take two columns.
pub fn write_table(out: &mut impl Write, header: &[String], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.width()).collect();
    for row in rows {
        for (i, c) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.width());
            } else {
                widths.push(c.width());
            }
        }
    }
    let rule = rule(&widths);
    writeln!(out, "{rule}")?;
    writeln!(out, "{}", line_of(header, &widths))?;
    writeln!(out, "{rule}")?;
    for row in rows {
        writeln!(out, "{}", line_of(row, &widths))?;
    }
    writeln!(out, "{rule}")?;
    writeln!(out, "{} row{}", rows.len(), if rows.len() == 1 { "" } else { "s" })
}

fn write_csv(out: &mut impl Write, header: &[String], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut w = csv::WriterBuilder::new().from_writer(Vec::new());
    if !header.is_empty() {
        w.write_record(header)?;
    }
    for row in rows {
        w.write_record(row)?;
    }
    let bytes = w.into_inner().map_err(|e| std::io::Error::other(e.to_string()))?;
    out.write_all(&bytes)
}

/// A `/ksql` answer: `SHOW` lists and `DESCRIBE` as tables (or CSV), anything else as JSON.
fn write_answer(out: &mut impl Write, value: &Value, output: Output) -> anyhow::Result<()> {
    if output == Output::Json {
        writeln!(out, "{}", serde_json::to_string_pretty(value)?)?;
        return Ok(());
    }
    for answer in value.as_array().map(Vec::as_slice).unwrap_or(std::slice::from_ref(value)) {
        match tabulate(answer) {
            Some((title, header, rows)) => {
                if output == Output::Csv {
                    write_csv(out, &header, &rows)?;
                } else {
                    if let Some(title) = title {
                        writeln!(out, "{title}")?;
                    }
                    write_table(out, &header, &rows)?;
                }
            }
            None => writeln!(out, "{}", serde_json::to_string_pretty(answer)?)?,
        }
    }
    Ok(())
}

/// A table to print: its title lines, header and rows.
type Tabulated = (Option<String>, Vec<String>, Vec<Vec<String>>);

/// The order ksqlDB's CLI shows a listing's columns in; other keys follow, by name.
const COLUMN_ORDER: [&str; 10] =
    ["name", "id", "type", "topic", "keyFormat", "valueFormat", "isWindowed", "queryType", "sinks", "state"];

/// An answer as a table: a description's columns, or the first list of objects in it
/// (`streams`, `tables`, `queries`).
fn tabulate(answer: &Value) -> Option<Tabulated> {
    if let Some(d) = answer.get("sourceDescription") {
        let title = format!(
            "Name        : {}\nType        : {}\nKafka topic : {} (key format {}, value format {})",
            d["name"].as_str().unwrap_or_default(),
            d["type"].as_str().unwrap_or_default(),
            d["topic"].as_str().unwrap_or_default(),
            d["keyFormat"].as_str().unwrap_or_default(),
            d["valueFormat"].as_str().unwrap_or_default(),
        );
        let rows = schema_fields(d["schema"].as_str().unwrap_or_default());
        return Some((Some(title), vec!["Field".into(), "Type".into()], rows));
    }
    let object = answer.as_object()?;
    let (_, list) = object.iter().find(|(k, v)| {
        *k != "warnings" && v.as_array().is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_object))
            || v.as_array().is_some_and(Vec::is_empty) && matches!(k.as_str(), "streams" | "tables" | "queries")
    })?;
    let items = list.as_array()?;
    let mut header: Vec<String> = Vec::new();
    for item in items {
        for k in item.as_object().into_iter().flat_map(|o| o.keys()) {
            if !header.contains(k) {
                header.push(k.clone());
            }
        }
    }
    let rank = |k: &String| COLUMN_ORDER.iter().position(|c| c == k).unwrap_or(COLUMN_ORDER.len());
    header.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
    let rows = items
        .iter()
        .map(|item| {
            header
                .iter()
                .map(|k| match &item[k] {
                    Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(", "),
                    v => cell(v),
                })
                .collect()
        })
        .collect();
    Some((None, header, rows))
}

/// "`SYMBOL` STRING KEY, `N` BIGINT" as (field, type) rows.
fn schema_fields(schema: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut current = String::new();
    for c in schema.chars().chain(std::iter::once(',')) {
        match c {
            '<' | '(' => depth += 1,
            '>' | ')' => depth -= 1,
            ',' if depth == 0 => {
                let column = std::mem::take(&mut current);
                let column = column.trim();
                if column.is_empty() {
                    continue;
                }
                let (name, kind) = match column.strip_prefix('`').and_then(|r| r.split_once('`')) {
                    Some((name, kind)) => (name.to_owned(), kind.trim().to_owned()),
                    None => column
                        .split_once(' ')
                        .map_or((column.to_owned(), String::new()), |(n, k)| (n.to_owned(), k.trim().to_owned())),
                };
                out.push(vec![name, kind]);
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_is_aligned_with_a_count() {
        let mut out = Vec::new();
        let header = vec!["SYMBOL".to_string(), "N".to_string()];
        let rows = vec![vec!["ZVV".to_string(), "12".to_string()], vec!["ZXZZT".to_string(), "3".to_string()]];
        write_table(&mut out, &header, &rows).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "+--------+----+\n| SYMBOL | N  |\n+--------+----+\n| ZVV    | 12 |\n| ZXZZT  | 3  |\n+--------+----+\n2 rows\n"
        );
    }

    #[test]
    fn wide_characters_take_two_columns() {
        let mut out = Vec::new();
        let rows = vec![vec!["東京".to_string()], vec!["abcd".to_string()]];
        write_table(&mut out, &["CITY".to_string()], &rows).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("| 東京 |\n| abcd |\n"), "{text}");
    }

    #[test]
    fn statements_end_with_semicolons_outside_quotes_and_comments() {
        let (done, rest) = split_complete("SELECT ';' FROM T; -- a;comment\nSHOW TABLES;\nSELECT * FROM");
        assert_eq!(done, ["SELECT ';' FROM T;", "-- a;comment\nSHOW TABLES;"]);
        assert_eq!(rest, "SELECT * FROM");
        let (done, rest) = split_complete("SELECT 'it''s;' AS X\nFROM T");
        assert!(done.is_empty());
        assert_eq!(rest, "SELECT 'it''s;' AS X\nFROM T");
        assert_eq!(split_complete("  ;  ").0, Vec::<String>::new());
    }

    #[test]
    fn show_and_describe_answers_become_tables() {
        let shown = json!([{"@type": "tables", "statementText": "SHOW TABLES;", "tables": [
            {"type": "TABLE", "name": "USERS", "topic": "users", "keyFormat": "KAFKA", "valueFormat": "JSON", "isWindowed": false}
        ]}]);
        let mut out = Vec::new();
        write_answer(&mut out, &shown, Output::Table).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("| name  | type  | topic | keyFormat | valueFormat | isWindowed |"), "{text}");
        assert!(text.contains("| USERS | TABLE | users | KAFKA     | JSON        | false      |"), "{text}");
        let described = json!([{"@type": "sourceDescription", "sourceDescription": {
            "name": "T", "type": "TABLE", "topic": "t", "keyFormat": "KAFKA", "valueFormat": "JSON",
            "schema": "`SYMBOL` STRING KEY, `M` MAP<STRING, INTEGER>, `N` BIGINT"}}]);
        let mut out = Vec::new();
        write_answer(&mut out, &described, Output::Table).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("Name        : T\nType        : TABLE\n"), "{text}");
        assert!(text.contains("| M      | MAP<STRING, INTEGER> |"), "{text}");
        let mut out = Vec::new();
        write_answer(&mut out, &shown, Output::Csv).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "name,type,topic,keyFormat,valueFormat,isWindowed\nUSERS,TABLE,users,KAFKA,JSON,false\n"
        );
    }

    #[test]
    fn csv_quotes_what_needs_it() {
        let mut out = Vec::new();
        write_csv(&mut out, &["A".into(), "B".into()], &[vec!["x,y".into(), "say \"hi\"".into()]]).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "A,B\n\"x,y\",\"say \"\"hi\"\"\"\n");
    }
}
