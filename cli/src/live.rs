//! The live view of `sluice run` on a terminal: what each query reads, writes and keeps, what
//! each function does, the latest rows of a table, and the latest log entries. A pure model fed
//! by observations ([`Model::observe`], [`Model::log`], [`Model::rows`]) and drawn by [`draw`];
//! `run.rs` does the IO (metrics, pull queries, the children's logs, the keys).

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::{Duration, Instant},
};

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Paragraph, Row, Table, Wrap},
};

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric's name (with its `_total` suffix, as exposed).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// The samples of a Prometheus text exposition (`name{label="value",...} number`); comments
/// and lines that do not parse are skipped.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some((s, v)) => (s.trim(), v),
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else { continue };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}').unwrap_or(rest))),
            None => (series, BTreeMap::new()),
        };
        out.push(Sample { name: name.to_owned(), labels, value });
    }
    out
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').trim().to_owned(), value);
        rest = &after[end..];
    }
    labels
}

/// What the view knows of a persistent query, from the SQL.
#[derive(Debug, Clone, PartialEq)]
pub struct QuerySpec {
    /// Its id (`CTAS_COMPLETED_PER_MINUTE_1`).
    pub id: String,
    /// The name of what it writes.
    pub sink: String,
    /// The topic it writes.
    pub sink_topic: String,
    /// The topics it reads.
    pub inputs: Vec<String>,
}

/// A query's line in the view.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryLine {
    /// Records read per second (its inputs').
    pub in_rate: f64,
    /// Records written per second.
    pub out_rate: f64,
    /// Bytes of its state stores.
    pub state_bytes: Option<f64>,
}

/// A function's line in the view.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FunctionLine {
    /// Invocations per second.
    pub invocations_rate: f64,
    /// Failed invocations so far.
    pub errors: f64,
    /// Records dead-lettered so far.
    pub dead_letters: f64,
    /// Records behind, over its partitions.
    pub lag: Option<f64>,
    /// Invocations running now.
    pub in_flight: f64,
    /// How many may run at once (this machine: one runner).
    pub concurrency: i64,
    /// Exits of its local process so far.
    pub process_exits: f64,
    /// Whether its runner answered the last scrape.
    pub up: bool,
}

/// A data generator of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct Generator {
    /// The quickstart's name.
    pub quickstart: String,
    /// Its topic.
    pub topic: String,
    /// Records produced.
    pub produced: u64,
}

/// The rows of the table on show.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rows {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows, as text, newest window first.
    pub rows: Vec<Vec<String>>,
    /// Why there are none (the query failed), if so.
    pub error: Option<String>,
}

/// A log entry.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// `HH:MM:SS`.
    pub time: String,
    /// `INFO`, `WARN`, `ERROR`, or the processing log's `RECORD`.
    pub level: String,
    /// Which process (or `processing log`).
    pub source: String,
    /// The text.
    pub text: String,
}

/// Everything the view shows.
#[derive(Debug, Clone)]
pub struct Model {
    /// The Pipeline's name.
    pub pipeline: String,
    /// The Kafka it runs on, as shown.
    pub kafka: String,
    /// The guarantees, as shown (`exactly-once`).
    pub guarantees: String,
    /// Where the state is kept.
    pub state: String,
    /// When the run started.
    pub started: Instant,
    /// The persistent queries, and their lines.
    pub queries: Vec<(QuerySpec, QueryLine)>,
    /// The functions (name, concurrency), and their lines.
    pub functions: Vec<(String, FunctionLine)>,
    /// The tables a pull query can read.
    pub tables: Vec<String>,
    /// The table on show, by index into `tables`.
    pub selected: usize,
    /// Its rows.
    pub rows: Rows,
    /// The latest log entries, oldest first.
    pub entries: VecDeque<LogEntry>,
    /// The data generators.
    pub generators: Vec<Generator>,
    /// Whether they are paused.
    pub paused: bool,
    /// Records per second of each generator.
    pub rate: u64,
    /// Counters at the previous scrape, for rates.
    last: HashMap<String, (f64, Instant)>,
}

/// How many log entries are kept.
const ENTRIES: usize = 200;

impl Model {
    /// A model for a Pipeline with these queries, functions (name, concurrency) and tables.
    pub fn new(pipeline: &str, queries: Vec<QuerySpec>, functions: Vec<(String, i64)>, tables: Vec<String>) -> Model {
        Model {
            pipeline: pipeline.to_owned(),
            kafka: String::new(),
            guarantees: String::new(),
            state: String::new(),
            started: Instant::now(),
            queries: queries.into_iter().map(|q| (q, QueryLine::default())).collect(),
            functions: functions
                .into_iter()
                .map(|(name, concurrency)| (name, FunctionLine { concurrency, ..FunctionLine::default() }))
                .collect(),
            // The last table of the SQL first: in a Pipeline it is usually the result.
            selected: tables.len().saturating_sub(1),
            tables,
            rows: Rows::default(),
            entries: VecDeque::new(),
            generators: Vec::new(),
            paused: false,
            rate: 0,
            last: HashMap::new(),
        }
    }

    /// The table on show.
    pub fn table(&self) -> Option<&str> {
        self.tables.get(self.selected).map(String::as_str)
    }

    /// Show the next (`+1`) or previous (`-1`) table.
    pub fn switch_table(&mut self, step: isize) {
        if self.tables.is_empty() {
            return;
        }
        let n = self.tables.len() as isize;
        self.selected = (self.selected as isize + step).rem_euclid(n) as usize;
        self.rows = Rows::default();
    }

    /// The per-second rate of counter `key` now at `value`, from the last observation of it.
    fn rate(&mut self, key: String, value: f64, now: Instant) -> f64 {
        let rate = match self.last.get(&key) {
            Some((before, at)) if now > *at && value >= *before => (value - before) / (now - *at).as_secs_f64(),
            _ => 0.0,
        };
        self.last.insert(key, (value, now));
        rate
    }

    /// A scrape of the processor's metrics (`None`: it did not answer) and of each function's
    /// runner, at `now`.
    pub fn observe(&mut self, processor: Option<&[Sample]>, runners: &[(String, Option<Vec<Sample>>)], now: Instant) {
        if let Some(samples) = processor {
            let by_topic = |name: &str| -> HashMap<&str, f64> {
                samples
                    .iter()
                    .filter(|s| s.name == name)
                    .filter_map(|s| s.labels.get("topic").map(|t| (t.as_str(), s.value)))
                    .collect()
            };
            let ins = by_topic("sluice_processor_topic_records_in_total");
            let outs = by_topic("sluice_processor_topic_records_out_total");
            let stores: Vec<(&str, f64)> = samples
                .iter()
                .filter(|s| s.name == "sluice_processor_store_bytes")
                .filter_map(|s| s.labels.get("store").map(|n| (n.as_str(), s.value)))
                .collect();
            for i in 0..self.queries.len() {
                let (spec, _) = &self.queries[i];
                let read: f64 = spec.inputs.iter().filter_map(|t| ins.get(t.as_str())).fold(0.0, |a, v| a + v);
                let written = outs.get(spec.sink_topic.as_str()).copied().unwrap_or(0.0);
                // A query's stores are named after it; a table's pull-query view after the table.
                let prefix = format!("{}-", spec.id);
                let view = format!("view-{}", spec.sink);
                let state: Vec<f64> =
                    stores.iter().filter(|(n, _)| n.starts_with(&prefix) || *n == view).map(|(_, b)| *b).collect();
                let (id, has_state) = (spec.id.clone(), !state.is_empty());
                let in_rate = self.rate(format!("in/{id}"), read, now);
                let out_rate = self.rate(format!("out/{id}"), written, now);
                let line = &mut self.queries[i].1;
                line.in_rate = in_rate;
                line.out_rate = out_rate;
                line.state_bytes = has_state.then(|| state.iter().fold(0.0, |a, v| a + v));
            }
        }
        for (name, samples) in runners {
            let Some(i) = self.functions.iter().position(|(n, _)| n == name) else { continue };
            let Some(samples) = samples else {
                self.functions[i].1.up = false;
                continue;
            };
            let sum = |metric: &str, filter: &dyn Fn(&Sample) -> bool| -> f64 {
                // (fold from +0: an empty f64 sum is -0, shown as "-0")
                samples.iter().filter(|s| s.name == metric && filter(s)).fold(0.0, |a, s| a + s.value)
            };
            let all = |_: &Sample| true;
            let invocations = sum("sluice_function_runner_invocations_total", &all);
            let failed = sum("sluice_function_runner_invocations_total", &|s: &Sample| {
                s.labels.get("outcome").is_some_and(|o| o != "ok" && o != "partial" && o != "interrupted")
            });
            let has_lag = samples.iter().any(|s| s.name == "sluice_function_runner_consumer_lag_records");
            let rate = self.rate(format!("invocations/{name}"), invocations, now);
            let line = &mut self.functions[i].1;
            line.up = true;
            line.invocations_rate = rate;
            line.errors = failed;
            line.dead_letters = sum("sluice_function_runner_dead_lettered_records_total", &all);
            line.lag = has_lag.then(|| sum("sluice_function_runner_consumer_lag_records", &all));
            line.in_flight = sum("sluice_function_runner_invocations_in_flight", &all);
            line.process_exits = sum("sluice_function_runner_function_process_exits_total", &all);
        }
    }

    /// Add a log entry.
    pub fn log(&mut self, entry: LogEntry) {
        if self.entries.len() == ENTRIES {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
    }

    /// The rows of a pull query on the table on show: the newest windows first.
    pub fn rows(&mut self, columns: Vec<String>, mut rows: Vec<Vec<serde_json::Value>>) {
        if let Some(w) = columns.iter().position(|c| c == "WINDOWSTART") {
            rows.sort_by(|a, b| {
                let t = |r: &Vec<serde_json::Value>| r.get(w).and_then(serde_json::Value::as_i64).unwrap_or(0);
                t(b).cmp(&t(a))
            });
        }
        let text = rows
            .iter()
            .map(|r| {
                r.iter()
                    .enumerate()
                    .map(|(i, v)| match (columns.get(i).map(String::as_str), v) {
                        (Some("WINDOWSTART" | "WINDOWEND"), serde_json::Value::Number(n)) => {
                            n.as_i64().map_or_else(|| n.to_string(), clock)
                        }
                        (_, serde_json::Value::String(s)) => s.clone(),
                        (_, serde_json::Value::Null) => "null".to_owned(),
                        (_, v) => v.to_string(),
                    })
                    .collect()
            })
            .collect();
        self.rows = Rows { columns, rows: text, error: None };
    }

    /// The pull query on the table on show failed.
    pub fn rows_failed(&mut self, error: String) {
        self.rows.error = Some(error);
    }
}

impl Model {
    /// The view as text, for a run without a terminal: one line of rates, then the newest rows
    /// (at most ten) of the table on show.
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = self
            .queries
            .iter()
            .map(|(q, l)| format!("{} {:.1}/s in, {:.1}/s out", q.id, l.in_rate, l.out_rate))
            .collect();
        parts.extend(self.functions.iter().map(|(name, f)| {
            format!(
                "function {name} {:.1} invocations/s, {:.0} errors, lag {}",
                f.invocations_rate,
                f.errors,
                f.lag.map_or_else(|| "-".to_owned(), |l| format!("{l:.0}"))
            )
        }));
        parts.extend(self.generators.iter().map(|g| format!("{} produced {}", g.topic, g.produced)));
        let mut out = format!("sluice run: {}\n", parts.join("; "));
        if let Some(table) = self.table() {
            if let Some(e) = &self.rows.error {
                out.push_str(&format!("sluice run: {table}: {e}\n"));
            } else if !self.rows.columns.is_empty() {
                out.push_str(&format!("sluice run: {table}, newest first:\n"));
                let rows: Vec<Vec<String>> = self.rows.rows.iter().take(10).cloned().collect();
                let mut text = Vec::new();
                let _ = crate::query::write_table(&mut text, &self.rows.columns, &rows);
                out.push_str(&String::from_utf8_lossy(&text));
            }
        }
        out
    }
}

/// `HH:MM:SS` (UTC) of epoch milliseconds.
pub fn clock(ms: i64) -> String {
    let s = ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{v:.0} {}", UNITS[u]) } else { format!("{v:.1} {}", UNITS[u]) }
}

fn elapsed(d: Duration) -> String {
    let s = d.as_secs();
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// Draw the whole view.
pub fn draw(frame: &mut Frame, m: &Model, now: Instant) {
    let area = frame.area();
    let queries_height = (m.queries.len() as u16 + 3).min(area.height / 4).max(3);
    let functions_height = if m.functions.is_empty() { 0 } else { (m.functions.len() as u16 + 3).max(3) };
    let [header, queries, functions, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(queries_height),
        Constraint::Length(functions_height),
        Constraint::Min(6),
        Constraint::Length(1),
    ])
    .areas(area);
    let [table, log] = Layout::vertical([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(body);

    let title = Line::from(vec![
        Span::styled(format!(" sluice run: {} ", m.pipeline), Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!("· {} · {} · up {} ", m.kafka, m.guarantees, elapsed(now - m.started))),
    ]);
    frame.render_widget(Paragraph::new(title).style(Style::new().bg(Color::Blue).fg(Color::White)), header);
    draw_queries(frame, m, queries);
    if !m.functions.is_empty() {
        draw_functions(frame, m, functions);
    }
    draw_rows(frame, m, table);
    draw_log(frame, m, log);

    let generators = if m.generators.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = m.generators.iter().map(|g| format!("{} {}", g.topic, g.produced)).collect();
        format!(" · data {} {} ({}/s each)", if m.paused { "PAUSED" } else { "producing" }, list.join(", "), m.rate)
    };
    let keys = format!(
        " q quit · ←/→ table{} · state in {}{generators}",
        if m.generators.is_empty() { "" } else { " · p pause data" },
        m.state
    );
    frame.render_widget(Paragraph::new(keys).style(Style::new().add_modifier(Modifier::REVERSED)), footer);
}

fn header_row(names: &[&str]) -> Row<'static> {
    Row::new(names.iter().map(|n| Cell::from((*n).to_owned()))).style(Style::new().add_modifier(Modifier::BOLD))
}

fn draw_queries(frame: &mut Frame, m: &Model, area: Rect) {
    let rows = m.queries.iter().map(|(q, l)| {
        Row::new(vec![
            Cell::from(q.id.clone()),
            Cell::from(format!("{:.1}", l.in_rate)),
            Cell::from(format!("{:.1}", l.out_rate)),
            Cell::from(l.state_bytes.map_or_else(|| "-".to_owned(), bytes)),
            Cell::from(format!("{} → {}", q.inputs.join(", "), q.sink_topic)),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Min(24),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(10),
            Constraint::Fill(2),
        ],
    )
    .header(header_row(&["query", "in/s", "out/s", "state", "topics"]))
    .block(Block::new().borders(Borders::TOP).title(" queries "));
    frame.render_widget(table, area);
}

fn draw_functions(frame: &mut Frame, m: &Model, area: Rect) {
    let rows = m.functions.iter().map(|(name, f)| {
        let style = if !f.up || f.process_exits > 0.0 { Style::new().fg(Color::Yellow) } else { Style::new() };
        Row::new(vec![
            Cell::from(name.clone()),
            Cell::from(format!("{:.1}", f.invocations_rate)),
            Cell::from(format!("{:.0}", f.errors)),
            Cell::from(format!("{:.0}", f.dead_letters)),
            Cell::from(f.lag.map_or_else(|| "-".to_owned(), |l| format!("{l:.0}"))),
            Cell::from(format!("{:.0}/{}", f.in_flight, f.concurrency)),
            Cell::from(if f.up { format!("{:.0}", f.process_exits) } else { "not answering".to_owned() }),
        ])
        .style(style)
    });
    let table = Table::new(
        rows,
        [
            Constraint::Min(16),
            Constraint::Length(15),
            Constraint::Length(8),
            Constraint::Length(13),
            Constraint::Length(8),
            Constraint::Length(12),
            Constraint::Fill(1),
        ],
    )
    .header(header_row(&["function", "invocations/s", "errors", "dead letters", "lag", "running", "process exits"]))
    .block(Block::new().borders(Borders::TOP).title(" functions "));
    frame.render_widget(table, area);
}

fn draw_rows(frame: &mut Frame, m: &Model, area: Rect) {
    let title = match m.table() {
        Some(t) => format!(" {t} ({} of {}, newest first) ", m.selected + 1, m.tables.len()),
        None => " no table to show ".to_owned(),
    };
    let block = Block::new().borders(Borders::TOP).title(title);
    if let Some(e) = &m.rows.error {
        frame.render_widget(Paragraph::new(e.clone()).wrap(Wrap { trim: true }).block(block), area);
        return;
    }
    if m.rows.columns.is_empty() {
        frame.render_widget(Paragraph::new("waiting for rows…").block(block), area);
        return;
    }
    let widths: Vec<Constraint> = m
        .rows
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let widest = m.rows.rows.iter().filter_map(|r| r.get(i)).map(|v| v.chars().count()).max().unwrap_or(0);
            Constraint::Length(widest.max(c.chars().count()) as u16 + 1)
        })
        .collect();
    let rows = m.rows.rows.iter().map(|r| Row::new(r.iter().map(|v| Cell::from(v.clone()))));
    let names: Vec<&str> = m.rows.columns.iter().map(String::as_str).collect();
    frame.render_widget(Table::new(rows, widths).header(header_row(&names)).block(block), area);
}

fn draw_log(frame: &mut Frame, m: &Model, area: Rect) {
    let height = area.height.saturating_sub(1) as usize;
    let lines: Vec<Line> = m
        .entries
        .iter()
        .rev()
        .take(height)
        .rev()
        .map(|e| {
            let color = match e.level.as_str() {
                "ERROR" => Color::Red,
                "WARN" | "RECORD" => Color::Yellow,
                _ => Color::Reset,
            };
            Line::from(vec![
                Span::raw(format!("{} ", e.time)),
                Span::styled(format!("{:<6}", e.level), Style::new().fg(color)),
                Span::styled(format!("{}: ", e.source), Style::new().add_modifier(Modifier::DIM)),
                Span::raw(e.text.clone()),
            ])
        })
        .collect();
    frame.render_widget(Paragraph::new(lines).block(Block::new().borders(Borders::TOP).title(" log ")), area);
}

#[cfg(test)]
mod tests {
    use ratatui::{Terminal, backend::TestBackend};

    use super::*;

    const PROCESSOR: &str = r#"# HELP sluice_processor_topic_records_in Records read, per source topic.
# TYPE sluice_processor_topic_records_in counter
sluice_processor_topic_records_in_total{pipeline="default.trades",topic="stocktrade"} 100
sluice_processor_topic_records_in_total{pipeline="default.trades",topic="trade-settlements"} 40
sluice_processor_topic_records_out_total{pipeline="default.trades",topic="user_trades"} 100
sluice_processor_topic_records_out_total{pipeline="default.trades",topic="COMPLETED_PER_MINUTE"} 30
sluice_processor_store_bytes{pipeline="default.trades",store="CTAS_COMPLETED_PER_MINUTE_1-agg"} 2048
sluice_processor_store_bytes{pipeline="default.trades",store="view-COMPLETED_PER_MINUTE"} 1024
# EOF
"#;

    fn model() -> Model {
        Model::new(
            "trades",
            vec![
                QuerySpec {
                    id: "CSAS_USER_TRADES_0".into(),
                    sink: "USER_TRADES".into(),
                    sink_topic: "user_trades".into(),
                    inputs: vec!["stocktrade".into(), "users".into()],
                },
                QuerySpec {
                    id: "CTAS_COMPLETED_PER_MINUTE_1".into(),
                    sink: "COMPLETED_PER_MINUTE".into(),
                    sink_topic: "COMPLETED_PER_MINUTE".into(),
                    inputs: vec!["trade-settlements".into()],
                },
            ],
            vec![("settle".into(), 1)],
            vec!["USERS".into(), "COMPLETED_PER_MINUTE".into()],
        )
    }

    #[test]
    fn metrics_parse_with_labels_and_escapes() {
        let s = parse_metrics("a_total{x=\"1\",y=\"a\\\"b,c\"} 3\n# c\nb 2.5\nbad line\n");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "a_total");
        assert_eq!(s[0].labels["y"], "a\"b,c");
        assert_eq!(s[0].labels["x"], "1");
        assert_eq!(s[1].value, 2.5);
    }

    #[test]
    fn rates_and_state_come_from_two_scrapes() {
        let mut m = model();
        let t0 = Instant::now();
        let first = parse_metrics(PROCESSOR);
        m.observe(Some(&first), &[], t0);
        assert_eq!(m.queries[0].1.in_rate, 0.0, "no rate from one scrape");
        let later = parse_metrics(&PROCESSOR.replace("} 100", "} 120").replace("} 40", "} 50"));
        m.observe(Some(&later), &[], t0 + Duration::from_secs(2));
        assert_eq!(m.queries[0].1.in_rate, 10.0);
        assert_eq!(m.queries[0].1.out_rate, 10.0);
        assert_eq!(m.queries[1].1.in_rate, 5.0);
        assert_eq!(m.queries[1].1.state_bytes, Some(3072.0), "its stores and its table's view");
        assert_eq!(m.queries[0].1.state_bytes, None);
    }

    #[test]
    fn functions_count_failures_lag_and_running_invocations() {
        let mut m = model();
        let text = r#"sluice_function_runner_invocations_total{outcome="ok"} 10
sluice_function_runner_invocations_total{outcome="timeout"} 2
sluice_function_runner_dead_lettered_records_total 3
sluice_function_runner_consumer_lag_records{partition="0"} 4
sluice_function_runner_consumer_lag_records{partition="1"} 5
sluice_function_runner_invocations_in_flight 1
sluice_function_runner_function_process_exits_total 1
"#;
        m.observe(None, &[("settle".into(), Some(parse_metrics(text)))], Instant::now());
        let f = &m.functions[0].1;
        assert!(f.up);
        assert_eq!((f.errors, f.dead_letters, f.lag, f.in_flight, f.process_exits), (2.0, 3.0, Some(9.0), 1.0, 1.0));
        m.observe(None, &[("settle".into(), Some(Vec::new()))], Instant::now());
        assert!(m.functions[0].1.errors.is_sign_positive(), "no errors is 0, not -0");
        m.observe(None, &[("settle".into(), None)], Instant::now());
        assert!(!m.functions[0].1.up);
    }

    #[test]
    fn rows_show_the_newest_window_first_with_clock_times() {
        let mut m = model();
        let columns = vec!["SYMBOL".into(), "WINDOWSTART".into(), "NUM_COMPLETED".into()];
        let rows = vec![
            vec![serde_json::json!("ZVV"), serde_json::json!(60_000), serde_json::json!(3)],
            vec![serde_json::json!("ZBZX"), serde_json::json!(120_000), serde_json::json!(5)],
        ];
        m.rows(columns, rows);
        assert_eq!(m.rows.rows[0], ["ZBZX", "00:02:00", "5"]);
        assert_eq!(m.rows.rows[1], ["ZVV", "00:01:00", "3"]);
    }

    #[test]
    fn the_summary_has_the_rates_and_the_newest_rows() {
        let mut m = model();
        m.rows(
            vec!["SYMBOL".into(), "WINDOWSTART".into(), "NUM_COMPLETED".into()],
            vec![vec![serde_json::json!("ZVV"), serde_json::json!(60_000), serde_json::json!(3)]],
        );
        let text = m.summary();
        assert!(text.starts_with("sluice run: CSAS_USER_TRADES_0 0.0/s in, 0.0/s out; "), "{text}");
        assert!(text.contains("function settle 0.0 invocations/s, 0 errors, lag -"), "{text}");
        assert!(text.contains("COMPLETED_PER_MINUTE, newest first:\n+--------+"), "{text}");
        assert!(text.contains("| ZVV    | 00:01:00    | 3             |"), "{text}");
    }

    #[test]
    fn tables_switch_around_starting_with_the_last() {
        let mut m = model();
        assert_eq!(m.table(), Some("COMPLETED_PER_MINUTE"));
        m.switch_table(1);
        assert_eq!(m.table(), Some("USERS"));
        m.switch_table(-1);
        assert_eq!(m.table(), Some("COMPLETED_PER_MINUTE"));
    }

    #[test]
    fn the_view_draws_every_pane() {
        let mut m = model();
        m.kafka = "Kafka 127.0.0.1:9092".into();
        m.guarantees = "exactly-once".into();
        m.state = ".sluice/trades".into();
        m.generators = vec![Generator { quickstart: "stocktrade".into(), topic: "stocktrade".into(), produced: 42 }];
        m.rate = 10;
        let t0 = Instant::now();
        m.observe(Some(&parse_metrics(PROCESSOR)), &[], t0);
        m.observe(
            Some(&parse_metrics(&PROCESSOR.replace("} 100", "} 110"))),
            &[("settle".into(), Some(parse_metrics("sluice_function_runner_invocations_total{outcome=\"ok\"} 7")))],
            t0 + Duration::from_secs(1),
        );
        m.rows(
            vec!["SYMBOL".into(), "WINDOWSTART".into(), "NUM_COMPLETED".into()],
            vec![vec![serde_json::json!("ZVV"), serde_json::json!(60_000), serde_json::json!(3)]],
        );
        m.log(LogEntry {
            time: "12:00:00".into(),
            level: "RECORD".into(),
            source: "processing log".into(),
            text: "CSAS_USER_TRADES_0: cannot parse".into(),
        });
        let mut terminal = Terminal::new(TestBackend::new(120, 30)).unwrap();
        terminal.draw(|f| draw(f, &m, t0 + Duration::from_secs(65))).unwrap();
        let screen: String = terminal
            .backend()
            .buffer()
            .content()
            .chunks(120)
            .map(|row| row.iter().map(|c| c.symbol()).collect::<String>() + "\n")
            .collect();
        for expected in [
            "sluice run: trades",
            "exactly-once",
            "up 00:01:05",
            "CSAS_USER_TRADES_0",
            "10.0",
            "3.0 KiB",
            "settle",
            "COMPLETED_PER_MINUTE (2 of 2, newest first)",
            "ZVV",
            "00:01:00",
            "RECORD",
            "cannot parse",
            "p pause data",
            "stocktrade 42",
        ] {
            assert!(screen.contains(expected), "{expected:?} missing from the screen:\n{screen}");
        }
    }
}
