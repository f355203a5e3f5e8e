//! The generation loop: prompts → tokens (chat template or raw), chunked prefill into the
//! KV cache, then step-by-step decoding of every sequence of the batch together, with
//! sampling, stop conditions, streaming and cancellation.

use crate::{
    error::LlmError,
    loader::Loaded,
    models::{KvCache, Positions},
    sampling::{self, Sampler},
    tokenizer::{render_chat, StreamDecoder},
};
use mlx_rs::{ops::indexing::IndexOp, Array, Dtype};
use plugin_api::text::{GenerateRequest, GenerateResponse, StreamControl, StreamEvent, TextInput};
use std::time::Instant;
use textgen::{cancel_running, SeqOutput, Timings};

/// Prompt tokens processed per forward pass during prefill.
pub const PREFILL_CHUNK: usize = 512;

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

/// One step's greedy picks on the device: each row's token and, when asked, its
/// log-probability (the logit less the row's log-sum-exp, as the host sampler reports).
struct DevicePick {
    tokens: Array,
    logprobs: Option<Array>,
}

fn device_pick(logits: &Array, vocab: usize, logprobs: bool) -> mlx_rs::error::Result<DevicePick> {
    let b = logits.shape()[0];
    let rows = logits.reshape(&[b, -1])?;
    let rows = rows.index((.., ..(vocab as i32).min(rows.shape()[1])));
    let rows = rows.as_dtype(Dtype::Float32)?;
    let tokens = mlx_rs::ops::indexing::argmax_axis(&rows, -1, false)?.as_dtype(Dtype::Int32)?;
    let logprobs = if logprobs {
        let picked = rows.take_along_axis(&tokens.reshape(&[b, 1])?, -1)?;
        Some(
            picked
                .subtract(rows.logsumexp_axis(-1, true)?)?
                .reshape(&[b])?,
        )
    } else {
        None
    };
    Ok(DevicePick { tokens, logprobs })
}

impl DevicePick {
    fn arrays(&self) -> impl Iterator<Item = &Array> {
        std::iter::once(&self.tokens).chain(&self.logprobs)
    }

    /// Wait for this step and hand its picks to the host.
    fn read(&self) -> mlx_rs::error::Result<Vec<(u32, f32)>> {
        self.tokens.eval()?;
        let tokens: &[i32] = self.tokens.as_slice();
        let lps: Vec<f32> = match &self.logprobs {
            Some(l) => {
                l.eval()?;
                l.as_slice().to_vec()
            }
            None => vec![0.0; tokens.len()],
        };
        Ok(tokens
            .iter()
            .zip(lps)
            .map(|(t, l)| (*t as u32, l))
            .collect())
    }
}

struct Seq {
    /// Prompt and generated tokens (repetition penalty context).
    context: Vec<u32>,
    decoder: StreamDecoder,
    sampler: Sampler,
    out: SeqOutput,
}

/// Additive attention mask (B, 1, L, S) for left-padded rows: a query sees keys at or
/// after its row's padding and not after itself; padding queries see only themselves.
fn padded_mask(pads: &[usize], q0: usize, l: usize, dtype: Dtype) -> mlx_rs::error::Result<Array> {
    let s = q0 + l;
    let mut m = vec![-1e9f32; pads.len() * l * s];
    for (b, &pad) in pads.iter().enumerate() {
        for i in 0..l {
            let q = q0 + i;
            let row = &mut m[(b * l + i) * s..(b * l + i + 1) * s];
            if q < pad {
                row[q] = 0.0;
            } else {
                row[pad..=q].iter_mut().for_each(|x| *x = 0.0);
            }
        }
    }
    Array::from_slice(&m, &[pads.len() as i32, 1, l as i32, s as i32]).as_dtype(dtype)
}

fn positions(
    pads: &[usize],
    q0: usize,
    l: usize,
    dtype: Dtype,
) -> mlx_rs::error::Result<Positions> {
    if pads.iter().all(|p| *p == 0) {
        return Ok(Positions::Shared(q0 as i32));
    }
    let offsets: Vec<i32> = pads.iter().map(|p| q0 as i32 - *p as i32).collect();
    Ok(Positions::PerRow {
        offsets: Array::from_slice(&offsets, &[pads.len() as i32]),
        mask: padded_mask(pads, q0, l, dtype)?,
    })
}

/// Run a generation request on a loaded model.
pub fn generate(
    lm: &Loaded,
    system_prompt: Option<&str>,
    req: &GenerateRequest,
    sink: &mut dyn FnMut(&StreamEvent) -> StreamControl,
) -> Result<GenerateResponse, LlmError> {
    let started = Instant::now();
    // The host checked the request where it entered (`engine::request::Generate`: inputs,
    // max_tokens, sampling ranges); what is left needs this model's facts.
    let model = lm.model.as_ref();
    let ctx = model.max_context();
    let prompts = req
        .inputs
        .iter()
        .enumerate()
        .map(|(i, input)| prompt_ids(lm, system_prompt, input, i))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(msg) = textgen::context_overflow(prompts.iter().map(Vec::len), ctx) {
        return Err(LlmError::ContextLength(msg));
    }
    // The batch is left-padded to its longest prompt, and each row's cache grows to
    // that plus max_tokens (capped by the context), in steps of 256.
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let per_seq = (longest + req.max_tokens as usize).min(ctx).div_ceil(256) * 256;
    textgen::KvBudget::of(req.options.as_str(), lm.kv_token_bytes)
        .check(per_seq.saturating_mul(prompts.len()), prompts.len())
        .map_err(LlmError::OverBudget)?;
    let _ = mlx_rs::memory::reset_peak_memory();
    let stops: Vec<String> = req
        .stop
        .iter()
        .map(|s| s.to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let fallback_seed = started.elapsed().as_nanos() as u64 ^ std::process::id() as u64 ^ 0x5eed;
    let b = prompts.len();
    let pads: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
    let mut seqs: Vec<Seq> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut params = req.sampling.clone();
            // Rows of a seeded batch get distinct but reproducible streams.
            params.seed = params.seed.map(|s| s.wrapping_add(i as u64));
            Seq {
                context: p.clone(),
                decoder: StreamDecoder::default(),
                sampler: Sampler::new(&params, fallback_seed.wrapping_add(i as u64)),
                out: SeqOutput::new(p.len()),
            }
        })
        .collect();

    // Prefill, in chunks, left-padded.
    let mut padded = vec![0i32; b * longest];
    for (row, p) in prompts.iter().enumerate() {
        for (j, t) in p.iter().enumerate() {
            padded[row * longest + pads[row] + j] = *t as i32;
        }
    }
    let ids = Array::from_slice(&padded, &[b as i32, longest as i32]);
    let mut cache: Vec<KvCache> = (0..model.layers())
        .map(|_| KvCache::new(lm.kv_store))
        .collect();
    let mut logits = None;
    let mut q0 = 0;
    let prefill_start = Instant::now();
    while q0 < longest {
        let l = PREFILL_CHUNK.min(longest - q0);
        let chunk = ids.index((.., (q0 as i32)..((q0 + l) as i32)));
        let out = model.forward(
            &chunk,
            &mut cache,
            &positions(&pads, q0, l, lm.dtype)?,
            false,
        )?;
        for c in &mut cache {
            c.settle()?;
        }
        let mut to_eval: Vec<&Array> = cache.iter().flat_map(KvCache::state).collect();
        to_eval.push(&out);
        mlx_rs::transforms::eval(to_eval)?;
        logits = Some(out);
        q0 += l;
    }
    let mut logits = logits.expect("prompts are not empty");
    let prefill_done = Instant::now();
    let mut first_token: Option<Instant> = None;
    let mut cache_len = longest;
    let vocab = model.vocab_size();
    let mut cancelled = false;

    // Greedy picks without penalties need nothing from the host: they are made on the
    // device, and step t+1 is queued before the host waits for step t's token (mlx-lm's
    // `generate_step` pipelining). The device takes the same argmax of the same float32
    // logits (first index on ties), so the tokens are the host sampler's.
    let on_device = sampling::plain_argmax(&req.sampling);
    // One decode step: `tokens` (B, 1) through the model at the next position.
    let mut decode = |tokens: &Array, cache: &mut [KvCache]| {
        let logits = model.forward(
            tokens,
            cache,
            &positions(&pads, cache_len, 1, lm.dtype)?,
            false,
        );
        cache_len += 1;
        logits
    };
    let mut pending = if on_device {
        let p = device_pick(&logits, vocab, req.logprobs)?;
        mlx_rs::transforms::async_eval(p.arrays())?;
        Some(p)
    } else {
        None
    };
    loop {
        let picks: Vec<(u32, f32)> = if let Some(now) = pending.take() {
            // The first token is read before the next step is built: the time to it is
            // what a user waits for, and the device has only its argmax to do.
            let first = first_token.is_none().then(|| now.read()).transpose()?;
            let next = decode(&now.tokens.reshape(&[b as i32, 1])?, &mut cache)?;
            let next = device_pick(&next, vocab, req.logprobs)?;
            mlx_rs::transforms::async_eval(next.arrays())?;
            pending = Some(next);
            match first {
                Some(picks) => picks,
                None => now.read()?,
            }
        } else {
            let host = logits.reshape(&[b as i32, -1])?.as_dtype(Dtype::Float32)?;
            host.eval()?;
            let all: &[f32] = host.as_slice();
            let width = all.len() / b;
            seqs.iter_mut()
                .enumerate()
                .map(|(row, seq)| {
                    if !seq.out.running() {
                        return (0, 0.0);
                    }
                    let mut row_logits = all[row * width..row * width + vocab.min(width)].to_vec();
                    seq.sampler.sample(&mut row_logits, &seq.context)
                })
                .collect()
        };
        for (row, seq) in seqs.iter_mut().enumerate() {
            if !seq.out.running() {
                continue;
            }
            let (token, logprob) = picks[row];
            first_token.get_or_insert_with(Instant::now);
            seq.context.push(token);
            let eos = lm.tokenizer.eos_ids.contains(&token);
            let last =
                seq.out.tokens.len() + 1 >= req.max_tokens as usize || seq.context.len() >= ctx;
            let mut text = if eos {
                String::new()
            } else {
                seq.decoder.push(&lm.tokenizer, token)?
            };
            if eos || last {
                text.push_str(&seq.decoder.flush(&lm.tokenizer)?);
            }
            let ev = seq.out.accept(
                row,
                token,
                req.logprobs.then_some(logprob),
                &text,
                eos,
                last,
                &stops,
            );
            if req.stream && sink(&ev) == StreamControl::Stop {
                cancelled = true;
                break;
            }
        }
        if cancelled {
            cancel_running(seqs.iter_mut().map(|s| &mut s.out), sink);
            break;
        }
        if seqs.iter().all(|s| !s.out.running()) {
            break;
        }
        if !on_device {
            // Each row's last token: the one just picked, or a finished row's last one.
            let next: Vec<i32> = seqs
                .iter()
                .map(|s| s.context.last().copied().unwrap_or(0) as i32)
                .collect();
            logits = decode(&Array::from_slice(&next, &[b as i32, 1]), &mut cache)?;
        }
    }
    // A step queued past the end is still running: let it finish before its cache goes.
    if let Some(p) = pending {
        mlx_rs::transforms::eval(p.arrays())?;
    }
    drop(cache);
    let done = Instant::now();

    let timings = Timings {
        started,
        // Prompt processing only (template and tokenization are in the time to first token).
        prefill_s: prefill_done.duration_since(prefill_start).as_secs_f64(),
        first_token: first_token.unwrap_or(done),
        done,
    };
    let peak = mlx_rs::memory::peak_memory().unwrap_or(0) as u64;
    let stats = textgen::stats(
        &seqs.iter().map(|s| &s.out).collect::<Vec<_>>(),
        &timings,
        peak,
    );
    let outputs = seqs.into_iter().map(|s| s.out.into_output()).collect();
    Ok(GenerateResponse { outputs, stats })
}
