//! Each kind's calls on a loaded model, and the one host-side sink of a generation.

use crate::{
    load::LoadedModel,
    request::{Embed, Generate},
    Engine, HostError,
};
use abi_stable::std_types::ROption;
use abi_stable::{sabi_trait::TD_Opaque, sabi_types::RMut};
use plugin_api::{
    embed::EmbedResponse,
    text::{
        FinishReason, GenerateOutput, GenerateRequest, GenerateResponse, StreamControl,
        StreamEvent, TokenSink, TokenSink_TO,
    },
    Features, ModelKind, PluginError,
};
use std::sync::Arc;

impl Engine {
    /// Generate text with model `id`. `on_event` receives stream events (when
    /// `req.stream` is set) and can stop the generation.
    pub fn generate(
        &self,
        id: &str,
        req: &Generate,
        on_event: &mut dyn FnMut(&StreamEvent) -> StreamControl,
    ) -> Result<GenerateResponse, HostError> {
        self.generate_on(id, None, req, on_event)
    }

    /// As [`generate`](Self::generate), on the backend `backend` when given.
    pub fn generate_on(
        &self,
        id: &str,
        backend: Option<&str>,
        req: &Generate,
        on_event: &mut dyn FnMut(&StreamEvent) -> StreamControl,
    ) -> Result<GenerateResponse, HostError> {
        let (base, req) = self.route(id, req.clone())?;
        let m = self.load_for_generate(&base, backend, &req)?;
        self.generate_with(&m, &req, &mut ClosureSink(on_event))
    }

    /// Load (once) the model that will serve `req`, checking that its plugin has the
    /// features the request needs, and the adapters it applies. `id` is the model
    /// [`route`](Self::route) gave for the request.
    pub fn load_for_generate(
        &self,
        id: &str,
        backend: Option<&str>,
        req: &Generate,
    ) -> Result<Arc<LoadedModel>, HostError> {
        let needs = req.needs();
        // Vision-language models generate text too (with or without images).
        let kind = match self.entry(id)?.kind {
            ModelKind::VLM => ModelKind::VLM,
            // Images need a vision-language model: say so before any plugin is asked.
            k if needs.contains(Features::MULTI_MODAL_INPUT) => {
                return Err(HostError::WrongKind {
                    id: id.to_owned(),
                    kind: k,
                    wanted: ModelKind::VLM,
                })
            }
            _ => ModelKind::LLM,
        };
        let m = self.load_on(id, kind, needs, backend)?;
        let missing = needs.missing_from(self.features_of(&m));
        if missing != Features::NONE {
            return Err(HostError::NoPlugin {
                id: id.to_owned(),
                reason: format!(
                    "plugin `{}` lacks feature(s) {}",
                    m.plugin,
                    missing.names().join(", ")
                ),
            });
        }
        self.ensure_adapters(&m, req)?;
        Ok(m)
    }

    /// Features of the plugin serving a loaded model.
    pub fn features_of(&self, m: &LoadedModel) -> Features {
        self.plugins
            .get(&m.plugin)
            .map_or(Features::NONE, |p| p.descriptor.features)
    }

    /// Run a generation call on a loaded model with a full sink (stream events, finished
    /// sequences, and requests joining the batch when the plugin has
    /// [`Features::CONTINUOUS_BATCHING`]).
    pub fn generate_with(
        &self,
        m: &LoadedModel,
        req: &Generate,
        sink: &mut dyn GenerateSink,
    ) -> Result<GenerateResponse, HostError> {
        // Each call, and each request joining it, carries the KV-cache budget of now.
        let kv_budget = || self.kv_budget(m);
        let mut sink = AbiSink {
            sink,
            kv_budget: &kv_budget,
        };
        let sink = TokenSink_TO::from_ptr(RMut::new(&mut sink), TD_Opaque);
        let result = m
            .model
            .generate(&req.with_kv_budget(self.kv_budget(m)), sink)
            .into_result();
        self.touch(&m.key);
        result.map_err(|error| HostError::Plugin {
            id: m.entry.id.clone(),
            plugin: m.plugin.clone(),
            error,
        })
    }

    /// The cost of the ABI's two per-request paths, in nanoseconds per call (median of 5
    /// batches of `n` calls): a round trip into the plugin (`Model::info`, which copies
    /// its strings back), and a streamed token callback (a `StreamEvent` through the
    /// `TokenSink` vtable and the host's panic guard, as a plugin delivers each token).
    pub fn abi_overhead_ns(&self, m: &LoadedModel, n: u32) -> (f64, f64) {
        let n = n.max(1);
        let median = |f: &mut dyn FnMut()| {
            let mut v: Vec<f64> = (0..5)
                .map(|_| {
                    let t = std::time::Instant::now();
                    for _ in 0..n {
                        f();
                    }
                    t.elapsed().as_nanos() as f64 / f64::from(n)
                })
                .collect();
            v.sort_by(f64::total_cmp);
            v[2]
        };
        let round_trip = median(&mut || {
            std::hint::black_box(m.model.info());
        });
        let mut count = 0u64;
        let mut on_event = |ev: &StreamEvent| {
            count += u64::from(ev.token);
            StreamControl::Continue
        };
        let mut closure = ClosureSink(&mut on_event);
        let mut abi = AbiSink {
            sink: &mut closure,
            kv_budget: &|| None,
        };
        let mut sink = TokenSink_TO::from_ptr(RMut::new(&mut abi), TD_Opaque);
        let ev = StreamEvent {
            index: 0,
            token: 1,
            text: " token".into(),
            logprob: 0.0,
            finish: FinishReason::NONE,
        };
        let callback = median(&mut || {
            std::hint::black_box(sink.on_event(std::hint::black_box(&ev)));
        });
        (round_trip, callback)
    }

    /// Embed texts with model `id`.
    pub fn embed(&self, id: &str, req: &Embed) -> Result<EmbedResponse, HostError> {
        self.embed_until(id, req, &|| false)
    }

    /// [`embed`](Self::embed) on a provider `backend` names (`mlx`, `ggml`, a plugin
    /// name), as `--backend` asks; `None` is the best probe score.
    pub fn embed_on(
        &self,
        id: &str,
        backend: Option<&str>,
        req: &Embed,
    ) -> Result<EmbedResponse, HostError> {
        let m = self.load_on(id, ModelKind::EMBED, Features::EMBEDDINGS, backend)?;
        self.embed_with(id, &m, req, &|| false)
    }

    /// [`embed`](Self::embed), in plugin calls of at most [`EMBED_CHUNK`] texts and
    /// [`EMBED_CHUNK_BYTES`] bytes of text, stopping
    /// with [`HostError::Cancelled`] before the next call once `cancelled` says so (a
    /// client that left, a request past its time limit): a plugin call cannot be cut
    /// short, so this bounds the work done for nobody to one chunk.
    pub fn embed_until(
        &self,
        id: &str,
        req: &Embed,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<EmbedResponse, HostError> {
        let m = self.load(id, ModelKind::EMBED, Features::EMBEDDINGS)?;
        self.embed_with(id, &m, req, cancelled)
    }

    /// The chunked calls of [`embed_until`](Self::embed_until) on the loaded model `m`.
    fn embed_with(
        &self,
        id: &str,
        m: &LoadedModel,
        req: &Embed,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<EmbedResponse, HostError> {
        let mut out = EmbedResponse::default();
        for chunk in req.chunks(EMBED_CHUNK, EMBED_CHUNK_BYTES) {
            if cancelled() {
                self.touch(&m.key);
                return Err(HostError::Cancelled { id: id.to_owned() });
            }
            let result = m.model.embed(&chunk).into_result();
            self.touch(&m.key);
            let part = result.map_err(|error| HostError::Plugin {
                id: id.to_owned(),
                plugin: m.plugin.clone(),
                error,
            })?;
            out.dim = part.dim;
            out.data.extend_from_slice(&part.data);
            out.prompt_tokens += part.prompt_tokens;
        }
        Ok(out)
    }
}

/// Most texts per plugin call of [`Engine::embed_until`]: enough for a plugin to batch
/// and spread over its workers, few enough that a cancelled request stops soon.
pub const EMBED_CHUNK: usize = 256;
/// Most bytes of text per plugin call of [`Engine::embed_until`] (~8k tokens: a few
/// seconds of a small encoder on two CPU cores; 256 sentences of ~100 characters fit).
pub const EMBED_CHUNK_BYTES: usize = 32 << 10;

/// The host's side of a generation call: what a plugin streams back, and (continuous
/// batching) the requests that may join the running batch. See the ABI's `TokenSink`.
pub trait GenerateSink {
    /// A stream event; [`StreamControl::Stop`] cancels the event's request.
    fn event(&mut self, ev: &StreamEvent) -> StreamControl;
    /// A request to join the running batch, if one waits.
    fn poll_join(&mut self) -> Option<Generate> {
        None
    }
    /// Sequence `index` ended with `output`.
    fn finished(&mut self, _index: u32, _output: &GenerateOutput) {}
    /// The request last returned by `poll_join` was refused.
    fn rejected(&mut self, _error: &PluginError) {}
    /// Sequence `index` reused `tokens` prompt tokens from the provider's prompt cache.
    fn prompt_cached(&mut self, _index: u32, _tokens: u32) {}
}

/// Adapts a Rust closure over stream events to a [`GenerateSink`].
struct ClosureSink<'a>(&'a mut dyn FnMut(&StreamEvent) -> StreamControl);

impl GenerateSink for ClosureSink<'_> {
    fn event(&mut self, ev: &StreamEvent) -> StreamControl {
        (self.0)(ev)
    }
}

/// Adapts a [`GenerateSink`] to the ABI's `TokenSink`, giving each joining request the
/// KV-cache budget of the moment. A panic in the host's callbacks must not unwind into
/// the plugin: it stops the request instead.
struct AbiSink<'a> {
    sink: &'a mut dyn GenerateSink,
    kv_budget: &'a dyn Fn() -> Option<u64>,
}

fn no_unwind<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(fallback)
}

impl TokenSink for AbiSink<'_> {
    fn on_event(&mut self, event: &StreamEvent) -> StreamControl {
        no_unwind(StreamControl::Stop, || self.sink.event(event))
    }
    fn poll_join(&mut self) -> ROption<GenerateRequest> {
        no_unwind(None, || {
            let joined = self.sink.poll_join()?;
            Some(joined.with_kv_budget((self.kv_budget)()))
        })
        .into()
    }
    fn on_finished(&mut self, index: u32, output: &GenerateOutput) {
        no_unwind((), || self.sink.finished(index, output))
    }
    fn on_rejected(&mut self, error: &PluginError) {
        no_unwind((), || self.sink.rejected(error))
    }
    fn on_prompt_cached(&mut self, index: u32, tokens: u32) {
        no_unwind((), || self.sink.prompt_cached(index, tokens))
    }
}
