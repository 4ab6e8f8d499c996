//! Dynamic batching: handlers put jobs on a bounded queue; a model thread takes the first
//! waiting job, gathers more for up to `max_wait` (or until `max_batch` decisions), decodes
//! them together and answers each job on its own channel.
//!
//! Several model threads (`workers`) may share the queue and the one loaded model: each
//! decodes its own batch, so independent requests run in parallel on separate cores (on a
//! CPU, one decode per core beats batching them: see `bench_serve`). A thread holds the
//! queue only while it gathers a batch.
//!
//! The queue is a bounded `sync_channel`: a full queue is an immediate 429 for the handler,
//! never an unbounded pile-up. Jobs whose client gave up (deadline passed, receiver dropped)
//! are answered without decoding, and a completion whose client gives up while it is decoded
//! stops at the next token (`sapllm_jobs_cancelled_total` counts both). The thread ends when
//! every sender is gone (shutdown after the HTTP server drained).

use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::backend::Backend;
use super::metrics::Metrics;
use sapllm_engine::chat::{Cancelled, Completion};
use sapllm_engine::types::{
    ExceptionDecision, ExceptionQuery, RoutingDecision, RoutingQuery, SimilarException,
};

/// A job's answer: per item, a decision or an error message.
pub type Answers<T> = Result<Vec<Result<T, String>>, JobError>;

/// Why a job got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobError {
    /// The deadline passed before the model got to it.
    Expired,
    /// The model failed on the whole batch.
    Model(String),
}

/// Work for the model thread.
pub enum Job {
    Route {
        queries: Vec<RoutingQuery>,
        deadline: Instant,
        reply: oneshot::Sender<Answers<RoutingDecision>>,
    },
    Exception {
        items: Vec<(ExceptionQuery, Vec<SimilarException>)>,
        deadline: Instant,
        reply: oneshot::Sender<Answers<ExceptionDecision>>,
    },
    Complete {
        prompt: String,
        max_tokens: usize,
        temperature: f64,
        schema: Option<serde_json::Value>,
        deadline: Instant,
        /// Decoding stops at the next token once the handler drops the receiver (the client
        /// went away), streamed or not, or the deadline passes.
        reply: oneshot::Sender<Result<Completion, JobError>>,
        /// `stream: true`: the text as it is decoded (deltas concatenating to the completion's
        /// text, which `reply` still gets).
        stream: Option<mpsc::UnboundedSender<String>>,
    },
}

impl Job {
    fn size(&self) -> usize {
        match self {
            Job::Route { queries, .. } => queries.len().max(1),
            Job::Exception { items, .. } => items.len().max(1),
            Job::Complete { .. } => 1,
        }
    }

    fn deadline(&self) -> Instant {
        match self {
            Job::Route { deadline, .. }
            | Job::Exception { deadline, .. }
            | Job::Complete { deadline, .. } => *deadline,
        }
    }

    fn abandoned(&self) -> bool {
        match self {
            Job::Route { reply, .. } => reply.is_closed(),
            Job::Exception { reply, .. } => reply.is_closed(),
            Job::Complete { reply, .. } => reply.is_closed(),
        }
    }

    fn expire(self) {
        match self {
            Job::Route { reply, .. } => drop(reply.send(Err(JobError::Expired))),
            Job::Exception { reply, .. } => drop(reply.send(Err(JobError::Expired))),
            Job::Complete { reply, .. } => drop(reply.send(Err(JobError::Expired))),
        }
    }
}

/// Batching settings.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    pub max_batch: usize,
    pub max_wait: Duration,
    pub max_queue: usize,
    /// Model threads decoding batches in parallel (at least 1).
    pub workers: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig { max_batch: 1, max_wait: Duration::from_millis(5), max_queue: 64, workers: 1 }
    }
}

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// No room: back-pressure (429).
    Full,
    /// The model thread is gone (503).
    Closed,
}

/// The handlers' side of the queue.
#[derive(Clone)]
pub struct Queue {
    tx: SyncSender<Job>,
    metrics: Arc<Metrics>,
}

impl Queue {
    /// Enqueues `job`; `Err` when the queue is full (or the model thread is gone). The job is
    /// dropped then, which closes its reply channel.
    pub fn submit(&self, job: Job) -> Result<(), QueueError> {
        self.metrics.queue_depth.inc();
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.metrics.queue_depth.dec();
                Err(if matches!(e, TrySendError::Full(_)) { QueueError::Full } else { QueueError::Closed })
            }
        }
    }
}

/// Creates the queue; the receiver goes to [`run_worker`].
pub fn queue(cfg: &BatchConfig, metrics: Arc<Metrics>) -> (Queue, Receiver<Job>) {
    let (tx, rx) = sync_channel(cfg.max_queue.max(1));
    (Queue { tx, metrics }, rx)
}

/// A model thread's loop: returns when every `Queue` clone is dropped and the queue is empty.
/// Several threads may run it over the same receiver.
pub fn run_worker(engine: &dyn Backend, rx: &Mutex<Receiver<Job>>, cfg: &BatchConfig, metrics: &Metrics) {
    while let Some(batch) = next_batch(rx, cfg, metrics) {
        // A panic inside the model must not end the thread: the batch's reply channels drop
        // (their handlers answer 503) and the next batch is served.
        let run = std::panic::AssertUnwindSafe(|| process(engine, batch, metrics));
        if std::panic::catch_unwind(run).is_err() {
            tracing::error!("a batch panicked in the model thread; its requests got 503");
        }
    }
}

/// The batching policy, apart from the queue and the clock: a batch opened at `now` takes jobs
/// until it holds `max_batch` decisions or `max_wait` has passed, whichever comes first. A first
/// job larger than `max_batch` is still taken whole (a job is never split).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchState {
    size: usize,
    max_batch: usize,
    until: Instant,
}

impl BatchState {
    /// A batch holding its first job (`size` decisions), opened at `now`.
    pub fn open(size: usize, now: Instant, cfg: &BatchConfig) -> Self {
        BatchState { size, max_batch: cfg.max_batch, until: now + cfg.max_wait }
    }

    /// How long to wait for the next job at `now`; `None` when the batch is complete.
    pub fn wait(&self, now: Instant) -> Option<Duration> {
        (self.size < self.max_batch && now < self.until).then(|| self.until - now)
    }

    /// Takes a job of `size` decisions.
    pub fn add(&mut self, size: usize) {
        self.size += size;
    }

    /// Decisions in the batch.
    pub fn size(&self) -> usize {
        self.size
    }
}

/// The next batch: the first waiting job and those that arrive within `max_wait`, up to
/// `max_batch` decisions. `None` when the queue is closed and empty.
fn next_batch(rx: &Mutex<Receiver<Job>>, cfg: &BatchConfig, metrics: &Metrics) -> Option<Vec<Job>> {
    // A thread that panicked while holding the lock left the receiver intact.
    let rx = rx.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let first = rx.recv().ok()?;
    metrics.queue_depth.dec();
    let mut state = BatchState::open(first.size(), Instant::now(), cfg);
    let mut batch = vec![first];
    while let Some(wait) = state.wait(Instant::now()) {
        match rx.recv_timeout(wait) {
            Ok(j) => {
                metrics.queue_depth.dec();
                state.add(j.size());
                batch.push(j);
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
        }
    }
    Some(batch)
}

fn process(engine: &dyn Backend, batch: Vec<Job>, metrics: &Metrics) {
    // Decisions are decoded together after the batch's completions.
    let mut decisions = Vec::new();
    for job in batch {
        // A job is checked when it would start: completions decoded before it may have taken a
        // while.
        let Some(job) = live(job, metrics) else { continue };
        match job {
            Job::Route { .. } | Job::Exception { .. } => decisions.push(job),
            Job::Complete { prompt, max_tokens, temperature, schema, deadline, reply, stream } => {
                metrics.batch_size.observe(1.0);
                // Streamed or not, a completion is decoded through the sink, which hands the
                // text on (`stream: true`) and stops decoding at the next token once the
                // client went away (the handler dropped the reply's receiver: for a stream,
                // with the response body; otherwise with the handler's future) or ran out of
                // time.
                let mut on_text = |text: &str| {
                    let sent = match &stream {
                        Some(tx) if !text.is_empty() => tx.send(text.to_string()).is_ok(),
                        _ => true,
                    };
                    sent && !reply.is_closed() && Instant::now() < deadline
                };
                let r = engine.complete_streaming(
                    &prompt,
                    max_tokens,
                    temperature,
                    schema.as_ref(),
                    &mut on_text,
                );
                if let Ok(c) = &r {
                    metrics.tokens.with_label_values(&["sampled"]).inc_by(c.completion_tokens as u64);
                }
                let r = r.map_err(|e| {
                    if !e.is::<Cancelled>() {
                        JobError::Model(format!("{e:#}"))
                    } else if Instant::now() >= deadline {
                        metrics.cancelled.with_label_values(&["decoding", "timeout"]).inc();
                        JobError::Expired
                    } else {
                        metrics.cancelled.with_label_values(&["decoding", "client_gone"]).inc();
                        tracing::debug!("a completion stopped: its client went away");
                        JobError::Model(e.to_string())
                    }
                });
                let _ = reply.send(r);
            }
        }
    }
    let mut routes = Vec::new();
    let mut exceptions = Vec::new();
    for job in decisions.into_iter().filter_map(|j| live(j, metrics)) {
        match job {
            Job::Route { queries, reply, .. } => routes.push((queries, reply)),
            Job::Exception { items, reply, .. } => exceptions.push((items, reply)),
            Job::Complete { .. } => unreachable!("completions are not deferred"),
        }
    }
    if !routes.is_empty() {
        let all: Vec<RoutingQuery> = routes.iter().flat_map(|(q, _)| q.iter().cloned()).collect();
        metrics.batch_size.observe(all.len() as f64);
        let result = engine.decide_routing_batch(&all);
        answer(routes, result, |d: &RoutingDecision| {
            metrics.decision(
                "routing",
                d.confidence,
                d.abstained,
                d.stats.sampled_tokens,
                d.stats.forced_tokens,
            )
        });
    }
    if !exceptions.is_empty() {
        let all: Vec<(ExceptionQuery, Vec<SimilarException>)> =
            exceptions.iter().flat_map(|(q, _)| q.iter().cloned()).collect();
        metrics.batch_size.observe(all.len() as f64);
        let result = engine.handle_exception_batch(&all);
        answer(exceptions, result, |d: &ExceptionDecision| {
            metrics.decision(
                "exception",
                d.confidence,
                d.abstained,
                d.stats.sampled_tokens,
                d.stats.forced_tokens,
            )
        });
    }
}

/// `job`, unless its client gave up (went away, or its deadline passed): then it is answered
/// without decoding (`Expired`, which nobody may be waiting for) and counted.
fn live(job: Job, metrics: &Metrics) -> Option<Job> {
    let reason = if job.abandoned() {
        "client_gone"
    } else if job.deadline() <= Instant::now() {
        "timeout"
    } else {
        return Some(job);
    };
    metrics.cancelled.with_label_values(&["queued", reason]).inc();
    job.expire();
    None
}

/// Splits a batch result back onto the jobs it came from.
fn answer<Q, D>(
    jobs: Vec<(Vec<Q>, oneshot::Sender<Answers<D>>)>,
    result: anyhow::Result<Vec<anyhow::Result<D>>>,
    record: impl Fn(&D),
) {
    match result {
        Ok(decisions) => {
            let mut it = decisions.into_iter();
            for (qs, reply) in jobs {
                let mine: Vec<Result<D, String>> = it
                    .by_ref()
                    .take(qs.len())
                    .map(|d| d.inspect(&record).map_err(|e| format!("{e:#}")))
                    .collect();
                let _ = reply.send(Ok(mine));
            }
        }
        Err(e) => {
            let msg = format!("{e:#}");
            tracing::error!(error = %msg, "model failure on a batch");
            for (_, reply) in jobs {
                let _ = reply.send(Err(JobError::Model(msg.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max_batch: usize, wait_ms: u64) -> BatchConfig {
        BatchConfig { max_batch, max_wait: Duration::from_millis(wait_ms), ..BatchConfig::default() }
    }

    #[test]
    fn a_batch_waits_until_full_or_until_max_wait() {
        let t0 = Instant::now();
        let mut b = BatchState::open(1, t0, &cfg(4, 10));
        assert_eq!(b.wait(t0), Some(Duration::from_millis(10)));
        assert_eq!(b.wait(t0 + Duration::from_millis(4)), Some(Duration::from_millis(6)));
        b.add(2);
        assert_eq!(b.size(), 3);
        assert!(b.wait(t0 + Duration::from_millis(4)).is_some(), "3 of 4: still open");
        b.add(1);
        assert_eq!(b.wait(t0 + Duration::from_millis(4)), None, "full");
        let open = BatchState::open(1, t0, &cfg(4, 10));
        assert_eq!(open.wait(t0 + Duration::from_millis(10)), None, "max_wait reached");
    }

    #[test]
    fn max_batch_one_never_waits_and_a_large_first_job_is_taken_whole() {
        let t0 = Instant::now();
        assert_eq!(BatchState::open(1, t0, &cfg(1, 50)).wait(t0), None);
        let big = BatchState::open(9, t0, &cfg(4, 50));
        assert_eq!(big.size(), 9);
        assert_eq!(big.wait(t0), None);
    }
}
