//! The running batch of the MLX decode loop (continuous batching, as mlx-lm's
//! `BatchGenerator`): rows of one or several requests decoded together, their KV caches
//! left-padded to one length. Between decode steps rows that ended leave (the padding
//! every remaining row has is dropped), and prompts read meanwhile join (the shorter side
//! padded at the front). Each row keeps its own position (length − padding, shifted by
//! its prompt's multimodal-RoPE delta) for RoPE and its own mask.
//!
//! Greedy rows without penalties are picked on the device and the next step is queued
//! before the host reads this one (mlx-lm's `generate_step` pipelining); any other row
//! in the batch makes the step read its logits and sample on the host.

use crate::{
    error::LlmError,
    loader::Loaded,
    media::MediaPrompt,
    models::{KvCache, Positions},
    sampling::Sampler,
    tokenizer::StreamDecoder,
};
use mlx_rs::{ops::indexing::IndexOp, Array, Dtype};
use plugin_api::text::StreamEvent;
use textgen::SeqOutput;

/// Prompt tokens per row processed per forward pass during prefill (on CPU, and on a GPU
/// while rows decode: a chunk is the pause running streams see).
pub const PREFILL_CHUNK: usize = 512;
/// Prompt tokens per forward pass on a GPU when nothing decodes (mlx-lm's prefill step):
/// fewer, larger passes for long prompts.
pub const PREFILL_CHUNK_ALONE: usize = 2048;

/// What the rows of one request share.
pub struct Group {
    pub stops: Vec<String>,
    pub max_tokens: usize,
    pub stream: bool,
    pub logprobs: bool,
    /// Greedy without penalties: picked on the device.
    pub plain: bool,
    /// Its rows' caches are offered to the prompt cache when they end.
    pub keep: bool,
}

/// One generated sequence.
pub struct Row {
    /// Its index in the call (the call's inputs first, then joined requests').
    pub index: u32,
    /// Its request, in the call's list of groups.
    pub group: usize,
    /// Prompt and generated tokens (repetition penalty context).
    pub context: Vec<u32>,
    pub decoder: StreamDecoder,
    pub sampler: Sampler,
    pub out: SeqOutput,
    /// Prompt tokens whose KV came from the prompt cache.
    pub cached: usize,
}

impl Row {
    /// Record `token` (and its log-probability); the stream event it makes.
    pub fn accept(
        &mut self,
        lm: &Loaded,
        g: &Group,
        (token, logprob): (u32, f32),
    ) -> Result<StreamEvent, LlmError> {
        self.context.push(token);
        let eos = lm.tokenizer.eos_ids.contains(&token);
        let last = self.out.tokens.len() + 1 >= g.max_tokens
            || self.context.len() >= lm.model.max_context();
        let mut text = if eos {
            String::new()
        } else {
            self.decoder.push(&lm.tokenizer, token)?
        };
        if eos || last {
            text.push_str(&self.decoder.flush(&lm.tokenizer)?);
        }
        Ok(self.out.accept(
            self.index as usize,
            token,
            g.logprobs.then_some(logprob),
            &text,
            eos,
            last,
            &g.stops,
        ))
    }
}

/// One step's greedy picks on the device: each row's token and, when asked, its
/// log-probability (the logit less the row's log-sum-exp, as the host sampler reports).
pub struct DevicePick {
    tokens: Array,
    logprobs: Option<Array>,
}

/// Argmax of the float32 logits (first index on ties: the host sampler's choice).
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

    fn select(&self, rows: &Array) -> mlx_rs::error::Result<Self> {
        Ok(Self {
            tokens: self.tokens.take_axis(rows, 0)?,
            logprobs: self
                .logprobs
                .as_ref()
                .map(|l| l.take_axis(rows, 0))
                .transpose()?,
        })
    }

    fn concat(&self, other: &Self) -> mlx_rs::error::Result<Self> {
        let cat = |a: &Array, b: &Array| mlx_rs::ops::concatenate(&[a, b], 0);
        Ok(Self {
            tokens: cat(&self.tokens, &other.tokens)?,
            logprobs: match (&self.logprobs, &other.logprobs) {
                (Some(a), Some(b)) => Some(cat(a, b)?),
                _ => None,
            },
        })
    }
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

/// Positions of `l` new tokens after `q0` stored positions of rows padded by `pads`,
/// shifted by each row's `deltas` (multimodal RoPE: 0 for text).
fn positions(
    pads: &[usize],
    deltas: &[i32],
    q0: usize,
    l: usize,
    dtype: Dtype,
) -> mlx_rs::error::Result<Positions> {
    let offsets: Vec<i32> = pads
        .iter()
        .zip(deltas)
        .map(|(p, d)| q0 as i32 - *p as i32 + d)
        .collect();
    if pads.iter().all(|p| *p == 0) && offsets.iter().all(|o| *o == offsets[0]) {
        return Ok(Positions::Shared(offsets[0]));
    }
    Ok(Positions::PerRow {
        offsets: Array::from_slice(&offsets, &[pads.len() as i32]),
        mask: padded_mask(pads, q0, l, dtype)?,
    })
}

fn new_cache(lm: &Loaded) -> Vec<KvCache> {
    (0..lm.model.layers())
        .map(|_| KvCache::new(lm.kv_store))
        .collect()
}

/// Prompts being read, chunk by chunk, before their rows join the batch.
pub struct Prefill {
    pub rows: Vec<Row>,
    /// (R, longest) token ids, left-padded.
    ids: Array,
    /// (R, longest, H) input embeddings when a row has media, else read from `ids`.
    embeds: Option<Array>,
    /// (S, R, longest) per-section positions when a row's media take positions of their
    /// own (row-major; the others count up, padding at 0).
    explicit: Option<(usize, Vec<i32>)>,
    pads: Vec<usize>,
    /// Each row's position shift after its prompt.
    deltas: Vec<i32>,
    longest: usize,
    /// Positions read so far (a prompt-cache hit starts past 0).
    q0: usize,
    cache: Vec<KvCache>,
    logits: Option<Array>,
}

impl Prefill {
    /// `rows` with their prompts; `start`: the first `n` tokens' KV (one row only, from
    /// the prompt cache).
    pub fn new(
        lm: &Loaded,
        rows: Vec<Row>,
        prompts: &[Vec<u32>],
        media: &[Option<MediaPrompt>],
        start: Option<(usize, Vec<KvCache>)>,
    ) -> Result<Self, LlmError> {
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let pads: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
        let mut padded = vec![0i32; prompts.len() * longest];
        for (row, p) in prompts.iter().enumerate() {
            for (j, t) in p.iter().enumerate() {
                padded[row * longest + pads[row] + j] = *t as i32;
            }
        }
        let (q0, cache) = match start {
            Some((n, cache)) => (n, cache),
            None => (0, new_cache(lm)),
        };
        let ids = Array::from_slice(&padded, &[prompts.len() as i32, longest as i32]);
        // Rows with media are read from their embeddings; then so is every row of the
        // prefill (the others' looked up, padding as zeros: masked).
        let embeds = if media.iter().any(Option::is_some) {
            let mut parts = Vec::with_capacity(prompts.len());
            for (row, &pad) in pads.iter().enumerate() {
                let x = match media.get(row).and_then(Option::as_ref) {
                    Some(m) => m.embeds.clone(),
                    None => lm
                        .model
                        .embed_tokens(&ids.index((row as i32..row as i32 + 1, pad as i32..)))?,
                };
                let x = if pad > 0 {
                    let h = x.shape()[2];
                    let zeros = mlx_rs::ops::zeros_dtype(&[1, pad as i32, h], x.dtype())?;
                    mlx_rs::ops::concatenate(&[&zeros, &x], 1)?
                } else {
                    x
                };
                parts.push(x);
            }
            Some(mlx_rs::ops::concatenate(
                &parts.iter().collect::<Vec<_>>(),
                0,
            )?)
        } else {
            None
        };
        let positions = |row: usize| media.get(row).and_then(Option::as_ref)?.positions.as_ref();
        let deltas = (0..prompts.len())
            .map(|r| positions(r).map_or(0, |p| p.delta))
            .collect();
        let sections = (0..prompts.len())
            .filter_map(|r| positions(r).map(|p| p.sections))
            .max();
        let explicit = sections.map(|s| {
            let rows = prompts.len();
            let mut all = vec![0i32; s * rows * longest];
            for (r, &pad) in pads.iter().enumerate() {
                let n = longest - pad;
                for k in 0..s {
                    let at = (k * rows + r) * longest + pad;
                    let dst = &mut all[at..at + n];
                    match positions(r) {
                        Some(p) => {
                            let k = k.min(p.sections - 1);
                            dst.copy_from_slice(&p.ids[k * n..(k + 1) * n]);
                        }
                        None => dst.iter_mut().enumerate().for_each(|(j, x)| *x = j as i32),
                    }
                }
            }
            (s, all)
        });
        Ok(Self {
            rows,
            ids,
            embeds,
            explicit,
            pads,
            deltas,
            longest,
            q0,
            cache,
            logits: None,
        })
    }

    /// Read the next chunk of at most `chunk` tokens; `true` once the whole prompt is in
    /// the cache.
    pub fn step(&mut self, lm: &Loaded, chunk: usize) -> Result<bool, LlmError> {
        let l = chunk.min(self.longest - self.q0);
        let chunk = self
            .ids
            .index((.., (self.q0 as i32)..((self.q0 + l) as i32)));
        let pos = match &self.explicit {
            None => positions(&self.pads, &self.deltas, self.q0, l, lm.dtype)?,
            Some((s, all)) => {
                let (rows, q0) = (self.pads.len(), self.q0);
                let mut chunk = Vec::with_capacity(s * rows * l);
                for kr in 0..s * rows {
                    let at = kr * self.longest + q0;
                    chunk.extend_from_slice(&all[at..at + l]);
                }
                Positions::Explicit {
                    ids: Array::from_slice(&chunk, &[*s as i32, rows as i32, l as i32]),
                    mask: self
                        .pads
                        .iter()
                        .any(|p| *p > 0)
                        .then(|| padded_mask(&self.pads, q0, l, lm.dtype))
                        .transpose()?,
                }
            }
        };
        let out = match &self.embeds {
            Some(x) => {
                let x = x.index((.., (self.q0 as i32)..((self.q0 + l) as i32), ..));
                lm.model.forward_embeds(&x, &mut self.cache, &pos, false)?
            }
            None => lm.model.forward(&chunk, &mut self.cache, &pos, false)?,
        };
        for c in &mut self.cache {
            c.settle()?;
        }
        let mut to_eval: Vec<&Array> = self.cache.iter().flat_map(KvCache::state).collect();
        to_eval.push(&out);
        mlx_rs::transforms::eval(to_eval)?;
        self.logits = Some(out);
        self.q0 += l;
        Ok(self.q0 >= self.longest)
    }

    /// Positions its rows may reach: the longest prompt plus the most tokens any of
    /// them generates.
    pub fn extent(&self, groups: &[Group]) -> usize {
        self.longest
            + self
                .rows
                .iter()
                .map(|r| groups[r.group].max_tokens)
                .max()
                .unwrap_or(0)
    }
}

/// Rows decoded together, and their KV caches.
pub struct Batch {
    pub rows: Vec<Row>,
    cache: Vec<KvCache>,
    /// Each row's left padding.
    pads: Vec<usize>,
    /// Each row's position shift (multimodal RoPE).
    deltas: Vec<i32>,
    /// Positions stored per row (padding included).
    len: usize,
    /// (B, V) logits the next picks come from.
    logits: Array,
    /// The next picks when made on the device (queued ahead).
    pick: Option<DevicePick>,
}

impl Batch {
    /// A batch of a prefill's rows.
    pub fn from_prefill(p: Prefill) -> Self {
        let b = p.rows.len() as i32;
        let logits = p.logits.expect("a prefill reads before it joins");
        Self {
            rows: p.rows,
            cache: p.cache,
            pads: p.pads,
            deltas: p.deltas,
            len: p.longest,
            logits: logits.reshape(&[b, -1]).expect("(B, 1, V) logits"),
            pick: None,
        }
    }

    /// A finished prefill's rows join: the shorter side is padded at the front.
    pub fn join(&mut self, lm: &Loaded, p: Prefill) -> Result<(), LlmError> {
        let len = self.len.max(p.longest);
        let (grow, theirs) = (len - self.len, len - p.longest);
        let mut cache = p.cache;
        for (mine, other) in self.cache.iter_mut().zip(&mut cache) {
            if grow > 0 {
                mine.pad_front(grow as i32)?;
            }
            if theirs > 0 {
                other.pad_front(theirs as i32)?;
            }
            mine.append_rows(other)?;
        }
        self.pads.iter_mut().for_each(|x| *x += grow);
        self.pads.extend(p.pads.iter().map(|x| x + theirs));
        self.deltas.extend(p.deltas);
        let logits = p.logits.expect("a prefill reads before it joins");
        let logits = logits.reshape(&[p.rows.len() as i32, -1])?;
        if let Some(pick) = &self.pick {
            let want = pick.logprobs.is_some();
            self.pick = Some(pick.concat(&device_pick(&logits, lm.model.vocab_size(), want)?)?);
        }
        self.logits = mlx_rs::ops::concatenate(&[&self.logits, &logits], 0)?;
        self.len = len;
        self.rows.extend(p.rows);
        Ok(())
    }

    /// One decode step's picks, a `(token, logprob)` per row. `plain`: every row is
    /// greedy without penalties (picked on the device, and the next step is queued
    /// before this one is read, unless a row still waits for its first token: the time
    /// to it is what a user waits for). Returns whether the next step was queued; when
    /// not, [`advance`](Self::advance) makes it after the picks are taken.
    pub fn picks(
        &mut self,
        lm: &Loaded,
        plain: bool,
        logprobs: bool,
    ) -> Result<(Vec<(u32, f32)>, bool), LlmError> {
        let vocab = lm.model.vocab_size();
        if plain {
            let now = match self.pick.take() {
                Some(p) if p.logprobs.is_some() || !logprobs => p,
                _ => device_pick(&self.logits, vocab, logprobs)?,
            };
            if self.rows.iter().any(|r| r.out.tokens.is_empty()) {
                return Ok((now.read()?, false));
            }
            let b = self.rows.len() as i32;
            let logits = self.forward(lm, &now.tokens.reshape(&[b, 1])?)?;
            let next = device_pick(&logits, vocab, logprobs)?;
            mlx_rs::transforms::async_eval(next.arrays())?;
            self.logits = logits;
            self.pick = Some(next);
            return Ok((now.read()?, true));
        }
        self.pick = None;
        let b = self.rows.len();
        let host = self.logits.as_dtype(Dtype::Float32)?;
        host.eval()?;
        let all: &[f32] = host.as_slice();
        let width = all.len() / b;
        Ok((
            self.rows
                .iter_mut()
                .enumerate()
                .map(|(i, row)| {
                    let mut l = all[i * width..i * width + vocab.min(width)].to_vec();
                    row.sampler.sample(&mut l, &row.context)
                })
                .collect(),
            false,
        ))
    }

    /// The step after the picks were taken: each row's last token through the model.
    pub fn advance(&mut self, lm: &Loaded) -> Result<(), LlmError> {
        let next: Vec<i32> = self
            .rows
            .iter()
            .map(|r| r.context.last().copied().unwrap_or(0) as i32)
            .collect();
        let b = next.len() as i32;
        self.logits = self.forward(lm, &Array::from_slice(&next, &[b, 1]))?;
        self.pick = None;
        Ok(())
    }

    fn forward(&mut self, lm: &Loaded, tokens: &Array) -> Result<Array, LlmError> {
        let pos = positions(&self.pads, &self.deltas, self.len, 1, lm.dtype)?;
        let b = tokens.shape()[0];
        let logits = lm.model.forward(tokens, &mut self.cache, &pos, false)?;
        self.len += 1;
        Ok(logits.reshape(&[b, -1])?)
    }

    /// The tokens whose keys and values row `i` holds, and a copy of them (one
    /// single-row cache per layer, evaluation queued), for the prompt cache.
    pub fn row_cache(&self, i: usize) -> Result<(Vec<u32>, Vec<KvCache>), LlmError> {
        let pad = self.pads[i];
        let fed = (self.len - pad).min(self.rows[i].context.len());
        let kv = self
            .cache
            .iter()
            .map(|c| c.row(i as i32, (self.len - fed) as i32))
            .collect::<Result<Vec<_>, _>>()?;
        mlx_rs::transforms::async_eval(kv.iter().flat_map(KvCache::state))?;
        Ok((self.rows[i].context[..fed].to_vec(), kv))
    }

    /// Keep the rows `keep` says; the others are returned. Padding that every kept row
    /// has goes.
    pub fn retain(&mut self, keep: &[bool]) -> Result<Vec<Row>, LlmError> {
        let kept: Vec<i32> = (0..keep.len() as i32)
            .filter(|i| keep[*i as usize])
            .collect();
        let mut gone = Vec::new();
        let mut rows = Vec::with_capacity(kept.len());
        for (row, k) in std::mem::take(&mut self.rows).into_iter().zip(keep) {
            if *k {
                rows.push(row);
            } else {
                gone.push(row);
            }
        }
        self.rows = rows;
        if kept.is_empty() || gone.is_empty() {
            return Ok(gone);
        }
        let at = Array::from_slice(&kept, &[kept.len() as i32]);
        for c in &mut self.cache {
            c.select_rows(&at)?;
        }
        self.logits = self.logits.take_axis(&at, 0)?;
        self.pick = self.pick.as_ref().map(|p| p.select(&at)).transpose()?;
        self.pads = kept.iter().map(|i| self.pads[*i as usize]).collect();
        self.deltas = kept.iter().map(|i| self.deltas[*i as usize]).collect();
        let common = self.pads.iter().copied().min().unwrap_or(0);
        if common > 0 {
            for c in &mut self.cache {
                c.drop_front(common as i32);
            }
            self.pads.iter_mut().for_each(|p| *p -= common);
            self.len -= common;
        }
        Ok(gone)
    }

    /// Positions the batch will hold per row at most: its length now plus the most
    /// tokens any row may still generate (rows that end early only shrink it).
    pub fn extent(&self, groups: &[Group]) -> usize {
        self.len
            + self
                .rows
                .iter()
                .map(|r| {
                    groups[r.group]
                        .max_tokens
                        .saturating_sub(r.out.tokens.len())
                })
                .max()
                .unwrap_or(0)
    }

    /// Arrays still being computed (a step queued past the end).
    pub fn finish(self) -> Result<(), LlmError> {
        if let Some(p) = self.pick {
            mlx_rs::transforms::eval(p.arrays())?;
        }
        Ok(())
    }
}
