//! The IO of `sluice run`'s live view: the terminal (ratatui over crossterm), the keys, the
//! scrapes of the processor's and the runners' `/metrics`, and the pull query on the table on
//! show. What is shown and how is `live.rs`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use serde_json::{Value, json};
use sluice_crds::{Pipeline, pipeline::Delivery};

use crate::{
    datagen::Control,
    live::{self, Generator, LogEntry, Model, QuerySpec},
    run::LocalConfigs,
};

type Client = hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// How often metrics and rows are read.
const SCRAPE_EVERY: Duration = Duration::from_secs(1);

/// The live view of one run.
pub struct View {
    model: Model,
    processor: Option<String>,
    runners: Vec<(String, String)>,
    generators: Vec<(Arc<Control>, String, String)>,
    client: Client,
}

impl View {
    /// The view of `pipeline` running with `configs`; `generators` are the run's data
    /// generators (control, quickstart, topic).
    pub fn new(
        pipeline: &Pipeline,
        configs: &LocalConfigs,
        kafka: String,
        state: &std::path::Path,
        generators: Vec<(Arc<Control>, String, String)>,
        rate: u64,
    ) -> anyhow::Result<View> {
        let mut queries = Vec::new();
        let mut tables = Vec::new();
        if let Some(p) = &pipeline.spec.processor {
            let mut engine = sluice_engine::Engine::default();
            engine.execute_script(&p.sql).map_err(|e| anyhow::anyhow!("spec.processor.sql: {e}"))?;
            let sinks: Vec<&str> = engine.queries.iter().map(|q| q.sink.as_str()).collect();
            // Source tables first, then the tables the queries make, in the SQL's order: the last
            // one (shown first) is usually the Pipeline's result.
            for s in engine.catalog.sources() {
                if s.kind == sluice_sql::ast::SourceKind::Table && !sinks.contains(&s.name.as_str()) {
                    tables.push(s.name.clone());
                }
            }
            for q in &engine.queries {
                let sink = engine.catalog.get(&q.sink);
                if sink.is_some_and(|s| s.kind == sluice_sql::ast::SourceKind::Table) {
                    tables.push(q.sink.clone());
                }
                queries.push(QuerySpec {
                    id: q.id.clone(),
                    sink: q.sink.clone(),
                    sink_topic: sink.map(|s| s.topic.clone()).unwrap_or_default(),
                    inputs: q.inputs.clone(),
                });
            }
        }
        let functions: Vec<(String, i64)> = pipeline
            .spec
            .functions
            .iter()
            .map(|f| {
                let concurrency = match (&f.runtime.lambda, &f.runtime.http) {
                    (Some(l), _) => l.concurrency,
                    (_, Some(h)) => h.max_concurrency,
                    _ => 1,
                };
                (f.name.clone(), i64::from(concurrency))
            })
            .collect();
        let mut model = Model::new(pipeline.metadata.name.as_deref().unwrap_or_default(), queries, functions, tables);
        model.kafka = kafka;
        let mut guarantees = Vec::new();
        if let Some(p) = &configs.processor {
            guarantees.push(if p.exactly_once { "SQL exactly-once" } else { "SQL at-least-once" });
        }
        if !configs.runners.is_empty() {
            let all_once = configs.runners.iter().all(|r| r.function.delivery == Delivery::ExactlyOnce);
            guarantees.push(if all_once { "functions exactly-once" } else { "functions at-least-once" });
        }
        model.guarantees = guarantees.join(", ");
        model.state = state.display().to_string();
        model.rate = rate;
        model.generators = generators
            .iter()
            .map(|(_, q, t)| Generator { quickstart: q.clone(), topic: t.clone(), produced: 0 })
            .collect();
        Ok(View {
            model,
            processor: configs.processor.as_ref().map(|p| format!("http://{}", p.listen)),
            runners: configs
                .runners
                .iter()
                .map(|r| (r.function.name.clone(), format!("http://{}", r.listen)))
                .collect(),
            generators,
            client: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http(),
        })
    }

    /// Show `table` first.
    pub fn show(&mut self, table: &str) -> anyhow::Result<()> {
        let wanted = table.to_uppercase();
        let tables = &self.model.tables;
        let i = tables.iter().position(|t| *t == wanted).ok_or_else(|| {
            anyhow::anyhow!("--table {table}: the Pipeline has no such table (its tables: {})", tables.join(", "))
        })?;
        self.model.selected = i;
        Ok(())
    }

    /// Show the view until `ended` says the run is over (`Some`) or the user quits (`q`):
    /// `Ok(None)` for a clean stop, `Ok(Some(why))` for a failure.
    pub async fn run(
        mut self,
        mut ended: impl FnMut() -> Option<Option<String>>,
        mut logs: tokio::sync::mpsc::UnboundedReceiver<LogEntry>,
    ) -> anyhow::Result<Option<String>> {
        let mut terminal = ratatui::try_init().context("starting the live view (use --plain for log lines)")?;
        // Keys from a thread of their own (crossterm's reads block).
        let done = Arc::new(AtomicBool::new(false));
        let (keys_tx, mut keys) = tokio::sync::mpsc::unbounded_channel();
        let reader = std::thread::spawn({
            let done = done.clone();
            move || {
                while !done.load(Ordering::SeqCst) {
                    if event::poll(Duration::from_millis(100)).unwrap_or(false)
                        && let Ok(Event::Key(k)) = event::read()
                        && k.kind == KeyEventKind::Press
                        && keys_tx.send(k).is_err()
                    {
                        break;
                    }
                }
            }
        });
        let mut next_scrape = Instant::now();
        let outcome = loop {
            if let Some(why) = ended() {
                break Ok(why);
            }
            while let Ok(entry) = logs.try_recv() {
                self.model.log(entry);
            }
            let mut quit = false;
            while let Ok(k) = keys.try_recv() {
                match k.code {
                    KeyCode::Char('q') | KeyCode::Esc => quit = true,
                    KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => quit = true,
                    KeyCode::Right | KeyCode::Tab => self.model.switch_table(1),
                    KeyCode::Left | KeyCode::BackTab => self.model.switch_table(-1),
                    KeyCode::Char('p') if !self.generators.is_empty() => {
                        let paused = !self.model.paused;
                        for (c, _, _) in &self.generators {
                            c.paused.store(paused, Ordering::SeqCst);
                        }
                        self.model.paused = paused;
                    }
                    _ => {}
                }
            }
            if quit {
                break Ok(None);
            }
            if Instant::now() >= next_scrape {
                self.scrape().await;
                next_scrape = Instant::now() + SCRAPE_EVERY;
            }
            for (g, (c, _, _)) in self.model.generators.iter_mut().zip(&self.generators) {
                g.produced = c.produced.load(Ordering::Relaxed);
            }
            if let Err(e) = terminal.draw(|f| live::draw(f, &self.model, Instant::now())) {
                break Err(anyhow::Error::new(e).context("drawing the live view"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        done.store(true, Ordering::SeqCst);
        let _ = reader.join();
        ratatui::restore();
        // What the user should still see once the view is gone: the warnings and errors.
        let warnings: Vec<&LogEntry> =
            self.model.entries.iter().filter(|e| matches!(e.level.as_str(), "WARN" | "ERROR")).collect();
        for e in &warnings[warnings.len().saturating_sub(10)..] {
            eprintln!("{} {} {}: {}", e.time, e.level, e.source, e.text);
        }
        outcome
    }

    /// Without a terminal: until `ended` says the run is over, every `every` one line of
    /// rates and the newest rows of the table on show (the last table of the SQL), among the
    /// children's own log lines.
    pub async fn run_plain(
        mut self,
        mut ended: impl FnMut() -> Option<Option<String>>,
        every: Duration,
    ) -> Option<String> {
        let mut next = Instant::now() + every;
        loop {
            if let Some(why) = ended() {
                return why;
            }
            if Instant::now() >= next {
                self.scrape().await;
                for (g, (c, _, _)) in self.model.generators.iter_mut().zip(&self.generators) {
                    g.produced = c.produced.load(Ordering::Relaxed);
                }
                eprint!("{}", self.model.summary());
                next = Instant::now() + every;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn scrape(&mut self) {
        let now = Instant::now();
        let processor = match &self.processor {
            Some(url) => get(&self.client, &format!("{url}/metrics")).await.map(|t| live::parse_metrics(&t)),
            None => None,
        };
        let mut runners = Vec::new();
        for (name, url) in &self.runners {
            runners.push((
                name.clone(),
                get(&self.client, &format!("{url}/metrics")).await.map(|t| live::parse_metrics(&t)),
            ));
        }
        self.model.observe(processor.as_deref(), &runners, now);
        if let (Some(url), Some(table)) = (&self.processor, self.model.table().map(str::to_owned)) {
            match pull(&self.client, url, &format!("SELECT * FROM {table};")).await {
                Ok((columns, rows)) => self.model.rows(columns, rows),
                Err(e) => self.model.rows_failed(e),
            }
        }
    }
}

/// `GET url`'s body, or `None` (not answering within a second, not 200).
async fn get(client: &Client, url: &str) -> Option<String> {
    let uri: hyper::Uri = url.parse().ok()?;
    let request = hyper::Request::get(uri).body(Full::new(Bytes::new())).ok()?;
    let response = tokio::time::timeout(Duration::from_secs(1), client.request(request)).await.ok()?.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body = tokio::time::timeout(Duration::from_secs(1), response.into_body().collect()).await.ok()?.ok()?;
    Some(String::from_utf8_lossy(&body.to_bytes()).into_owned())
}

/// A pull query through `/query`: its column names and rows, or what went wrong.
async fn pull(client: &Client, server: &str, sql: &str) -> Result<(Vec<String>, Vec<Vec<Value>>), String> {
    let uri: hyper::Uri = format!("{server}/query").parse().map_err(|e| format!("{e}"))?;
    let request = hyper::Request::post(uri)
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(json!({"ksql": sql, "streamsProperties": {}}).to_string())))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(2), client.request(request))
        .await
        .map_err(|_| "the processor did not answer within 2 s".to_owned())?
        .map_err(|e| format!("the processor does not answer yet ({e})"))?;
    let status = response.status();
    let body = tokio::time::timeout(Duration::from_secs(2), response.into_body().collect())
        .await
        .map_err(|_| "the rows did not come within 2 s".to_owned())?
        .map_err(|e| e.to_string())?
        .to_bytes();
    let value: Value = serde_json::from_slice(&body).map_err(|_| String::from_utf8_lossy(&body).into_owned())?;
    if !status.is_success() {
        return Err(value["message"].as_str().map_or_else(|| value.to_string(), str::to_owned));
    }
    // ksqlDB's answer: a header object with the schema, then one object per row.
    let items = value.as_array().cloned().unwrap_or_default();
    let columns = items.first().and_then(|h| h["header"]["schema"].as_str()).map(schema_columns).unwrap_or_default();
    let rows =
        items.iter().filter_map(|i| i.get("row").and_then(|r| r["columns"].as_array()).cloned()).collect::<Vec<_>>();
    Ok((columns, rows))
}

/// Column names of ksqlDB's header schema: "`SYMBOL` STRING KEY, `WINDOWSTART` BIGINT KEY, ...".
fn schema_columns(schema: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut current = String::new();
    for c in schema.chars() {
        match c {
            '<' | '(' => depth += 1,
            '>' | ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    out.push(current);
    out.iter()
        .filter_map(|c| {
            let c = c.trim();
            match c.strip_prefix('`') {
                Some(rest) => rest.split_once('`').map(|(name, _)| name.to_owned()),
                None => c.split_whitespace().next().map(str::to_owned),
            }
        })
        .filter(|c| !c.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_names_come_from_ksqldbs_schema() {
        assert_eq!(
            schema_columns("`SYMBOL` STRING KEY, `WINDOWSTART` BIGINT KEY, `M` MAP<STRING, INTEGER>, `N` BIGINT"),
            ["SYMBOL", "WINDOWSTART", "M", "N"]
        );
        assert_eq!(schema_columns("A STRING, B STRUCT<X INT, Y INT>"), ["A", "B"]);
    }
}
