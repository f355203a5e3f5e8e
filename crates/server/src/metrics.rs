//! Prometheus metrics of the server, rendered in the text exposition format.

use std::{collections::BTreeMap, fmt::Write, sync::Mutex};

/// Label values, in the order of the family's label names.
type Labels = Vec<String>;

/// Histogram buckets for latencies, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Histogram buckets for model load times, in seconds.
const LOAD_BUCKETS: [f64; 8] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Clone, Default)]
struct Hist {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// A family of series sharing a name and label names.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    labels: &'static [&'static str],
    buckets: &'static [f64],
    values: Mutex<BTreeMap<Labels, f64>>,
    hists: Mutex<BTreeMap<Labels, Hist>>,
}

impl Family {
    const fn new(
        name: &'static str,
        help: &'static str,
        kind: &'static str,
        labels: &'static [&'static str],
    ) -> Self {
        Self {
            name,
            help,
            kind,
            labels,
            buckets: &[],
            values: Mutex::new(BTreeMap::new()),
            hists: Mutex::new(BTreeMap::new()),
        }
    }

    const fn histogram(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        buckets: &'static [f64],
    ) -> Self {
        let mut f = Self::new(name, help, "histogram", labels);
        f.buckets = buckets;
        f
    }

    fn key(labels: &[&str]) -> Labels {
        labels.iter().map(|s| (*s).to_owned()).collect()
    }

    fn add(&self, labels: &[&str], v: f64) {
        *lock(&self.values).entry(Self::key(labels)).or_default() += v;
    }

    fn set(&self, labels: &[&str], v: f64) {
        lock(&self.values).insert(Self::key(labels), v);
    }

    fn observe(&self, labels: &[&str], v: f64) {
        let mut hists = lock(&self.hists);
        let h = hists.entry(Self::key(labels)).or_insert_with(|| Hist {
            counts: vec![0; self.buckets.len()],
            ..Default::default()
        });
        for (i, b) in self.buckets.iter().enumerate() {
            if v <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += v;
        h.count += 1;
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        let fmt_labels = |vals: &Labels, extra: Option<(&str, String)>| {
            let mut parts: Vec<String> = self
                .labels
                .iter()
                .zip(vals)
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            if let Some((k, v)) = extra {
                parts.push(format!("{k}=\"{v}\""));
            }
            if parts.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", parts.join(","))
            }
        };
        if self.kind == "histogram" {
            for (labels, h) in lock(&self.hists).iter() {
                for (b, c) in self.buckets.iter().zip(&h.counts) {
                    let l = fmt_labels(labels, Some(("le", b.to_string())));
                    let _ = writeln!(out, "{}_bucket{l} {c}", self.name);
                }
                let l = fmt_labels(labels, Some(("le", "+Inf".into())));
                let _ = writeln!(out, "{}_bucket{l} {}", self.name, h.count);
                let l = fmt_labels(labels, None);
                let _ = writeln!(out, "{}_sum{l} {}", self.name, h.sum);
                let _ = writeln!(out, "{}_count{l} {}", self.name, h.count);
            }
        } else {
            for (labels, v) in lock(&self.values).iter() {
                let _ = writeln!(out, "{}{} {v}", self.name, fmt_labels(labels, None));
            }
        }
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every metric the server exports.
pub struct Metrics {
    requests: Family,
    queue_depth: Family,
    active: Family,
    prompt_tokens: Family,
    generated_tokens: Family,
    cache_lookups: Family,
    cached_tokens: Family,
    cancelled: Family,
    rejected: Family,
    ttft: Family,
    token_latency: Family,
    load_seconds: Family,
    models_loaded: Family,
    memory: Family,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Empty metrics.
    pub const fn new() -> Self {
        Self {
            requests: Family::new(
                "mlxengine_requests_total",
                "HTTP requests by endpoint, model and status code.",
                "counter",
                &["endpoint", "model", "status"],
            ),
            queue_depth: Family::new(
                "mlxengine_queue_depth",
                "Generation requests waiting for a slot, by model.",
                "gauge",
                &["model"],
            ),
            active: Family::new(
                "mlxengine_active_generations",
                "Generation requests being decoded, by model.",
                "gauge",
                &["model"],
            ),
            prompt_tokens: Family::new(
                "mlxengine_prompt_tokens_total",
                "Prompt tokens processed, by model.",
                "counter",
                &["model"],
            ),
            generated_tokens: Family::new(
                "mlxengine_generated_tokens_total",
                "Tokens generated, by model.",
                "counter",
                &["model"],
            ),
            cache_lookups: Family::new(
                "mlxengine_prompt_cache_lookups_total",
                "Sequences started by a provider with a prompt cache, by model and result (hit: some of the prompt's KV cache reused, miss: none).",
                "counter",
                &["model", "result"],
            ),
            cached_tokens: Family::new(
                "mlxengine_prompt_cache_tokens_total",
                "Prompt tokens whose KV cache was reused instead of computed, by model.",
                "counter",
                &["model"],
            ),
            cancelled: Family::new(
                "mlxengine_cancelled_generations_total",
                "Generations stopped early, by model and reason (disconnect, timeout, shutdown).",
                "counter",
                &["model", "reason"],
            ),
            rejected: Family::new(
                "mlxengine_rejected_requests_total",
                "Requests refused before running, by reason (queue_full, shutting_down).",
                "counter",
                &["reason"],
            ),
            ttft: Family::histogram(
                "mlxengine_time_to_first_token_seconds",
                "Time from a request's arrival to its first generated token, by model.",
                &["model"],
                &LATENCY_BUCKETS,
            ),
            token_latency: Family::histogram(
                "mlxengine_token_latency_seconds",
                "Time between consecutive tokens of a sequence, by model.",
                &["model"],
                &LATENCY_BUCKETS,
            ),
            load_seconds: Family::histogram(
                "mlxengine_model_load_seconds",
                "Model load times, by model.",
                &["model"],
                &LOAD_BUCKETS,
            ),
            models_loaded: Family::new(
                "mlxengine_models_loaded",
                "Models resident in memory.",
                "gauge",
                &[],
            ),
            memory: Family::new(
                "mlxengine_memory_resident_bytes",
                "Resident memory of the server process (plugins and models included).",
                "gauge",
                &[],
            ),
        }
    }

    /// An HTTP request ended with `status`.
    pub fn request(&self, endpoint: &str, model: &str, status: u16) {
        self.requests
            .add(&[endpoint, model, &status.to_string()], 1.0);
    }
    /// Change the queue depth of `model` by `delta`.
    pub fn queue(&self, model: &str, delta: f64) {
        self.queue_depth.add(&[model], delta);
    }
    /// Change the active generations of `model` by `delta`.
    pub fn active(&self, model: &str, delta: f64) {
        self.active.add(&[model], delta);
    }
    /// Tokens in and out.
    pub fn tokens(&self, model: &str, prompt: u64, generated: u64) {
        self.prompt_tokens.add(&[model], prompt as f64);
        self.generated_tokens.add(&[model], generated as f64);
    }
    /// A sequence started with `tokens` prompt tokens from the prompt cache.
    pub fn prompt_cached(&self, model: &str, tokens: u32) {
        let result = if tokens > 0 { "hit" } else { "miss" };
        self.cache_lookups.add(&[model, result], 1.0);
        self.cached_tokens.add(&[model], f64::from(tokens));
    }
    /// A generation stopped early.
    pub fn cancelled(&self, model: &str, reason: &str) {
        self.cancelled.add(&[model, reason], 1.0);
    }
    /// A request refused before running.
    pub fn rejected(&self, reason: &str) {
        self.rejected.add(&[reason], 1.0);
    }
    /// Time to first token.
    pub fn ttft(&self, model: &str, seconds: f64) {
        self.ttft.observe(&[model], seconds);
    }
    /// Time between two tokens of a sequence.
    pub fn token_latency(&self, model: &str, seconds: f64) {
        self.token_latency.observe(&[model], seconds);
    }
    /// A model load.
    pub fn model_loaded(&self, model: &str, seconds: f64) {
        self.load_seconds.observe(&[model], seconds);
    }

    /// The text exposition, with `loaded` models resident now.
    pub fn render(&self, loaded: usize) -> String {
        self.models_loaded.set(&[], loaded as f64);
        self.memory.set(&[], resident_bytes() as f64);
        let mut out = String::new();
        for f in [
            &self.requests,
            &self.queue_depth,
            &self.active,
            &self.prompt_tokens,
            &self.generated_tokens,
            &self.cache_lookups,
            &self.cached_tokens,
            &self.cancelled,
            &self.rejected,
            &self.ttft,
            &self.token_latency,
            &self.load_seconds,
            &self.models_loaded,
            &self.memory,
        ] {
            f.render(&mut out);
        }
        out
    }
}

/// Resident memory of this process (Linux `/proc/self/statm`; 0 elsewhere).
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histograms() {
        let m = Metrics::new();
        m.request("/v1/chat/completions", "m\"1", 200);
        m.request("/v1/chat/completions", "m\"1", 200);
        m.queue("m", 2.0);
        m.queue("m", -1.0);
        m.ttft("m", 0.003);
        let text = m.render(1);
        assert!(text.contains(
            "mlxengine_requests_total{endpoint=\"/v1/chat/completions\",model=\"m\\\"1\",status=\"200\"} 2"
        ));
        assert!(text.contains("mlxengine_queue_depth{model=\"m\"} 1"));
        assert!(text
            .contains("mlxengine_time_to_first_token_seconds_bucket{model=\"m\",le=\"0.0025\"} 0"));
        assert!(text
            .contains("mlxengine_time_to_first_token_seconds_bucket{model=\"m\",le=\"0.005\"} 1"));
        assert!(text.contains("mlxengine_time_to_first_token_seconds_count{model=\"m\"} 1"));
        assert!(text.contains("mlxengine_models_loaded 1"));
    }
}
