//! The generation loop: prompts → tokens (chat template or raw), chunked prefill into the
//! KV cache (from the prompt cache's longest match when there is one), then step-by-step
//! decoding of every sequence of the batch together, with sampling, stop conditions,
//! streaming and cancellation — and requests that join the running batch between decode
//! steps ([`crate::batch`]), each prefilled a chunk at a time so running rows keep going.

pub use crate::batch::{PREFILL_CHUNK, PREFILL_CHUNK_ALONE};
use crate::{
    batch::{Batch, Group, Prefill, Row},
    error::LlmError,
    loader::Loaded,
    media,
    models::KvCache,
    prompt_cache::PromptCache,
    sampling::{self, Sampler},
    tokenizer::{render_chat, StreamDecoder},
};
use plugin_api::{
    text::{
        FinishReason, GenerateRequest, GenerateResponse, StreamControl, StreamEvent, TextInput,
    },
    ErrorKind, PluginError,
};
use plugin_sdk::{AdapterChoice, Sink};
use std::{collections::VecDeque, time::Instant};
use textgen::{cancel_running, KvBudget, SeqOutput, Timings};

/// Most rows decoded together once requests join (mlx-lm's server default).
pub const MAX_ROWS: usize = 32;
/// Most rows of joining requests read their prompts in one prefill (mlx-lm's default).
pub const PREFILL_ROWS: usize = 8;

/// Token ids of one input: chat messages through the model's template (with the default
/// system prompt when the messages have none), or a raw prompt.
pub fn prompt_ids(
    lm: &Loaded,
    system_prompt: Option<&str>,
    input: &TextInput,
    index: usize,
) -> Result<Vec<u32>, LlmError> {
    let ids = if input.messages.is_empty() {
        lm.tokenizer.encode_raw(input.prompt.as_str())?
    } else {
        let msgs = textgen::text_messages(&input.messages, system_prompt, index)
            .map_err(LlmError::Request)?;
        lm.tokenizer
            .encode_rendered(&render_chat(&lm.tokenizer, &msgs)?)?
    };
    if ids.is_empty() {
        return Err(LlmError::Request(format!(
            "input #{index}: the prompt has no tokens"
        )));
    }
    // Special tokens added by the template or post-processor are not all in the vocabulary
    // the load check saw: nothing past the embedding table reaches the model.
    let rows = lm.model.vocab_size();
    if let Some(id) = ids.iter().find(|&&id| id as usize >= rows) {
        return Err(LlmError::Tokenizer {
            file: "tokenizer.json".into(),
            msg: format!(
                "input #{index} encodes to token id {id}, outside the {rows}-row embedding \
                 table; the tokenizer does not belong to these weights"
            ),
        });
    }
    Ok(ids)
}

/// A request admitted to the call, waiting for its prefill.
struct Admitted {
    rows: Vec<Row>,
    prompts: Vec<Vec<u32>>,
    /// The prompts with media (their embeddings and positions), in `prompts`' order.
    media: Vec<Option<media::MediaPrompt>>,
    /// A prompt-cache hit (tokens reused, their KV): prefilled alone.
    start: Option<(usize, Vec<KvCache>)>,
}

/// What a call needs to know besides its request: its model, the prompt cache it may
/// use, the adapters applied for the whole call.
pub struct Call<'a> {
    pub lm: &'a Loaded,
    pub prompt_cache: &'a mut PromptCache,
    /// The model's `prompt_cache` setting.
    pub cache_on: bool,
    pub system_prompt: Option<&'a str>,
    /// The adapters on the layers for this call: a request that applies others waits.
    pub adapters: &'a [AdapterChoice],
}

/// `choices` as the prompt cache keys entries: KV computed under other adapters differs.
fn adapters_key(choices: &[AdapterChoice]) -> String {
    choices
        .iter()
        .map(|c| format!("{}@{:?}", c.name, c.scale))
        .collect::<Vec<_>>()
        .join(",")
}

impl Call<'_> {
    /// `req`'s rows (its inputs from `first` on), checked against this model.
    fn admit(
        &mut self,
        req: &GenerateRequest,
        group: usize,
        first: u32,
        seed: u64,
        keep: bool,
    ) -> Result<(Group, Admitted), LlmError> {
        let lm = self.lm;
        let (mut prompts, mut with_media) = (Vec::new(), Vec::new());
        for (i, input) in req.inputs.iter().enumerate() {
            match lm.media.as_ref().filter(|_| media::has_media(input)) {
                Some(m) => {
                    let p = m.prompt(lm, self.system_prompt, input, i)?;
                    prompts.push(p.ids.clone());
                    with_media.push(Some(p));
                }
                None => {
                    prompts.push(prompt_ids(lm, self.system_prompt, input, i)?);
                    with_media.push(None);
                }
            }
        }
        // KV computed from images is not keyed by its tokens alone: no prompt cache.
        let keep = keep && with_media.iter().all(Option::is_none);
        if let Some(msg) =
            textgen::context_overflow(prompts.iter().map(Vec::len), lm.model.max_context())
        {
            return Err(LlmError::ContextLength(msg));
        }
        let mut rows = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut params = req.sampling.clone();
                // Rows of a seeded batch get distinct but reproducible streams.
                params.seed = params.seed.map(|s| s.wrapping_add(i as u64));
                Row {
                    index: first + i as u32,
                    group,
                    context: p.clone(),
                    decoder: StreamDecoder::default(),
                    sampler: Sampler::new(&params, seed.wrapping_add(u64::from(first) + i as u64)),
                    out: SeqOutput::new(p.len()),
                    cached: 0,
                }
            })
            .collect::<Vec<_>>();
        let start = match (keep, prompts.as_slice()) {
            (true, [p]) => self.prompt_cache.lookup(&adapters_key(self.adapters), p),
            _ => None,
        };
        if let Some((n, _)) = &start {
            rows[0].cached = *n;
        }
        let g = Group {
            stops: textgen::stop_strings(req),
            max_tokens: req.max_tokens as usize,
            stream: req.stream,
            logprobs: req.logprobs,
            plain: sampling::plain_argmax(&req.sampling),
            keep,
        };
        Ok((
            g,
            Admitted {
                rows,
                prompts,
                media: with_media,
                start,
            },
        ))
    }

    /// A request offered to join the call: admitted as [`admit`](Self::admit) does, or
    /// refused for now (`RESOURCE_EXHAUSTED`: it runs after this call) when it applies
    /// other adapters than the call's.
    fn admit_join(
        &mut self,
        req: &GenerateRequest,
        group: usize,
        first: u32,
        seed: u64,
    ) -> Result<(Group, Admitted), PluginError> {
        if plugin_sdk::adapters_of(req)? != self.adapters {
            return Err(PluginError::new(
                ErrorKind::RESOURCE_EXHAUSTED,
                "the running batch applies other adapters; the request runs after it",
            ));
        }
        let keep = self.cache_on && textgen::prompt_cache_allowed(req);
        Ok(self.admit(req, group, first, seed, keep)?)
    }

    /// `need` cache positions over all rows, with room made in the prompt cache first.
    fn fits(&mut self, budget: &KvBudget, need: usize, rows: usize) -> Result<(), String> {
        budget.check(need, rows)?;
        let spare = budget.max_tokens().saturating_sub(need);
        if self.prompt_cache.tokens() > spare {
            self.prompt_cache.shrink_to(spare);
        }
        Ok(())
    }
}

/// Cache positions per row that rows reading `prompts` and generating up to `max_tokens`
/// may reach: the longest prompt plus `max_tokens`, within the context, in whole steps
/// of 256 (as the cache grows).
fn extent(prompts: &[Vec<u32>], max_tokens: usize, ctx: usize) -> usize {
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    (longest + max_tokens).min(ctx).div_ceil(256) * 256
}

/// Run a generation request on a loaded model, and the requests that join it
/// (`sink.poll_join`) while it runs.
pub fn generate(
    call: &mut Call<'_>,
    req: &GenerateRequest,
    sink: &mut dyn Sink,
) -> Result<GenerateResponse, LlmError> {
    let started = Instant::now();
    let lm = call.lm;
    // The host checked the request where it entered (`engine::request::Generate`: inputs,
    // max_tokens, sampling ranges); what is left needs this model's facts.
    let ctx = lm.model.max_context();
    let seed = started.elapsed().as_nanos() as u64 ^ std::process::id() as u64 ^ 0x5eed;
    let keep0 = call.cache_on && textgen::prompt_cache_allowed(req);
    let (g0, own) = call.admit(req, 0, 0, seed, keep0)?;
    let own_n = own.rows.len();
    // The batch is left-padded to its longest prompt, and each row's cache grows to
    // that plus max_tokens (capped by the context), in steps of 256.
    let budget = KvBudget::of(req.options.as_str(), lm.kv_token_bytes);
    call.fits(
        &budget,
        extent(&own.prompts, g0.max_tokens, ctx) * own_n,
        own_n,
    )
    .map_err(LlmError::OverBudget)?;
    let _ = mlx_rs::memory::reset_peak_memory();
    let mut groups = vec![g0];
    let mut admitted: VecDeque<Admitted> = VecDeque::from([own]);
    let mut prefill: Option<Prefill> = None;
    let mut batch: Option<Batch> = None;
    let mut own_out: Vec<Option<SeqOutput>> = (0..own_n).map(|_| None).collect();
    let mut next_index = own_n as u32;
    let mut joins_open = true;
    let mut prefill_s = 0.0;
    let mut first_token: Option<Instant> = None;
    let mut own_done: Option<Instant> = None;
    let key = adapters_key(call.adapters);
    let mut kept: Vec<mlx_rs::Array> = Vec::new();

    loop {
        // Requests waiting at the host join while there is room.
        let mut rows_now = batch.as_ref().map_or(0, |b| b.rows.len())
            + prefill.as_ref().map_or(0, |p| p.rows.len())
            + admitted.iter().map(|a| a.rows.len()).sum::<usize>();
        while joins_open && rows_now < MAX_ROWS {
            let Some(joined) = sink.poll_join() else {
                break;
            };
            let result = call
                .admit_join(&joined, groups.len(), next_index, seed)
                .and_then(|(g, a)| {
                    // Every row at the longest extent among them, running and new.
                    let n = rows_now + a.rows.len();
                    let need = admitted
                        .iter()
                        .map(|q| extent(&q.prompts, groups[q.rows[0].group].max_tokens, ctx))
                        .chain(prefill.as_ref().map(|p| p.extent(&groups)))
                        .chain(batch.as_ref().map(|b| b.extent(&groups)))
                        .fold(extent(&a.prompts, g.max_tokens, ctx), usize::max)
                        * n;
                    let budget = KvBudget::of(joined.options.as_str(), lm.kv_token_bytes);
                    call.fits(&budget, need, n)
                        .map_err(|m| PluginError::new(ErrorKind::RESOURCE_EXHAUSTED, m))?;
                    Ok((g, a))
                });
            match result {
                Ok((g, a)) => {
                    rows_now += a.rows.len();
                    next_index += a.rows.len() as u32;
                    groups.push(g);
                    admitted.push_back(a);
                }
                Err(e) => {
                    // No room: ask again once a sequence ends.
                    joins_open = e.kind != ErrorKind::RESOURCE_EXHAUSTED;
                    sink.rejected(&e);
                    break;
                }
            }
        }

        // One chunk of prompt reading (a whole prompt while nothing decodes).
        if prefill.is_none() {
            prefill = next_prefill(lm, &mut admitted)?;
            if let Some(p) = &prefill {
                for r in &p.rows {
                    if groups[r.group].keep {
                        sink.prompt_cached(r.index, r.cached as u32);
                    }
                }
            }
        }
        if let Some(p) = prefill.as_mut() {
            let t = Instant::now();
            let chunk = if batch.is_none() && mlx_common::on_gpu() {
                PREFILL_CHUNK_ALONE
            } else {
                PREFILL_CHUNK
            };
            let done = p.step(lm, chunk)?;
            if p.rows.iter().any(|r| r.group == 0) {
                prefill_s += t.elapsed().as_secs_f64();
            }
            if done {
                let p = prefill.take().expect("just read");
                match batch.as_mut() {
                    None => batch = Some(Batch::from_prefill(p)),
                    Some(b) => b.join(lm, p)?,
                }
            }
            if batch.is_none() {
                continue;
            }
        }
        let Some(b) = batch.as_mut() else {
            if admitted.is_empty() {
                break;
            }
            continue;
        };

        // One decode step.
        let plain = b.rows.iter().all(|r| groups[r.group].plain);
        let logprobs = b.rows.iter().any(|r| groups[r.group].logprobs);
        let (picks, queued) = b.picks(lm, plain, logprobs)?;
        let now = Instant::now();
        let mut stopped: Vec<usize> = Vec::new();
        for (row, pick) in b.rows.iter_mut().zip(picks) {
            if stopped.contains(&row.group) {
                continue;
            }
            if row.group == 0 {
                first_token.get_or_insert(now);
            }
            let g = &groups[row.group];
            let ev = row.accept(lm, g, pick)?;
            if g.stream && sink.event(&ev) == StreamControl::Stop {
                stopped.push(row.group);
            }
        }
        // A request the sink stopped: its running rows end cancelled.
        cancel_running(
            b.rows
                .iter_mut()
                .filter(|r| stopped.contains(&r.group))
                .map(|r| (r.index, &mut r.out)),
            &mut |ev| sink.event(ev),
        );
        let keep: Vec<bool> = b.rows.iter().map(|r| r.out.running()).collect();
        if keep.iter().any(|k| !k) {
            for (i, r) in b.rows.iter().enumerate() {
                if !keep[i] && groups[r.group].keep && r.out.finish != FinishReason::CANCELLED {
                    let (tokens, kv) = b.row_cache(i)?;
                    kept.extend(kv.iter().flat_map(KvCache::state).cloned());
                    call.prompt_cache
                        .insert(&key, tokens, kv, budget.max_tokens() / 2);
                }
            }
            for row in b.retain(&keep)? {
                sink.finished(row.index, &row.out.output());
                if let Some(slot) = own_out.get_mut(row.index as usize) {
                    *slot = Some(row.out);
                    if own_out.iter().all(Option::is_some) {
                        own_done = Some(Instant::now());
                    }
                }
            }
            // A sequence ended: a request refused for want of room may fit now.
            joins_open = true;
        }
        if b.rows.is_empty() {
            batch.take().expect("checked").finish()?;
        } else if !queued {
            b.advance(lm)?;
        }
    }
    // What the prompt cache kept is computed before the call returns: another thread
    // (another stream) may read it next.
    mlx_rs::transforms::eval(&kept)?;
    let done = Instant::now();
    let timings = Timings {
        started,
        // Prompt processing only (template and tokenization are in the time to first token).
        prefill_s,
        first_token: first_token.unwrap_or(done),
        done: own_done.unwrap_or(done),
    };
    let peak = mlx_rs::memory::peak_memory().unwrap_or(0) as u64;
    let outs: Vec<SeqOutput> = own_out
        .into_iter()
        .map(|o| o.expect("every own row ended"))
        .collect();
    let stats = textgen::stats(&outs.iter().collect::<Vec<_>>(), &timings, peak);
    let outputs = outs.into_iter().map(SeqOutput::into_output).collect();
    Ok(GenerateResponse { outputs, stats })
}

/// The next prompts to read: a prompt-cache hit alone (it starts past position 0), else
/// the requests in line without one, up to [`PREFILL_ROWS`] rows (the call's own
/// request whole).
fn next_prefill(
    lm: &Loaded,
    admitted: &mut VecDeque<Admitted>,
) -> Result<Option<Prefill>, LlmError> {
    let Some(first) = admitted.pop_front() else {
        return Ok(None);
    };
    if first.start.is_some() {
        return Prefill::new(lm, first.rows, &first.prompts, &first.media, first.start).map(Some);
    }
    let (mut rows, mut prompts, mut with_media) = (first.rows, first.prompts, first.media);
    while let Some(next) = admitted.front() {
        if next.start.is_some() || rows.len() + next.rows.len() > PREFILL_ROWS {
            break;
        }
        let next = admitted.pop_front().expect("looked at");
        rows.extend(next.rows);
        prompts.extend(next.prompts);
        with_media.extend(next.media);
    }
    Prefill::new(lm, rows, &prompts, &with_media, None).map(Some)
}

/// A [`Sink`] over a closure: events only, nothing joins.
struct Events<'a>(&'a mut dyn FnMut(&StreamEvent) -> StreamControl);

impl Sink for Events<'_> {
    fn event(&mut self, ev: &StreamEvent) -> StreamControl {
        (self.0)(ev)
    }
}

/// `req` alone on `lm` (no request joins, no prompt cache, no adapters), its events to
/// `on_event`: for tools and tests that drive the loop without a host.
pub fn generate_alone(
    lm: &Loaded,
    req: &GenerateRequest,
    on_event: &mut dyn FnMut(&StreamEvent) -> StreamControl,
) -> Result<GenerateResponse, LlmError> {
    let mut prompt_cache = PromptCache::default();
    let mut call = Call {
        lm,
        prompt_cache: &mut prompt_cache,
        cache_on: false,
        system_prompt: None,
        adapters: &[],
    };
    generate(&mut call, req, &mut Events(on_event))
}
