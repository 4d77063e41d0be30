//! `sluice query`: a statement against a processor's ksqlDB-compatible API. A `SELECT` goes to
//! `/query-stream` — a pull query's rows are printed as a table once they are all in, a push
//! query's (`EMIT CHANGES`) as they arrive, until its `LIMIT` or Ctrl-C — and anything else
//! (`SHOW`, `DESCRIBE`, `EXPLAIN`, `LIST`) to `/ksql`, whose answer is printed as JSON.

use std::io::Write;

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{Value, json};

type Client = hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// Run `sql` against the processor at `server`; rows go to `out`.
pub async fn run(server: &str, sql: &str, out: &mut impl Write) -> anyhow::Result<()> {
    let statements = sluice_sql::parse_statements(sql).map_err(|e| anyhow::anyhow!("{e}"))?;
    let [(statement, _)] = statements.as_slice() else {
        anyhow::bail!("give one statement (found {})", statements.len());
    };
    let (is_query, push) = match statement {
        sluice_sql::ast::Statement::Query(q) => (true, q.emit.is_some()),
        _ => (false, false),
    };
    let client: Client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let server = server.trim_end_matches('/');
    let (path, body, accept) = if is_query {
        ("/query-stream", json!({"sql": sql, "properties": {}}), "application/vnd.ksqlapi.delimited.v1")
    } else {
        ("/ksql", json!({"ksql": sql, "streamsProperties": {}}), "application/json")
    };
    let uri: hyper::Uri = format!("{server}{path}").parse().with_context(|| format!("--server {server}"))?;
    let request = hyper::Request::post(uri)
        .header("Content-Type", "application/json")
        .header("Accept", accept)
        .body(Full::new(Bytes::from(body.to_string())))?;
    let response = client.request(request).await.with_context(|| {
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
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        return Ok(());
    }
    // Delimited: a header object, then one JSON array per line.
    let mut buffer = Vec::new();
    let mut header: Option<Vec<String>> = None;
    let mut rows: Vec<Vec<String>> = Vec::new();
    let stop = tokio::spawn(sluice_telemetry::stop_requested());
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = wait(&stop) => break,
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
            let value: Value = serde_json::from_str(&line).with_context(|| format!("a line of the answer: {line}"))?;
            match (&header, value) {
                (None, Value::Object(h)) => {
                    let names: Vec<String> = h
                        .get("columnNames")
                        .and_then(Value::as_array)
                        .map(|a| a.iter().map(|n| n.as_str().unwrap_or_default().to_owned()).collect())
                        .unwrap_or_default();
                    if push {
                        writeln!(out, "{}", names.join(" | "))?;
                        out.flush()?;
                    }
                    header = Some(names);
                }
                (_, Value::Array(cells)) => {
                    let row: Vec<String> = cells.iter().map(cell).collect();
                    if push {
                        writeln!(out, "{}", row.join(" | "))?;
                        out.flush()?;
                    } else {
                        rows.push(row);
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
    stop.abort();
    if !push {
        write_table(out, header.as_deref().unwrap_or_default(), &rows)?;
    }
    Ok(())
}

async fn wait(stop: &tokio::task::JoinHandle<()>) {
    while !stop.is_finished() {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Rows as an aligned table with a header rule, as ksqlDB's CLI prints them, and a count.
pub fn write_table(out: &mut impl Write, header: &[String], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, c) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            } else {
                widths.push(c.chars().count());
            }
        }
    }
    let rule: String = widths.iter().map(|w| format!("+{}", "-".repeat(w + 2))).collect::<String>() + "+";
    let line = |cells: &[String]| -> String {
        widths
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let c = cells.get(i).map_or("", String::as_str);
                format!("| {c}{} ", " ".repeat(w - c.chars().count()))
            })
            .collect::<String>()
            + "|"
    };
    writeln!(out, "{rule}")?;
    writeln!(out, "{}", line(header))?;
    writeln!(out, "{rule}")?;
    for row in rows {
        writeln!(out, "{}", line(row))?;
    }
    writeln!(out, "{rule}")?;
    writeln!(out, "{} row{}", rows.len(), if rows.len() == 1 { "" } else { "s" })
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
}
