//! Generation workers: one thread and one bounded queue per model.
//!
//! A worker runs one generation call at a time on its model. When the model's plugin has
//! [`Features::CONTINUOUS_BATCHING`], queued requests join the running call between
//! decode steps (through the sink's `poll_join`), so concurrent clients share decode
//! steps instead of waiting for each other; otherwise requests run one after another.
//! Each request's events go to its own channel; a closed channel (the client went away),
//! an expired deadline or a shutdown stops that request only.

use super::{metrics::Metrics, ApiError};
use engine::{request::Generate, Engine, GenerateSink};
use plugin_api::{
    text::{FinishReason, GenerateOutput, StreamControl, StreamEvent},
    ErrorKind, Features, PluginError,
};
use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Condvar, Mutex, MutexGuard,
    },
    time::Instant,
};
use tokio::sync::mpsc::UnboundedSender;

/// What a worker tells a request's handler.
#[derive(Debug)]
pub enum JobMsg {
    /// A generated token of choice `index`, with the text it made final.
    Token {
        index: u32,
        text: String,
        logprob: f32,
    },
    /// Choice `index` ended; `cached` of its prompt tokens came from the prompt cache.
    Finished {
        index: u32,
        output: GenerateOutput,
        cached: u32,
    },
    /// The request failed (every choice not finished yet).
    Failed(ApiError),
}

/// A generation request waiting for, or running on, a worker.
pub struct Job {
    /// Registry id of the model.
    pub model: String,
    /// The request (always streamed internally, so disconnects are seen at once).
    pub req: Generate,
    /// Where its messages go; dropped by the handler when the client disconnects.
    pub tx: UnboundedSender<JobMsg>,
    /// When it arrived (time to first token counts from here).
    pub arrived: Instant,
    /// When it is cancelled if not finished.
    pub deadline: Instant,
}

/// Shared state of the workers.
pub struct Scheduler {
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    max_queue: usize,
    workers: Mutex<HashMap<String, Arc<Worker>>>,
    /// Set at shutdown: running requests stop at their next token.
    pub stop_all: AtomicBool,
}

struct Worker {
    model: String,
    queue: Mutex<VecDeque<Job>>,
    ready: Condvar,
    /// Requests running in the current call.
    running: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Scheduler {
    /// Workers over `engine`, each queue holding at most `max_queue` waiting requests.
    pub fn new(engine: Arc<Engine>, metrics: Arc<Metrics>, max_queue: usize) -> Arc<Self> {
        Arc::new(Self {
            engine,
            metrics,
            max_queue,
            workers: Mutex::default(),
            stop_all: AtomicBool::new(false),
        })
    }

    /// Queue `job` on its model's worker (started on first use). Refused with 429 when
    /// the queue is full and 503 while shutting down.
    pub fn submit(self: &Arc<Self>, job: Job) -> Result<(), ApiError> {
        if self.stop_all.load(Ordering::Relaxed) {
            self.metrics.rejected("shutting_down");
            return Err(ApiError::unavailable("the server is shutting down"));
        }
        let worker = {
            let mut workers = lock(&self.workers);
            workers
                .entry(job.model.clone())
                .or_insert_with(|| {
                    let w = Arc::new(Worker {
                        model: job.model.clone(),
                        queue: Mutex::default(),
                        ready: Condvar::new(),
                        running: AtomicUsize::new(0),
                    });
                    let (me, w2) = (self.clone(), w.clone());
                    std::thread::Builder::new()
                        .name(format!("gen-{}", job.model))
                        .spawn(move || me.work(&w2))
                        .expect("spawn a worker thread");
                    w
                })
                .clone()
        };
        let mut queue = lock(&worker.queue);
        if queue.len() >= self.max_queue {
            self.metrics.rejected("queue_full");
            return Err(ApiError::queue_full(&worker.model, self.max_queue));
        }
        queue.push_back(job);
        self.metrics.queue(&worker.model, 1.0);
        worker.ready.notify_one();
        Ok(())
    }

    /// Requests waiting or running, over all models.
    pub fn in_flight(&self) -> usize {
        lock(&self.workers)
            .values()
            .map(|w| w.running.load(Ordering::Relaxed) + lock(&w.queue).len())
            .sum()
    }

    /// Take the next live job off `w`'s queue (answering expired ones), without waiting.
    fn next_job(&self, w: &Worker, queue: &mut VecDeque<Job>) -> Option<Job> {
        while let Some(job) = queue.pop_front() {
            self.metrics.queue(&w.model, -1.0);
            if job.tx.is_closed() {
                self.metrics.cancelled(&w.model, "disconnect");
                continue;
            }
            if Instant::now() >= job.deadline {
                self.metrics.cancelled(&w.model, "timeout");
                let _ = job.tx.send(JobMsg::Failed(ApiError::timeout()));
                continue;
            }
            return Some(job);
        }
        None
    }

    fn work(&self, w: &Worker) {
        loop {
            let job = {
                let mut queue = lock(&w.queue);
                loop {
                    if let Some(job) = self.next_job(w, &mut queue) {
                        break job;
                    }
                    queue = w.ready.wait(queue).unwrap_or_else(|p| p.into_inner());
                }
            };
            let was_loaded = self.engine.served_by(&w.model, None).is_some();
            let started = Instant::now();
            let m = match self.engine.load_for_generate(&w.model, None, &job.req) {
                Ok(m) => m,
                Err(e) => {
                    let _ = job.tx.send(JobMsg::Failed(ApiError::from_host(&e)));
                    continue;
                }
            };
            if !was_loaded {
                self.metrics
                    .model_loaded(&w.model, started.elapsed().as_secs_f64());
            }
            let continuous = self
                .engine
                .features_of(&m)
                .contains(Features::CONTINUOUS_BATCHING);
            let req = job.req.clone();
            let mut sink = BatchSink {
                sched: self,
                worker: w,
                model: &m,
                continuous,
                draining: false,
                next: 0,
                active: Vec::new(),
            };
            sink.start(job);
            let result = self.engine.generate_with(&m, &req, &mut sink);
            let error = match result {
                Ok(resp) => {
                    // Plugins report every sequence through `on_finished`; cover any
                    // that did not (an older plugin) from the response.
                    for (i, out) in resp.outputs.iter().enumerate() {
                        sink.finished(i as u32, out);
                    }
                    ApiError::internal("the plugin ended the call before this request finished")
                }
                Err(e) => ApiError::from_host(&e),
            };
            for a in sink.active.drain(..) {
                self.metrics.active(&w.model, -1.0);
                w.running.fetch_sub(1, Ordering::Relaxed);
                let _ = a.job.tx.send(JobMsg::Failed(error.clone()));
            }
        }
    }
}

/// A request in the running call.
struct Active {
    job: Job,
    /// Its first sequence index in the call.
    base: u32,
    /// Its sequences (choices).
    n: u32,
    finished: Vec<bool>,
    /// Prompt tokens each sequence reused from the provider's prompt cache.
    cached: Vec<u32>,
    last_token: Vec<Option<Instant>>,
    first_token_seen: bool,
    /// Why it was stopped early, if it was.
    stopped: Option<&'static str>,
}

/// The worker's sink for one call: routes events to the requests of the batch and
/// feeds it queued requests.
struct BatchSink<'a> {
    sched: &'a Scheduler,
    worker: &'a Worker,
    /// The model the call runs on.
    model: &'a engine::LoadedModel,
    continuous: bool,
    /// A queued request needs an adapter the model has not loaded: no more joins, so the
    /// call ends and the worker loads it (a plugin loads adapters between calls).
    draining: bool,
    next: u32,
    active: Vec<Active>,
}

impl BatchSink<'_> {
    fn start(&mut self, job: Job) {
        let n = job.req.inputs.len() as u32;
        self.active.push(Active {
            base: self.next,
            n,
            finished: vec![false; n as usize],
            cached: vec![0; n as usize],
            last_token: vec![None; n as usize],
            first_token_seen: false,
            stopped: None,
            job,
        });
        self.next += n;
        self.sched.metrics.active(&self.worker.model, 1.0);
        self.worker.running.fetch_add(1, Ordering::Relaxed);
    }

    fn find(&mut self, index: u32) -> Option<usize> {
        self.active
            .iter()
            .position(|a| index >= a.base && index < a.base + a.n)
    }
}

impl GenerateSink for BatchSink<'_> {
    fn event(&mut self, ev: &StreamEvent) -> StreamControl {
        let Some(i) = self.find(ev.index) else {
            return StreamControl::Continue;
        };
        let metrics = &self.sched.metrics;
        let model = &self.worker.model;
        let a = &mut self.active[i];
        if a.stopped.is_none() {
            if self.sched.stop_all.load(Ordering::Relaxed) {
                a.stopped = Some("shutdown");
            } else if Instant::now() >= a.job.deadline {
                a.stopped = Some("timeout");
            }
        }
        if a.stopped.is_some() {
            return StreamControl::Stop;
        }
        if ev.finish == FinishReason::CANCELLED {
            return StreamControl::Continue;
        }
        let local = ev.index - a.base;
        let now = Instant::now();
        if !a.first_token_seen {
            a.first_token_seen = true;
            metrics.ttft(model, now.duration_since(a.job.arrived).as_secs_f64());
        }
        if let Some(prev) = a.last_token[local as usize].replace(now) {
            metrics.token_latency(model, now.duration_since(prev).as_secs_f64());
        }
        let msg = JobMsg::Token {
            index: local,
            text: ev.text.to_string(),
            logprob: ev.logprob,
        };
        if a.job.tx.send(msg).is_err() {
            a.stopped = Some("disconnect");
            return StreamControl::Stop;
        }
        StreamControl::Continue
    }

    fn poll_join(&mut self) -> Option<Generate> {
        if !self.continuous || self.draining || self.sched.stop_all.load(Ordering::Relaxed) {
            return None;
        }
        let job = {
            let mut queue = lock(&self.worker.queue);
            let job = self.sched.next_job(self.worker, &mut queue)?;
            let held = self.model.adapters();
            if job.req.adapters().iter().any(|a| !held.contains_key(&a.id)) {
                queue.push_front(job);
                self.sched.metrics.queue(&self.worker.model, 1.0);
                self.draining = true;
                return None;
            }
            job
        };
        let req = job.req.clone();
        self.start(job);
        Some(req)
    }

    fn finished(&mut self, index: u32, output: &GenerateOutput) {
        let Some(i) = self.find(index) else {
            return;
        };
        let a = &mut self.active[i];
        let local = index - a.base;
        if std::mem::replace(&mut a.finished[local as usize], true) {
            return;
        }
        let metrics = &self.sched.metrics;
        let model = &self.worker.model;
        metrics.tokens(
            model,
            output.prompt_tokens as u64,
            output.tokens.len() as u64,
        );
        let msg = match a.stopped {
            Some("timeout") => JobMsg::Failed(ApiError::timeout()),
            _ => JobMsg::Finished {
                index: local,
                output: output.clone(),
                cached: a.cached[local as usize],
            },
        };
        if !a.finished.iter().all(|f| *f) {
            let _ = a.job.tx.send(msg);
            return;
        }
        // The request's last sequence: book-keep first, so a client reading the metrics
        // right after its answer sees them settled.
        let a = self.active.remove(i);
        if let Some(reason) = a.stopped {
            metrics.cancelled(model, reason);
        }
        metrics.active(model, -1.0);
        self.worker.running.fetch_sub(1, Ordering::Relaxed);
        let _ = a.job.tx.send(msg);
    }

    fn prompt_cached(&mut self, index: u32, tokens: u32) {
        let Some(i) = self.find(index) else {
            return;
        };
        let a = &mut self.active[i];
        a.cached[(index - a.base) as usize] = tokens;
        self.sched.metrics.prompt_cached(&self.worker.model, tokens);
    }

    fn rejected(&mut self, error: &PluginError) {
        let Some(a) = self.active.pop() else {
            return;
        };
        self.next -= a.n;
        self.sched.metrics.active(&self.worker.model, -1.0);
        self.worker.running.fetch_sub(1, Ordering::Relaxed);
        if error.kind == ErrorKind::RESOURCE_EXHAUSTED {
            // No room in the running batch now: first in line for the next opening.
            lock(&self.worker.queue).push_front(a.job);
            self.sched.metrics.queue(&self.worker.model, 1.0);
        } else {
            let e = ApiError::from_plugin(&self.worker.model, error);
            let _ = a.job.tx.send(JobMsg::Failed(e));
        }
    }
}
