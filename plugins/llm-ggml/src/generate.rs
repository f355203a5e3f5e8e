//! One generation call: prompts tokenized (through the shared chat-template code),
//! sequences started in the shared context's KV cells, chunked prefill, then decode steps
//! sampling every live sequence, with requests joining between steps (continuous
//! batching) and each sequence answered through the sink as it ends.

use crate::adapters::Choice;
use crate::{
    backend, err,
    media::MediaPrompt,
    prefix::{Answer, PromptCache, Sampling, Slots},
    Ctx, GgmlModel, MAX_SEQS, MIN_KV_CELLS, PREFILL_CHUNK,
};
use llama_cpp_2::{
    context::{params::LlamaContextParams, LlamaContext},
    llama_batch::LlamaBatch,
    model::LlamaModel,
    sampling::LlamaSampler,
    token::LlamaToken,
};
use plugin_api::{
    text::{
        FinishReason, GenerateRequest, GenerateResponse, StreamControl, StreamEvent, TextInput,
    },
    ErrorKind, PluginError,
};
use plugin_sdk::Sink;
use std::{collections::VecDeque, num::NonZeroU32, time::Instant};
use textgen::{SeqOutput, Timings, Utf8Pieces};

/// What stands for a prompt's tokens where it has images (never a real id: such a
/// prompt is neither followed nor looked up).
const MEDIA_PLACEHOLDER: LlamaToken = LlamaToken(-1);

/// One sequence of a call: the call's own inputs and those of joined requests.
pub(crate) struct Seq {
    /// Index in events (own inputs first, then joined ones in joining order).
    index: u32,
    /// Request it belongs to (0: the call's own).
    group: usize,
    /// How it samples, as the prompt cache tells answers apart.
    sampling: Sampling,
    /// llama.cpp sequence id.
    slot: i32,
    prompt: Vec<LlamaToken>,
    /// Prompt tokens in the KV cache so far (reused from the prompt cache or decoded).
    fed: usize,
    /// Prompt tokens reused from the prompt cache.
    cached: usize,
    /// Tokens of a recorded answer still to hand out (with their log-probabilities)
    /// before decoding goes on: the prompt cache's answer to this very prompt under
    /// deterministic sampling.
    replay: VecDeque<(u32, f32)>,
    /// Position of the next token.
    pos: i32,
    /// KV cells reserved (prompt + max tokens, capped by the context).
    cells: usize,
    pieces: Utf8Pieces,
    sampler: LlamaSampler,
    /// Index of this sequence's logits in the batch just decoded.
    logits_at: Option<i32>,
    /// A token picked when the sequence was read (a prompt with images is read whole
    /// when it is admitted), handed out at the next step.
    first: Option<(LlamaToken, Option<f32>)>,
    /// Whether its prompt holds images: its KV cells are never kept for the prompt cache
    /// (they are not keyed by its tokens alone), and nothing follows it.
    media: bool,
    out: SeqOutput,
    /// Inputs identical to this one under deterministic (temperature 0) sampling, of
    /// this request or of one that joined: they get this sequence's tokens, not their
    /// own decode. Decoded apart, each would read its KV cache at other cells of the
    /// shared cache, and llama.cpp's sums over cells are not invariant to where the
    /// cells lie, so identical greedy inputs of one batch used to get different answers.
    followers: Vec<Follower>,
}

impl Seq {
    /// The tokens at positions `0..pos` of its KV cells: prompt, then generated tokens
    /// fed back (the last one sampled never is).
    fn kv_tokens(&self) -> Vec<LlamaToken> {
        let n = self.pos as usize;
        // (A sequence that ended mid-replay has cells past its last fed-back token: they
        // are dropped when it retires.)
        let fed_back = n
            .saturating_sub(self.prompt.len())
            .min(self.out.tokens.len().saturating_sub(1));
        let mut t = self.prompt[..n.min(self.prompt.len())].to_vec();
        t.extend(
            self.out.tokens[..fed_back.min(self.out.tokens.len())]
                .iter()
                .map(|&x| LlamaToken(x as i32)),
        );
        t
    }
}

/// How input `row` of `req` samples, as the prompt cache tells answers apart: what
/// [`sampler`] builds from, for greedy and seeded sampling.
fn sampling_of(req: &GenerateRequest, row: usize) -> Sampling {
    use std::hash::{Hash, Hasher};
    let s = &req.sampling;
    let penalties = [
        s.repetition_penalty,
        s.presence_penalty,
        s.frequency_penalty,
    ];
    let mut h = std::collections::hash_map::DefaultHasher::new();
    penalties.map(f32::to_bits).hash(&mut h);
    let resumable = s.temperature <= 0.0;
    if !resumable {
        let Some(seed) = s.seed.into_option() else {
            return Sampling::Other;
        };
        [s.temperature, s.top_p, s.min_p]
            .map(f32::to_bits)
            .hash(&mut h);
        (s.top_k, seed.wrapping_add(row as u64)).hash(&mut h);
    }
    Sampling::Deterministic {
        key: h.finish(),
        logprobs: req.logprobs,
        max_tokens: req.max_tokens as usize,
        resumable,
    }
}

/// Tell the host how much of each new sequence's prompt came from the prompt cache
/// (followers: as their leader).
fn report_cached(on: bool, sink: &mut dyn Sink, seqs: &[Seq]) {
    if !on {
        return;
    }
    for s in seqs {
        sink.prompt_cached(s.index, s.cached as u32);
        for f in &s.followers {
            sink.prompt_cached(f.index, s.cached as u32);
        }
    }
}

/// An input that gets another sequence's tokens: its index in events, its request.
#[derive(Clone, Copy)]
struct Follower {
    index: u32,
    group: usize,
}

/// Whether an input of `b` gets the same tokens as the same prompt in `a`: both sample
/// deterministically (temperature 0) with the same penalties, limits, stops and
/// log-probability reporting.
fn same_answer(a: &GenerateRequest, b: &GenerateRequest) -> bool {
    let (x, y) = (&a.sampling, &b.sampling);
    x.temperature <= 0.0
        && y.temperature <= 0.0
        && x.repetition_penalty == y.repetition_penalty
        && x.presence_penalty == y.presence_penalty
        && x.frequency_penalty == y.frequency_penalty
        && a.max_tokens == b.max_tokens
        && a.stop == b.stop
        && a.logprobs == b.logprobs
        && plugin_sdk::adapters_of(a).ok() == plugin_sdk::adapters_of(b).ok()
}

/// A prompt to read: its tokens (for one with images, as many placeholders as it takes
/// KV cells), the inputs (offsets in the request) that share its answer, and its chunks
/// when it has images.
pub(crate) type Planned = (Vec<LlamaToken>, Vec<usize>, Option<MediaPrompt>);

/// A request's prompts, identical ones merged when its sampling is deterministic (never
/// those with images: their tokens do not tell the images apart).
pub(crate) struct Plan {
    pub(crate) prompts: Vec<Planned>,
    /// Inputs in the request.
    pub(crate) inputs: usize,
}

impl Plan {
    fn new(prompts: Vec<(Vec<LlamaToken>, Option<MediaPrompt>)>, deterministic: bool) -> Self {
        let inputs = prompts.len();
        let mut out: Vec<Planned> = Vec::with_capacity(inputs);
        for (i, (p, media)) in prompts.into_iter().enumerate() {
            let same = out
                .iter_mut()
                .find(|(q, _, m)| deterministic && media.is_none() && m.is_none() && *q == p);
            match same {
                Some((_, same, _)) => same.push(i),
                None => out.push((p, vec![i], media)),
            }
        }
        Self {
            prompts: out,
            inputs,
        }
    }

    /// Sequences to decode.
    pub(crate) fn decoded(&self) -> usize {
        self.prompts.len()
    }

    /// KV cells the decoded sequences reserve: prompt + `max_tokens` each, capped by
    /// the context.
    fn cells(&self, max_tokens: u32, ctx_train: usize) -> usize {
        self.prompts
            .iter()
            .map(|(p, _, _)| (p.len() + max_tokens as usize).min(ctx_train))
            .sum()
    }
}

/// A request served by a call: its own, or one that joined.
pub(crate) struct Group {
    req: GenerateRequest,
    stops: Vec<String>,
    /// The LoRA adapter it applies.
    lora: Choice,
}

/// The sampler chain of input `row` of `req`, for a sequence of at most `len` tokens.
pub(crate) fn sampler(
    req: &GenerateRequest,
    n_vocab: i32,
    row: u64,
    fallback: u64,
    len: usize,
) -> LlamaSampler {
    let s = &req.sampling;
    let mut chain = Vec::new();
    if s.repetition_penalty != 1.0 || s.presence_penalty != 0.0 || s.frequency_penalty != 0.0 {
        // Over the whole sequence, like the MLX provider (prompt included). (llama.cpp
        // reads a window of 0 or less as "penalties off", not "the whole context".)
        chain.push(LlamaSampler::penalties(
            n_vocab,
            len.min(i32::MAX as usize) as i32,
            s.repetition_penalty,
            s.frequency_penalty,
            s.presence_penalty,
        ));
    }
    if s.temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        if s.top_k > 0 {
            chain.push(LlamaSampler::top_k(s.top_k as i32));
        }
        if s.top_p > 0.0 && s.top_p < 1.0 {
            chain.push(LlamaSampler::top_p(s.top_p, 1));
        }
        if s.min_p > 0.0 {
            chain.push(LlamaSampler::min_p(s.min_p, 1));
        }
        chain.push(LlamaSampler::temp(s.temperature));
        let seed = s.seed.into_option().unwrap_or(fallback).wrapping_add(row);
        chain.push(LlamaSampler::dist(seed as u32));
    }
    LlamaSampler::chain_simple(chain)
}

pub(crate) fn log_softmax_at(logits: &[f32], token: usize) -> f32 {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = m + logits
        .iter()
        .map(|x| f64::from(x - m).exp())
        .sum::<f64>()
        .ln() as f32;
    logits.get(token).map_or(0.0, |l| l - lse)
}

/// Peak resident memory of this process (VmHWM), in bytes.
pub(crate) fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmHWM:")
                    .map(|v| v.trim().trim_end_matches("kB").trim().to_owned())
            })
        })
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

impl GgmlModel {
    /// Whether `tok` ends a sequence (end of generation, or one of the entry's extra EOS).
    fn ends(&self, tok: LlamaToken) -> bool {
        self.model.vocab().is_eog(tok) || self.extra_eos.contains(&tok)
    }

    pub(crate) fn prompt_tokens(
        &self,
        model: &LlamaModel,
        input: &TextInput,
        i: usize,
    ) -> Result<Vec<LlamaToken>, PluginError> {
        let bad = |msg: String| err(ErrorKind::INVALID_REQUEST, &self.id, msg);
        let vocab = model.vocab();
        let tokens = if input.messages.is_empty() {
            vocab.tokenize(input.prompt.as_bytes(), self.add_bos, true)
        } else {
            let template = self.template.as_deref().ok_or_else(|| {
                bad("the model has no chat template; send a raw prompt instead".into())
            })?;
            let msgs = textgen::text_messages(&input.messages, self.system_prompt.as_deref(), i)
                .map_err(bad)?;
            let text = textgen::render_chat(template, &msgs, &self.bos, &self.eos).map_err(bad)?;
            vocab.tokenize(text.as_bytes(), false, true)
        };
        if tokens.is_empty() {
            return Err(bad(format!("input #{i}: the prompt has no tokens")));
        }
        Ok(tokens)
    }
}

impl GgmlModel {
    /// Validate and tokenize `req`: its prompts and the KV cells it needs (prompt plus
    /// max tokens per input, capped by the context length).
    pub(crate) fn prepare(&self, req: &GenerateRequest) -> Result<(Plan, usize), PluginError> {
        // The host checked the request where it entered (`engine::request::Generate`);
        // what is left needs this model's facts (its context).
        let ctx_train = self.model.n_ctx_train() as usize;
        let prompts = req
            .inputs
            .iter()
            .enumerate()
            .map(|(i, inp)| match &self.vision {
                Some(v) if inp.messages.iter().any(|m| m.has_media()) => {
                    let template = self.template.as_deref().ok_or_else(|| {
                        err(
                            ErrorKind::INVALID_REQUEST,
                            &self.id,
                            "the model has no chat template to place images with",
                        )
                    })?;
                    let p = v.prompt(
                        &self.id,
                        template,
                        (&self.bos, &self.eos),
                        self.system_prompt.as_deref(),
                        inp,
                    )?;
                    Ok((vec![MEDIA_PLACEHOLDER; p.tokens], Some(p)))
                }
                _ => self.prompt_tokens(&self.model, inp, i).map(|t| (t, None)),
            })
            .collect::<Result<Vec<_>, PluginError>>()?;
        if let Some(msg) =
            textgen::context_overflow(prompts.iter().map(|(p, _)| p.len()), ctx_train)
        {
            return Err(err(ErrorKind::CONTEXT_LENGTH, &self.id, msg));
        }
        let plan = Plan::new(prompts, req.sampling.temperature <= 0.0);
        let need = plan.cells(req.max_tokens, ctx_train);
        Ok((plan, need))
    }

    /// The sequences of `req` (group `group`, indices from `base`), their ids taken from
    /// `slots` with what the prompt cache has of their prompts.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn sequences(
        &self,
        req: &GenerateRequest,
        plan: Plan,
        group: usize,
        base: u32,
        slots: &mut Slots,
        ctx: &mut LlamaContext,
        seed: u64,
        lora: &Choice,
    ) -> Result<Vec<Seq>, PluginError> {
        let ctx_train = self.model.n_ctx_train() as usize;
        let n_vocab = self.model.n_vocab();
        let mut out: Vec<Seq> = Vec::with_capacity(plan.prompts.len());
        for (prompt, same, media) in plan.prompts {
            let i = same[0];
            let len = (prompt.len() + req.max_tokens as usize).min(ctx_train);
            let mut sampler = sampler(req, n_vocab, i as u64, seed, len);
            let sampling = sampling_of(req, i);
            if let (Some(m), Some(v)) = (&media, &self.vision) {
                // Read whole now (mtmd places the images), its first token picked at once.
                sampler.accept_many(m.text.iter());
                let start = slots.take(ctx, &[], sampling, false);
                let pos = match v.eval(&self.id, m, ctx, start.slot, PREFILL_CHUNK) {
                    Ok(pos) => pos,
                    Err(e) => {
                        // Give back the ids this request took.
                        slots.retire(ctx, start.slot, Vec::new(), None, false);
                        for s in out {
                            slots.retire(ctx, s.slot, Vec::new(), None, false);
                        }
                        return Err(e);
                    }
                };
                let tok = sampler.sample(ctx, -1);
                let lp = req
                    .logprobs
                    .then(|| log_softmax_at(ctx.get_logits_ith(-1), tok.0 as usize));
                out.push(Seq {
                    followers: Vec::new(),
                    index: base + i as u32,
                    group,
                    sampling,
                    slot: start.slot,
                    cells: len,
                    fed: prompt.len(),
                    cached: 0,
                    pos,
                    replay: VecDeque::new(),
                    out: SeqOutput::new(prompt.len()),
                    prompt,
                    pieces: Utf8Pieces::default(),
                    sampler,
                    logits_at: None,
                    first: Some((tok, lp)),
                    media: true,
                });
                continue;
            }
            out.push({
                sampler.accept_many(prompt.iter());
                let start = slots.take(ctx, &prompt, sampling, lora.is_none());
                let replay: VecDeque<(u32, f32)> = start.replay.map_or_else(VecDeque::new, |a| {
                    let lp = a.logprobs.iter().copied().chain(std::iter::repeat(0.0));
                    a.tokens.into_iter().zip(lp).collect()
                });
                Seq {
                    followers: same[1..]
                        .iter()
                        .map(|&j| Follower {
                            index: base + j as u32,
                            group,
                        })
                        .collect(),
                    index: base + i as u32,
                    group,
                    sampling,
                    slot: start.slot,
                    cells: len,
                    fed: if replay.is_empty() {
                        start.copied
                    } else {
                        prompt.len()
                    },
                    cached: start.cached,
                    pos: start.copied as i32,
                    replay,
                    out: SeqOutput::new(prompt.len()),
                    prompt,
                    pieces: Utf8Pieces::default(),
                    sampler,
                    logits_at: None,
                    first: None,
                    media: false,
                }
            });
        }
        Ok(out)
    }

    /// The persistent context, (re)created when it has fewer than `cells` KV cells or
    /// `seqs` sequence ids (with room to spare for joining requests, up to `most` cells);
    /// its KV cache cleared but for the prompt cache's entries.
    pub(crate) fn context<'a>(
        &self,
        slot: &'a mut Option<Ctx>,
        cells: usize,
        seqs: usize,
        most: usize,
    ) -> Result<&'a mut Ctx, PluginError> {
        if slot
            .as_ref()
            .is_some_and(|c| c.cells < cells || c.seqs < seqs)
        {
            *slot = None; // free the old KV cache first
        }
        if slot.is_none() {
            let cells = (cells.max(MIN_KV_CELLS).div_ceil(256) * 256).min(most.max(cells));
            let seqs = seqs.max(MAX_SEQS);
            let params = LlamaContextParams::default()
                .with_n_ctx(NonZeroU32::new(cells as u32))
                .with_n_batch((PREFILL_CHUNK + seqs) as u32)
                .with_n_ubatch((PREFILL_CHUNK + seqs) as u32)
                .with_n_seq_max(seqs as u32)
                .with_kv_unified(true);
            let params = self.settings.apply(params);
            let model: &LlamaModel = &self.model;
            // SAFETY: the context borrows the boxed model, which never moves and outlives
            // it: `ctx` is declared before `model` in `GgmlModel`, so it is dropped first.
            let model: &'static LlamaModel = unsafe { &*(model as *const LlamaModel) };
            let ctx = model.new_context(backend()?, params).map_err(|e| {
                err(
                    ErrorKind::RESOURCE_EXHAUSTED,
                    &self.id,
                    format!("llama.cpp context of {cells} cells: {e}"),
                )
            })?;
            *slot = Some(Ctx {
                ctx,
                cells,
                seqs,
                cache: PromptCache::default(),
            });
        }
        let c = slot.as_mut().expect("set above");
        if self.prompt_cache {
            for s in 0..c.seqs as i32 {
                if !c.cache.holds(s) {
                    let _ = c.ctx.clear_kv_cache_seq(Some(s as u32), None, None);
                }
            }
        } else {
            c.cache.clear();
            c.ctx.clear_kv_cache();
        }
        Ok(c)
    }
}

impl GgmlModel {
    /// Serve `req` and the requests that join it, on the persistent context. A context
    /// grown past its working size for this batch is freed when the batch ends (its
    /// memory goes back), whatever the outcome.
    pub(crate) fn run(
        &self,
        req: &GenerateRequest,
        sink: &mut dyn Sink,
    ) -> Result<GenerateResponse, PluginError> {
        let mut guard = self.ctx.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.run_on(&mut guard, req, sink);
        if guard.as_ref().is_some_and(|c| c.cells > MIN_KV_CELLS) {
            *guard = None;
        } else if let (Err(_), Some(c)) = (&result, guard.as_mut()) {
            // A failed decode may leave cells no entry describes: start afresh.
            c.cache.clear();
            c.ctx.clear_kv_cache();
        }
        result
    }

    fn run_on(
        &self,
        slot: &mut Option<Ctx>,
        req: &GenerateRequest,
        sink: &mut dyn Sink,
    ) -> Result<GenerateResponse, PluginError> {
        let started = Instant::now();
        let seed = started.elapsed().as_nanos() as u64 ^ u64::from(std::process::id());
        let ctx_train = self.model.n_ctx_train() as usize;
        let (plan, need) = self.prepare(req)?;
        let lora = self.adapter_choice(req)?;
        let (own, decoded) = (plan.inputs, plan.decoded());
        // The host's budget for this model's KV cache bounds the context to allocate.
        let budget = textgen::KvBudget::of(req.options.as_str(), self.kv_cell_bytes);
        budget
            .check(need, decoded)
            .map_err(|m| err(ErrorKind::RESOURCE_EXHAUSTED, &self.id, m))?;
        let Ctx {
            ctx,
            cells,
            seqs,
            cache,
        } = self.context(slot, need, decoded, budget.max_tokens())?;
        let total_cells = *cells;
        // A call may opt out of the cache (`bench`): nothing looked up, replayed or kept.
        let reuse = self.prompt_cache && textgen::prompt_cache_allowed(req);
        let mut slots = Slots::new(*seqs, cache, reuse);
        slots.cells_free(ctx, total_cells, 0, need);
        let mut live = self.sequences(req, plan, 0, 0, &mut slots, ctx, seed, &lora)?;
        report_cached(reuse, sink, &live);
        let mut groups = vec![Group {
            req: req.clone(),
            stops: textgen::stop_strings(req),
            lora,
        }];
        // The adapter the context applies now (not known yet: a kept context has the last
        // call's).
        let mut applied: Option<Choice> = None;
        let mut next_index = own as u32;
        // The call's own outputs, by input index (followers' copied from their leader).
        let mut outs: Vec<(u32, SeqOutput)> = Vec::with_capacity(own);
        let mut joins_open = true;
        let vocab = self.model.vocab();
        let mut batch = LlamaBatch::new(PREFILL_CHUNK + MAX_SEQS.max(own), 1);
        let prefill_start = Instant::now();
        let mut first_token_at: Option<Instant> = None;

        loop {
            // Requests waiting at the host join while there is room.
            while joins_open && slots.room() > 0 {
                let Some(joined) = sink.poll_join() else {
                    break;
                };
                let group = groups.len();
                let admitted = self
                    .adapter_choice(&joined)
                    .and_then(|lora| self.prepare(&joined).map(|(plan, _)| (plan, lora)));
                let admitted = admitted.and_then(|(mut plan, lora)| {
                    // Prompts a running sequence answers already will follow it (once the
                    // rest is known to fit).
                    let mut follow: Vec<(usize, Vec<usize>)> = Vec::new();
                    plan.prompts.retain(|(prompt, same, media)| {
                        if media.is_some() {
                            return true;
                        }
                        let leader = live.iter().position(|s| {
                            !s.media
                                && s.prompt == *prompt
                                && s.out.running()
                                && same_answer(&groups[s.group].req, &joined)
                                // (A catch-up event cannot carry per-token log-probabilities.)
                                && (!joined.logprobs || s.out.tokens.is_empty())
                        });
                        if let Some(l) = leader {
                            follow.push((l, same.clone()));
                        }
                        leader.is_none()
                    });
                    let need = plan.cells(joined.max_tokens, ctx_train);
                    let reserved = live.iter().map(|s| s.cells).sum();
                    let cells_free = slots.cells_free(ctx, total_cells, reserved, need);
                    if plan.decoded() > slots.room() || need > cells_free {
                        return Err(err(
                            ErrorKind::RESOURCE_EXHAUSTED,
                            &self.id,
                            format!(
                                "no room in the running batch: needs {} sequence(s) and {need} KV cells; {} and {cells_free} free",
                                plan.decoded(),
                                slots.room()
                            ),
                        ));
                    }
                    for (l, same) in follow {
                        let leader = &mut live[l];
                        for j in same {
                            let f = Follower {
                                index: next_index + j as u32,
                                group,
                            };
                            // All of its prompt is the leader's; then what the leader
                            // has streamed so far, in one event.
                            if reuse {
                                sink.prompt_cached(f.index, leader.prompt.len() as u32);
                            }
                            if joined.stream && !leader.out.tokens.is_empty() {
                                let _ = sink.event(&StreamEvent {
                                    index: f.index,
                                    token: leader.out.tokens.last().copied().unwrap_or(0),
                                    text: leader.out.text.emitted().into(),
                                    logprob: leader.out.logprobs.last().copied().unwrap_or(0.0),
                                    finish: FinishReason::NONE,
                                });
                            }
                            leader.followers.push(f);
                        }
                    }
                    let inputs = plan.inputs as u32;
                    let seqs = self.sequences(&joined, plan, group, next_index, &mut slots, ctx, seed, &lora)?;
                    Ok((inputs, seqs, lora))
                });
                match admitted {
                    Ok((inputs, seqs, lora)) => {
                        report_cached(reuse, sink, &seqs);
                        next_index += inputs;
                        live.extend(seqs);
                        groups.push(Group {
                            stops: textgen::stop_strings(&joined),
                            req: joined,
                            lora,
                        });
                    }
                    Err(e) => {
                        // No room: ask again once a sequence retires.
                        joins_open = e.kind != ErrorKind::RESOURCE_EXHAUSTED;
                        sink.rejected(&e);
                    }
                }
            }
            if live.is_empty() {
                break;
            }

            // One decode call per adapter among the live sequences (llama.cpp applies an
            // adapter to a whole call), each: the next token of every generating sequence,
            // then prompt chunks of the sequences still reading their prompt.
            let mut stop_groups: Vec<usize> = Vec::new();
            let mut choices: Vec<Choice> = Vec::new();
            for seq in &live {
                let c = &groups[seq.group].lora;
                if !choices.contains(c) {
                    choices.push(c.clone());
                }
            }
            // The one applied now goes first: no switch when all share it.
            choices.sort_by_key(|c| applied.as_ref() != Some(c));
            for choice in &choices {
                let mine = |s: &Seq| groups[s.group].lora == *choice;
                batch.clear();
                for seq in live.iter_mut().filter(|s| {
                    mine(s) && s.fed == s.prompt.len() && s.replay.is_empty() && s.first.is_none()
                }) {
                    let last = LlamaToken(*seq.out.tokens.last().expect("has a token") as i32);
                    seq.logits_at = Some(batch.n_tokens());
                    batch
                        .add(last, seq.pos, &[seq.slot], true)
                        .map_err(|e| err(ErrorKind::INTERNAL, &self.id, e))?;
                    seq.pos += 1;
                }
                let mut budget = PREFILL_CHUNK;
                for seq in live
                    .iter_mut()
                    .filter(|s| mine(s) && s.fed < s.prompt.len())
                {
                    let take = budget.min(seq.prompt.len() - seq.fed);
                    if take == 0 {
                        break;
                    }
                    for j in seq.fed..seq.fed + take {
                        let end = j + 1 == seq.prompt.len();
                        if end {
                            seq.logits_at = Some(batch.n_tokens());
                        }
                        batch
                            .add(seq.prompt[j], j as i32, &[seq.slot], end)
                            .map_err(|e| err(ErrorKind::INTERNAL, &self.id, e))?;
                    }
                    seq.fed += take;
                    seq.pos = seq.fed as i32;
                    budget -= take;
                }
                if batch.n_tokens() > 0 {
                    self.switch_adapter(ctx, &mut applied, choice)?;
                    ctx.decode(&mut batch)
                        .map_err(|e| err(ErrorKind::INTERNAL, &self.id, format!("decode: {e}")))?;
                }

                // Sample, account and stream each sequence that produced logits.
                for seq in live.iter_mut().filter(|s| mine(s)) {
                    let g = &groups[seq.group];
                    let (tok, logprob) = if let Some(first) = seq.first.take() {
                        first
                    } else if let Some((t, lp)) = seq.replay.pop_front() {
                        // (Penalties count it as a sampled token.)
                        seq.sampler.accept(LlamaToken(t as i32));
                        (LlamaToken(t as i32), g.req.logprobs.then_some(lp))
                    } else if let Some(at) = seq.logits_at.take() {
                        let tok = seq.sampler.sample(ctx, at);
                        let lp = g
                            .req
                            .logprobs
                            .then(|| log_softmax_at(ctx.get_logits_ith(at), tok.0 as usize));
                        (tok, lp)
                    } else {
                        continue;
                    };
                    let eos = self.ends(tok);
                    let last = seq.out.tokens.len() + 1 >= g.req.max_tokens as usize
                        || seq.prompt.len() + seq.out.tokens.len() + 1 >= ctx_train;
                    let mut text = if eos {
                        String::new()
                    } else {
                        seq.pieces.push(&vocab.token_to_piece(tok, false, None))
                    };
                    if eos || last {
                        text.push_str(&seq.pieces.flush());
                    }
                    let ev = seq.out.accept(
                        seq.index as usize,
                        tok.0 as u32,
                        logprob,
                        &text,
                        eos,
                        last,
                        &g.stops,
                    );
                    if g.req.stream && sink.event(&ev) == StreamControl::Stop {
                        stop_groups.push(seq.group);
                    }
                    for f in &seq.followers {
                        if groups[f.group].req.stream
                            && sink.event(&StreamEvent {
                                index: f.index,
                                ..ev.clone()
                            }) == StreamControl::Stop
                        {
                            stop_groups.push(f.group);
                        }
                    }
                }
            }
            if first_token_at.is_none()
                && live
                    .iter()
                    .filter(|s| s.group == 0 || s.followers.iter().any(|f| f.group == 0))
                    .all(|s| !s.out.tokens.is_empty())
            {
                first_token_at = Some(Instant::now());
            }
            // Cancel the requests whose sink said stop. A cancelled sequence that others
            // follow keeps decoding for them: the first of them takes it over.
            for seq in live.iter_mut() {
                let cancelled = |out: &SeqOutput| {
                    let mut c = out.clone();
                    c.finish = FinishReason::CANCELLED;
                    c
                };
                let mut gone: Vec<(u32, usize)> = Vec::new();
                // (A sequence that just ended is not cancelled: its output stands.)
                let running = seq.out.running();
                seq.followers.retain(|f| {
                    let stop = running && stop_groups.contains(&f.group);
                    if stop {
                        gone.push((f.index, f.group));
                    }
                    !stop
                });
                if stop_groups.contains(&seq.group) && seq.out.running() {
                    gone.push((seq.index, seq.group));
                    if seq.followers.is_empty() {
                        seq.out.finish = FinishReason::CANCELLED;
                    } else {
                        let next = seq.followers.remove(0);
                        seq.index = next.index;
                        seq.group = next.group;
                    }
                }
                for (index, group) in gone {
                    let out = cancelled(&seq.out);
                    let _ = sink.event(&StreamEvent {
                        index,
                        token: out.tokens.last().copied().unwrap_or(0),
                        text: "".into(),
                        logprob: 0.0,
                        finish: FinishReason::CANCELLED,
                    });
                    if index != seq.index {
                        sink.finished(index, &out.output());
                        if group == 0 {
                            outs.push((index, out));
                        }
                    }
                }
            }
            // Retire finished sequences: report them, free their slot and KV cells.
            let mut i = 0;
            while i < live.len() {
                if live[i].out.running() {
                    i += 1;
                    continue;
                }
                let seq = live.swap_remove(i);
                let output = seq.out.output();
                sink.finished(seq.index, &output);
                for f in &seq.followers {
                    sink.finished(f.index, &output);
                    if f.group == 0 {
                        outs.push((f.index, seq.out.clone()));
                    }
                }
                let answer = match (seq.sampling, seq.out.tokens.last()) {
                    (Sampling::Deterministic { key, .. }, Some(&last)) => Some(Answer {
                        prompt_len: seq.prompt.len(),
                        tokens: seq.out.tokens.clone(),
                        logprobs: seq.out.logprobs.clone(),
                        key,
                        eos: self.ends(LlamaToken(last as i32)),
                    }),
                    _ => None,
                };
                let keep = groups[seq.group].lora.is_none() && !seq.media;
                slots.retire(ctx, seq.slot, seq.kv_tokens(), answer, keep);
                joins_open = true;
                if seq.group == 0 {
                    outs.push((seq.index, seq.out));
                }
            }
            // Keep the batch order stable (by index) so results do not depend on retirements.
            live.sort_by_key(|s| s.index);
        }
        let done_at = Instant::now();
        let first_token = first_token_at.unwrap_or(done_at);
        let timings = Timings {
            started,
            prefill_s: first_token.duration_since(prefill_start).as_secs_f64(),
            first_token,
            done: done_at,
        };
        outs.sort_by_key(|(i, _)| *i);
        let stats = textgen::stats(
            &outs.iter().map(|(_, o)| o).collect::<Vec<_>>(),
            &timings,
            peak_rss(),
        );
        let outputs = outs.into_iter().map(|(_, o)| o.into_output()).collect();
        Ok(GenerateResponse { outputs, stats })
    }
}
