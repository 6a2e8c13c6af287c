//! The `run` subcommand: N concurrent SSE streams, ramped, each timed and checked, and the
//! server process sampled while they run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Client, Method};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout_at};

use crate::check::{Failure, Protocol, StreamCheck};
use crate::proc::{self, Usage};
use crate::stats::Percentiles;

/// Options of `loadgen run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// URL of the stream; `{i}` is the stream's number (from 0), `{id}` the last setup
    /// step's answer.
    #[arg(long)]
    pub url: String,
    /// HTTP method of the stream request.
    #[arg(long, default_value = "POST")]
    pub method: Method,
    /// Body of the stream request, with the same placeholders as the URL. JSON unless a
    /// `content-type` header says otherwise.
    #[arg(long)]
    pub body: Option<String>,
    /// A header for the stream and setup requests, `name: value`; repeatable.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// A file of bearer credentials (API keys or JWTs), one per line, for traffic from
    /// many users: closed-loop worker n (or open-loop stream n) sends line n (modulo the
    /// number of lines) as `authorization: Bearer …` on its streams and setup requests.
    /// Not with an `authorization` `--header`.
    #[arg(long, value_name = "PATH")]
    pub bearer_file: Option<std::path::PathBuf>,
    /// A request made before each stream (not timed), e.g. creating a conversation.
    /// Repeatable: the steps run in order, each one's `{id}` is the answer of the step
    /// before it, and the stream's `{id}` is the last step's (e.g. create a conversation,
    /// start a run in it, then follow that run's events, perhaps on another server).
    #[arg(long = "setup-url", value_name = "URL")]
    pub setup_urls: Vec<String>,
    /// Method of the setup requests.
    #[arg(long, default_value = "POST")]
    pub setup_method: Method,
    /// Body of a setup request (JSON), with the `{i}` and `{id}` placeholders. Repeatable:
    /// the n-th body goes with the n-th `--setup-url`; give one per step or none.
    #[arg(long = "setup-body", value_name = "JSON")]
    pub setup_bodies: Vec<String>,
    /// Top-level field of each setup step's JSON answer that becomes `{id}`.
    #[arg(long, default_value = "id")]
    pub setup_field: String,
    /// Concurrent streams (or, with --duration-ms, closed-loop workers).
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// Time over which the streams (or workers) start, evenly spaced.
    #[arg(long, default_value_t = 0)]
    pub ramp_ms: u64,
    /// Closed loop: each worker starts a new stream when its last one ends, until this long
    /// has passed since the first start.
    #[arg(long)]
    pub duration_ms: Option<u64>,
    /// Close every stream still open this long after the last one started, counting it as
    /// `held` rather than failed: for measuring idle streams without waiting for their end.
    #[arg(long)]
    pub hold_ms: Option<u64>,
    /// Longest a stream may take, setup included; then it fails as `timeout`.
    #[arg(long, default_value_t = 60_000)]
    pub timeout_ms: u64,
    /// Longest a connection may take to open.
    #[arg(long, default_value_t = 10_000)]
    pub connect_timeout_ms: u64,
    /// What the stream is: agentstream events (checked by seq), OpenAI chunks or the AI
    /// SDK's UI message stream.
    #[arg(long, value_enum, default_value = "agentstream")]
    pub protocol: Protocol,
    /// Count only gaps between two consecutive events of this kind; all gaps when absent.
    /// The kind is the SSE type for agentstream (`delta`), the chunk type for the AI SDK
    /// (`text-delta`) and `content` for an OpenAI chunk with text.
    #[arg(long)]
    pub gap_event: Option<String>,
    /// A counted gap longer than this is a stall.
    #[arg(long, default_value_t = 200)]
    pub stall_ms: u64,
    /// Judge the run sustained by percentiles instead of by stalls: a p99 gap between
    /// counted events of at most this many milliseconds (with `--sustained-ttfe-p99-ms`;
    /// the steady-traffic definition of issue 20). Without it, one stall fails the run.
    #[arg(long, requires = "sustained_ttfe_p99_ms")]
    pub sustained_gap_p99_ms: Option<f64>,
    /// With `--sustained-gap-p99-ms`: a p99 time to first event of at most this many
    /// milliseconds.
    #[arg(long, requires = "sustained_gap_p99_ms")]
    pub sustained_ttfe_p99_ms: Option<f64>,
    /// Server process to sample (CPU time and resident memory).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Also count the CPU time of every process of this user ID (a database server's,
    /// such as PostgreSQL's postmaster and backends, exited ones included).
    #[arg(long)]
    pub user_cpu: Option<u32>,
    /// Sampling interval.
    #[arg(long, default_value_t = 100)]
    pub sample_ms: u64,
    /// The server's Prometheus metrics (e.g. `http://127.0.0.1:8000/metrics`), read just
    /// before and just after the run: the growth of `--events-metric` is the events the
    /// server stored, whatever the wire format sent for them.
    #[arg(long)]
    pub metrics_url: Option<String>,
    /// The counter of stored events in `--metrics-url` (all its series summed).
    #[arg(long, default_value = "agentstream_events_committed_total")]
    pub events_metric: String,
    /// Name of the system under test, copied to the summary (e.g. `sqlite-15`).
    #[arg(long, default_value = "")]
    pub target: String,
    /// Name of the scenario, copied to the summary (e.g. `ladder`).
    #[arg(long, default_value = "")]
    pub scenario: String,
}

/// The JSON summary of one `run`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// `--target`.
    pub target: String,
    /// `--scenario`.
    pub scenario: String,
    /// `--protocol`.
    pub protocol: Protocol,
    /// Concurrent streams asked for (closed loop: workers).
    pub streams: usize,
    /// `--ramp-ms`.
    pub ramp_ms: u64,
    /// `--duration-ms` for a closed loop.
    pub duration_ms: Option<u64>,
    /// From the first start to the end of the last stream, seconds.
    pub wall_s: f64,
    /// Most streams open at once (request sent, end not yet reached).
    pub peak_open: u64,
    /// Streams started.
    pub attempted: u64,
    /// Streams that passed every check.
    pub ok: u64,
    /// Streams closed by `--hold-ms` while still healthy.
    pub held: u64,
    /// Failed streams by their first failure.
    pub failed: BTreeMap<String, u64>,
    /// Sum of `failed`.
    pub failed_total: u64,
    /// HTTP statuses of the `status` failures.
    pub status_codes: BTreeMap<u16, u64>,
    /// Events received, every stream counted.
    pub events: u64,
    /// Time from sending the request to the first event, over streams that had one.
    pub ttfe_ms: Percentiles,
    /// `--gap-event`.
    pub gap_event: Option<String>,
    /// Gaps between counted events.
    pub gap_ms: Percentiles,
    /// Longest gap between any two events of a stream.
    pub max_gap_any_ms: f64,
    /// `--stall-ms`.
    pub stall_ms: u64,
    /// Streams with a counted gap longer than `stall_ms`.
    pub stalled_streams: u64,
    /// Time from sending the request to the end of the stream, over streams that passed.
    pub stream_ms: Percentiles,
    /// Streams that passed per second of `wall_s` (runs started and finished per second).
    pub ok_per_s: f64,
    /// Under 0.1% failed streams, none lost or duplicated an event, none stalled.
    pub sustained: bool,
    /// `--pid`.
    pub server_pid: Option<u32>,
    /// The server's CPU and memory over the run.
    pub server: Option<Usage>,
    /// Server CPU microseconds per event received.
    pub server_cpu_us_per_event: Option<f64>,
    /// Events the server stored over the run (with `--metrics-url`): the growth of
    /// `--events-metric`.
    #[serde(default)]
    pub stored_events: Option<u64>,
    /// Server CPU microseconds per stored event.
    #[serde(default)]
    pub server_cpu_us_per_stored_event: Option<f64>,
    /// The load generator's own CPU and memory over the run.
    pub loadgen: Usage,
    /// CPU seconds of the processes of `--user-cpu` over the run.
    #[serde(default)]
    pub user_cpu_s: Option<f64>,
    /// The command line of this run.
    pub command: Vec<String>,
}

/// A URL or body with `{i}` and `{id}` placeholders.
#[derive(Debug, Clone)]
pub struct Template(String);

impl Template {
    /// The template text as given.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The text with `{i}` replaced by `index` and `{id}` by `id` (when given).
    pub fn render(&self, index: u64, id: Option<&str>) -> String {
        let text = self.0.replace("{i}", &index.to_string());
        match id {
            Some(id) => text.replace("{id}", id),
            None => text,
        }
    }
}

/// What every stream of a run shares.
#[derive(Debug)]
struct Plan {
    client: Client,
    method: Method,
    url: Template,
    body: Option<Template>,
    headers: HeaderMap,
    /// One `authorization` value per worker or stream, from `--bearer-file`.
    bearers: Vec<HeaderValue>,
    /// The setup steps, in order.
    setup: Vec<Setup>,
    timeout: Duration,
    protocol: Protocol,
    gap_event: Option<String>,
    stall_us: u64,
    /// Streams currently open, and the most seen at once.
    open: Gauge,
}

#[derive(Debug)]
struct Setup {
    method: Method,
    url: Template,
    body: Option<Template>,
    field: String,
}

#[derive(Debug, Default)]
struct Gauge {
    current: AtomicU64,
    peak: AtomicU64,
}

/// Counts one stream as open while it lives.
struct Open<'a>(&'a Gauge);

impl Gauge {
    fn enter(&self) -> Open<'_> {
        let now = self.current.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
        Open(self)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What one stream measured.
#[derive(Debug, Default)]
struct Record {
    ttfe_us: Option<u64>,
    /// Counted gaps, microseconds.
    gaps_us: Vec<u64>,
    max_gap_us: u64,
    stalled: bool,
    events: u64,
    stream_us: u64,
    held: bool,
    status: Option<u16>,
    outcome: Option<Failure>,
}

impl Record {
    fn failed(failure: Failure) -> Self {
        Self {
            outcome: Some(failure),
            ..Self::default()
        }
    }
}

/// Runs the streams `args` describe and summarizes them. `command` is recorded as is.
pub async fn run(args: &RunArgs, command: Vec<String>) -> anyhow::Result<Summary> {
    let plan = Arc::new(plan(args)?);
    let stored_before = match &args.metrics_url {
        Some(url) => Some(
            read_counter(&plan.client, url, &args.events_metric)
                .await
                .with_context(|| format!("cannot read {} from {url}", args.events_metric))?,
        ),
        None => None,
    };
    let pid = args.pid.map(|pid| pid.to_string());
    let interval = Duration::from_millis(args.sample_ms.max(1));
    let user_before = args.user_cpu.map(proc::user_cpu_ticks);
    let work = proc::measure("self", interval, drive(args, Arc::clone(&plan)));
    let (measured, server) = match &pid {
        Some(pid) => {
            let (measured, usage) = proc::measure(pid, interval, work)
                .await
                .with_context(|| format!("cannot read /proc/{pid}"))?;
            (measured, Some(usage))
        }
        None => (work.await, None),
    };
    let (driven, loadgen) = measured.context("cannot read /proc/self")?;
    let (records, wall) = driven?;
    let mut stored_events = None;
    if let (Some(url), Some(before)) = (&args.metrics_url, stored_before) {
        match read_counter(&plan.client, url, &args.events_metric).await {
            Ok(after) => stored_events = Some(after.saturating_sub(before)),
            Err(error) => tracing::warn!(%error, url, "cannot read the stored events"),
        }
    }
    let mut summary = summarize(
        args,
        command,
        &records,
        wall,
        plan.open.peak.load(Ordering::Relaxed),
        server,
        loadgen,
    );
    summary.stored_events = stored_events;
    summary.user_cpu_s = args
        .user_cpu
        .zip(user_before)
        .map(|(uid, before)| proc::seconds(proc::user_cpu_ticks(uid).saturating_sub(before)));
    summary.server_cpu_us_per_stored_event = server
        .zip(stored_events.filter(|events| *events > 0))
        .map(|(usage, events)| usage.cpu_s * 1e6 / events as f64);
    Ok(summary)
}

/// The sum of the series of the counter `name` in the Prometheus text at `url`.
async fn read_counter(client: &Client, url: &str, name: &str) -> anyhow::Result<u64> {
    let text = client
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    counter_value(&text, name).with_context(|| format!("no counter {name}"))
}

/// The sum of the series of the counter `name` in Prometheus text, `None` when it has none.
fn counter_value(text: &str, name: &str) -> Option<u64> {
    let mut total = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // `name value` or `name{labels} value`; not a longer name that starts with `name`.
        let value = match rest.as_bytes().first() {
            Some(b' ') => rest,
            Some(b'{') => &rest[rest.rfind('}')? + 1..],
            _ => continue,
        };
        let value: f64 = value.split_ascii_whitespace().next()?.parse().ok()?;
        // Counters of events are whole numbers far below 2^52: the cast is exact.
        *total.get_or_insert(0) += value as u64;
    }
    total
}

fn plan(args: &RunArgs) -> anyhow::Result<Plan> {
    let mut headers = HeaderMap::new();
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .with_context(|| format!("header `{header}` is not `name: value`"))?;
        headers.insert(
            HeaderName::try_from(name.trim())?,
            HeaderValue::try_from(value.trim())?,
        );
    }
    if !args.setup_bodies.is_empty() && args.setup_bodies.len() != args.setup_urls.len() {
        anyhow::bail!(
            "{} --setup-body for {} --setup-url: give one body per setup step, or none",
            args.setup_bodies.len(),
            args.setup_urls.len()
        );
    }
    if !headers.contains_key(CONTENT_TYPE) {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    let bearers = match &args.bearer_file {
        Some(_) if headers.contains_key(AUTHORIZATION) => {
            anyhow::bail!("--bearer-file and an authorization --header: give one of them")
        }
        Some(path) => bearers(path)?,
        None => Vec::new(),
    };
    let client = crate::tls::client_builder()
        .context("cannot set up TLS")?
        .http1_only()
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_millis(args.connect_timeout_ms))
        .build()
        .context("cannot build the HTTP client")?;
    Ok(Plan {
        client,
        method: args.method.clone(),
        url: Template::new(&args.url),
        body: args.body.as_deref().map(Template::new),
        headers,
        bearers,
        setup: args
            .setup_urls
            .iter()
            .enumerate()
            .map(|(n, url)| Setup {
                method: args.setup_method.clone(),
                url: Template::new(url),
                body: args.setup_bodies.get(n).map(Template::new),
                field: args.setup_field.clone(),
            })
            .collect(),
        timeout: Duration::from_millis(args.timeout_ms),
        protocol: args.protocol,
        gap_event: args.gap_event.clone(),
        stall_us: args.stall_ms.saturating_mul(1000),
        open: Gauge::default(),
    })
}

/// The `authorization` values of a `--bearer-file`: one per non-empty line.
fn bearers(path: &std::path::Path) -> anyhow::Result<Vec<HeaderValue>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --bearer-file {}", path.display()))?;
    let bearers = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(|line| HeaderValue::try_from(format!("Bearer {line}")))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| {
            format!(
                "--bearer-file {}: a line is not a header value",
                path.display()
            )
        })?;
    if bearers.is_empty() {
        anyhow::bail!("--bearer-file {} holds no credential", path.display());
    }
    Ok(bearers)
}

/// Starts the streams (open loop) or the workers (closed loop) and collects every record,
/// with the wall time from the first start to the last end.
async fn drive(args: &RunArgs, plan: Arc<Plan>) -> anyhow::Result<(Vec<Record>, Duration)> {
    let count = args.streams.max(1);
    let ramp = Duration::from_millis(args.ramp_ms);
    let start = Instant::now();
    let end = args.duration_ms.map(|ms| start + Duration::from_millis(ms));
    let hold = args
        .hold_ms
        .map(|ms| start + ramp + Duration::from_millis(ms));
    let next_index = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for slot in 0..count {
        let at = start + offset(ramp, slot, count);
        let plan = Arc::clone(&plan);
        let next_index = Arc::clone(&next_index);
        tasks.spawn(async move {
            sleep_until(at).await;
            let mut records = Vec::new();
            loop {
                let index = next_index.fetch_add(1, Ordering::Relaxed);
                records.push(stream(&plan, slot, index, hold).await);
                match end {
                    Some(end) if Instant::now() < end => {}
                    _ => break records,
                }
            }
        });
    }
    let mut records = Vec::with_capacity(count);
    while let Some(joined) = tasks.join_next().await {
        records.extend(joined.context("a stream task panicked")?);
    }
    Ok((records, start.elapsed()))
}

/// When slot `slot` of `count` starts within `ramp`.
fn offset(ramp: Duration, slot: usize, count: usize) -> Duration {
    let slot = u32::try_from(slot).unwrap_or(u32::MAX);
    let count = u32::try_from(count).unwrap_or(u32::MAX).max(1);
    ramp * slot / count
}

/// One stream of worker (or open-loop stream) `slot`: its setup, its request, then every
/// event until the final one (or `hold`).
async fn stream(plan: &Plan, slot: usize, index: u64, hold: Option<Instant>) -> Record {
    let deadline = Instant::now() + plan.timeout;
    let mut headers = plan.headers.clone();
    if let Some(bearer) = plan.bearers.get(slot % plan.bearers.len().max(1)) {
        headers.insert(AUTHORIZATION, bearer.clone());
    }
    let mut id = None;
    for setup in &plan.setup {
        match timeout_at(
            deadline,
            run_setup(plan, &headers, setup, index, id.as_deref()),
        )
        .await
        {
            Ok(Some(answer)) => id = Some(answer),
            Ok(None) | Err(_) => return Record::failed(Failure::Setup),
        }
    }
    let mut request = plan
        .client
        .request(plan.method.clone(), plan.url.render(index, id.as_deref()))
        .headers(headers);
    if let Some(body) = &plan.body {
        request = request.body(body.render(index, id.as_deref()));
    }

    let _open = plan.open.enter();
    let start = Instant::now();
    let response = match timeout_at(deadline, request.send()).await {
        Err(_) => return Record::failed(Failure::Timeout),
        Ok(Err(error)) if error.is_timeout() => return Record::failed(Failure::Timeout),
        Ok(Err(_)) => return Record::failed(Failure::Connect),
        Ok(Ok(response)) => response,
    };
    if !response.status().is_success() {
        return Record {
            status: Some(response.status().as_u16()),
            ..Record::failed(Failure::Status)
        };
    }

    let mut record = Record::default();
    let mut check = StreamCheck::new(plan.protocol);
    let mut events = response.bytes_stream().eventsource();
    // When the previous event arrived, and whether it was of the counted type.
    let mut previous: Option<(Instant, bool)> = None;
    let read_until = hold.map_or(deadline, |hold| hold.min(deadline));
    let transport = loop {
        let event = match timeout_at(read_until, events.next()).await {
            Err(_) if Some(read_until) == hold => {
                record.held = true;
                break None;
            }
            Err(_) => break Some(Failure::Timeout),
            Ok(None) => break None,
            Ok(Some(Err(_))) => break Some(Failure::Read),
            Ok(Some(Ok(event))) => event,
        };
        let now = Instant::now();
        record.events += 1;
        let kind = plan.protocol.kind(&event.event, &event.data);
        let counted = plan
            .gap_event
            .as_deref()
            .is_none_or(|gap_event| kind == gap_event);
        match previous {
            None => record.ttfe_us = Some(micros(now - start)),
            Some((at, previous_counted)) => {
                let gap = micros(now - at);
                record.max_gap_us = record.max_gap_us.max(gap);
                if counted && previous_counted {
                    record.gaps_us.push(gap);
                    record.stalled |= gap > plan.stall_us;
                }
            }
        }
        previous = Some((now, counted));
        if check.event(&kind, &event.id, &event.data) {
            break None;
        }
    };
    record.stream_us = micros(start.elapsed());
    // A lost or duplicated event says more than the broken connection that may follow it.
    record.outcome = match (check.finish(), transport) {
        (Ok(()), _) => None,
        (Err(Failure::MissingDone), None) if record.held => None,
        (Err(Failure::MissingDone), Some(transport)) => Some(transport),
        (Err(failure), _) => Some(failure),
    };
    record
}

/// One setup request, `id` being the previous step's answer; the `field` of its JSON
/// answer, or `None` when anything failed.
async fn run_setup(
    plan: &Plan,
    headers: &HeaderMap,
    setup: &Setup,
    index: u64,
    id: Option<&str>,
) -> Option<String> {
    let mut request = plan
        .client
        .request(setup.method.clone(), setup.url.render(index, id))
        .headers(headers.clone());
    if let Some(body) = &setup.body {
        request = request.body(body.render(index, id));
    }
    let response = request.send().await.ok()?.error_for_status().ok()?;
    let answer: serde_json::Value = response.json().await.ok()?;
    match answer.get(&setup.field)? {
        serde_json::Value::String(text) => Some(text.clone()),
        serde_json::Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

fn summarize(
    args: &RunArgs,
    command: Vec<String>,
    records: &[Record],
    wall: Duration,
    peak_open: u64,
    server: Option<Usage>,
    loadgen: Usage,
) -> Summary {
    let mut failed = BTreeMap::new();
    let mut status_codes = BTreeMap::new();
    let mut ttfe = Vec::with_capacity(records.len());
    let mut gaps = Vec::with_capacity(records.iter().map(|r| r.gaps_us.len()).sum());
    let mut durations = Vec::with_capacity(records.len());
    let (mut events, mut ok, mut held, mut stalled, mut max_gap, mut seq_failures) =
        (0, 0, 0, 0, 0, 0);
    for record in records {
        events += record.events;
        ttfe.extend(record.ttfe_us);
        gaps.extend_from_slice(&record.gaps_us);
        max_gap = max_gap.max(record.max_gap_us);
        stalled += u64::from(record.stalled);
        if let Some(code) = record.status {
            *status_codes.entry(code).or_insert(0) += 1;
        }
        match record.outcome {
            None if record.held => held += 1,
            None => {
                ok += 1;
                durations.push(record.stream_us);
            }
            Some(failure) => {
                seq_failures += u64::from(failure.is_seq());
                *failed.entry(failure.as_str().to_owned()).or_insert(0) += 1;
            }
        }
    }
    let attempted = records.len() as u64;
    let failed_total = attempted - ok - held;
    let wall_s = wall.as_secs_f64();
    let ttfe_ms = Percentiles::from_micros(&mut ttfe);
    let gap_ms = Percentiles::from_micros(&mut gaps);
    // Errors under 0.1% (at 1,000 streams not one may fail) and no event lost or
    // repeated; then no stall, or the percentiles asked for.
    let timely = match (args.sustained_gap_p99_ms, args.sustained_ttfe_p99_ms) {
        (Some(gap), Some(ttfe)) => gap_ms.p99 <= gap && ttfe_ms.p99 <= ttfe,
        _ => stalled == 0,
    };
    Summary {
        target: args.target.clone(),
        scenario: args.scenario.clone(),
        protocol: args.protocol,
        streams: args.streams,
        ramp_ms: args.ramp_ms,
        duration_ms: args.duration_ms,
        wall_s,
        peak_open,
        attempted,
        ok,
        held,
        failed,
        failed_total,
        status_codes,
        events,
        ttfe_ms,
        gap_event: args.gap_event.clone(),
        gap_ms,
        max_gap_any_ms: max_gap as f64 / 1000.0,
        stall_ms: args.stall_ms,
        stalled_streams: stalled,
        stream_ms: Percentiles::from_micros(&mut durations),
        ok_per_s: if wall_s > 0.0 {
            ok as f64 / wall_s
        } else {
            0.0
        },
        sustained: attempted > 0 && failed_total * 1000 < attempted && seq_failures == 0 && timely,
        server_pid: args.pid,
        server,
        server_cpu_us_per_event: server
            .filter(|_| events > 0)
            .map(|usage| usage.cpu_s * 1e6 / events as f64),
        stored_events: None,
        server_cpu_us_per_stored_event: None,
        user_cpu_s: None,
        loadgen,
        command,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_fills_both_placeholders() {
        let template = Template::new("/c/{id}/runs?n={i}&again={i}");
        assert_eq!(template.render(7, Some("abc")), "/c/abc/runs?n=7&again=7");
        assert_eq!(template.render(0, None), "/c/{id}/runs?n=0&again=0");
    }

    #[test]
    fn ramp_spaces_starts_evenly() {
        let ramp = Duration::from_millis(1000);
        assert_eq!(offset(ramp, 0, 4), Duration::ZERO);
        assert_eq!(offset(ramp, 2, 4), Duration::from_millis(500));
        assert_eq!(offset(ramp, 3, 4), Duration::from_millis(750));
        assert_eq!(offset(Duration::ZERO, 3, 4), Duration::ZERO);
    }

    #[test]
    fn counter_sums_its_series_and_skips_longer_names() {
        let text = "# HELP agentstream_events_committed_total Events.\n\
                    # TYPE agentstream_events_committed_total counter\n\
                    agentstream_events_committed_total 1234\n\
                    agentstream_events_committed_total_extra 7\n\
                    agentstream_runs_finished_total{status=\"completed\"} 10\n\
                    agentstream_runs_finished_total{status=\"failed\"} 2\n";
        assert_eq!(
            counter_value(text, "agentstream_events_committed_total"),
            Some(1234)
        );
        assert_eq!(
            counter_value(text, "agentstream_runs_finished_total"),
            Some(12)
        );
        assert_eq!(counter_value(text, "agentstream_missing"), None);
    }

    #[test]
    fn gauge_remembers_the_peak() {
        let gauge = Gauge::default();
        let a = gauge.enter();
        let b = gauge.enter();
        drop(a);
        let _c = gauge.enter();
        drop(b);
        assert_eq!(gauge.current.load(Ordering::Relaxed), 1);
        assert_eq!(gauge.peak.load(Ordering::Relaxed), 2);
    }
}
