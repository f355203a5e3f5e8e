//! The prompt cache: what ended sequences left in the persistent context's KV cells,
//! kept under their llama.cpp sequence ids, so that a sequence whose prompt starts with
//! the same tokens (a chat's earlier turns, a shared system prompt, the same prompt
//! again) copies those cells instead of computing them.
//!
//! Only bookkeeping lives here (which sequence id holds which tokens, least recently
//! used first); the caller does the KV operations: llama.cpp's unified KV cache copies
//! a sequence's cells by tagging them with the new id (`seq_cp`, no data moved), so an
//! entry stays usable by later requests after one copied from it, and dropping it frees
//! only the cells no running sequence shares.
//!
//! An entry of a deterministic sequence (temperature 0, or sampled with a seed) also keeps
//! the tokens it sampled: the same prompt under the same sampling *is* that answer, so it
//! is replayed instead of decoded anew — which is also what keeps repeated greedy or
//! seeded requests identical: decoded again in other cells, llama.cpp's sums over cells
//! round differently, and near-ties (or a top-p cut) can flip. A greedy answer may be
//! continued past its end (the sampler has no state but the tokens); a seeded one is
//! replayed only if it covers the request (its random draws cannot be resumed).
//!
//! Cells: an entry is counted with all its tokens, and a running sequence reserves its
//! whole prompt + `max_tokens` (reused part included), so shared cells are counted twice
//! and the caller's count of free cells never exceeds what the KV cache has.

use llama_cpp_2::{context::LlamaContext, token::LlamaToken};

/// What a deterministic sequence answered: the first `prompt_len` of the entry's tokens
/// were its prompt; `tokens` are all it sampled (the last one never fed back), with their
/// log-probabilities if they were asked for (else empty), under sampling `key`; `eos`:
/// it ended on an end-of-generation token.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Answer {
    pub(crate) prompt_len: usize,
    pub(crate) tokens: Vec<u32>,
    pub(crate) logprobs: Vec<f32>,
    pub(crate) key: u64,
    pub(crate) eos: bool,
}

/// Entries kept at most. Every decoded row attends over every cell in use of the unified
/// KV cache, an entry's included (masked: flash attention skips such a cell but still
/// reads its mask, the plain path computes it): 16 entries of ~260 cells slowed a lone
/// stream's decode by ~20% on a 2-core EPYC. A chat's history is one entry however long,
/// so four keep four conversations (or system prompts) warm.
pub(crate) const MAX_ENTRIES: usize = 4;

/// One cached sequence.
#[derive(Debug)]
pub(crate) struct Entry<T> {
    /// llama.cpp sequence id holding the cells.
    pub(crate) slot: i32,
    /// The tokens at positions `0..tokens.len()` of that sequence.
    pub(crate) tokens: Vec<T>,
    answer: Option<Answer>,
    last_use: u64,
}

/// The entries of one context.
#[derive(Debug)]
pub(crate) struct PromptCache<T> {
    entries: Vec<Entry<T>>,
    clock: u64,
}

impl<T> Default for PromptCache<T> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            clock: 0,
        }
    }
}

/// A reuse found for a prompt: copy positions `0..copy` of sequence id `slot`. Without
/// `answer` those are the prompt's first `copy` tokens; with it, the prompt and all but
/// the last token of the answer to replay.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Hit {
    pub(crate) slot: i32,
    pub(crate) copy: usize,
    pub(crate) answer: Option<Answer>,
}

/// How a new sequence samples, for [`PromptCache::lookup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sampling {
    /// Deterministic: an answer recorded under the same `key` for the same prompt is its
    /// answer (its first `max_tokens` tokens), if it has log-probabilities when
    /// `logprobs` asks for them and, unless the sampling is `resumable` (greedy: no state
    /// but the tokens), it ended on an end-of-generation token or has `max_tokens` tokens.
    Deterministic {
        key: u64,
        logprobs: bool,
        max_tokens: usize,
        resumable: bool,
    },
    /// Sampled without a seed: only the prompt's cells can be reused.
    Other,
}

fn common_prefix<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl<T: PartialEq + Clone> PromptCache<T> {
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Cells the entries hold (each counted whole).
    pub(crate) fn cells(&self) -> usize {
        self.entries.iter().map(|e| e.tokens.len()).sum()
    }

    /// Whether sequence id `slot` holds an entry.
    pub(crate) fn holds(&self, slot: i32) -> bool {
        self.entries.iter().any(|e| e.slot == slot)
    }

    /// What to reuse for a sequence reading `prompt` and sampling as `sampling`: a
    /// recorded answer to this very prompt when the sampling is deterministic (no more of
    /// it, and of its cells, than the request can use), else the entry sharing the
    /// longest prefix with it, at most `prompt.len() - 1` tokens (the last prompt token is
    /// decoded: its logits give the first token). Marks the entry used.
    pub(crate) fn lookup(&mut self, prompt: &[T], sampling: Sampling) -> Option<Hit> {
        let most = prompt.len().saturating_sub(1);
        let replays = |e: &Entry<T>| match (sampling, &e.answer) {
            (
                Sampling::Deterministic {
                    key,
                    logprobs,
                    max_tokens,
                    resumable,
                },
                Some(a),
            ) => {
                a.key == key
                    && a.prompt_len == prompt.len()
                    && e.tokens.starts_with(prompt)
                    // The cells hold the prompt and all of the answer but its last token.
                    && e.tokens.len() + 1 == a.prompt_len + a.tokens.len()
                    && (!logprobs || a.logprobs.len() == a.tokens.len())
                    && (resumable || a.eos || a.tokens.len() >= max_tokens)
            }
            _ => false,
        };
        let (entry, shared, replay) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, common_prefix(&e.tokens, prompt).min(most), replays(e)))
            .max_by_key(|&(i, n, r)| (r, n, self.entries[i].last_use))?;
        if shared == 0 && !replay {
            return None;
        }
        self.clock += 1;
        let e = &mut self.entries[entry];
        e.last_use = self.clock;
        Some(match (replay, sampling, e.answer.clone()) {
            (true, Sampling::Deterministic { max_tokens, .. }, Some(mut a)) => {
                let n = a.tokens.len().min(max_tokens.max(1));
                a.tokens.truncate(n);
                a.logprobs.truncate(n);
                Hit {
                    slot: e.slot,
                    copy: prompt.len() + n - 1,
                    answer: Some(a),
                }
            }
            _ => Hit {
                slot: e.slot,
                copy: shared,
                answer: None,
            },
        })
    }

    /// Remove and return the least recently used entry other than the one of sequence id
    /// `keep` (the entry a sequence is about to copy from), if any.
    pub(crate) fn evict(&mut self, keep: Option<i32>) -> Option<Entry<T>> {
        let i = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| Some(e.slot) != keep)
            .min_by_key(|(_, e)| e.last_use)?
            .0;
        Some(self.entries.swap_remove(i))
    }

    /// Remove the entry of sequence id `slot` (a sequence takes the id over).
    pub(crate) fn take(&mut self, slot: i32) {
        self.entries.retain(|e| e.slot != slot);
    }

    /// Keep what sequence id `slot` holds, `tokens` (and the `answer` its deterministic
    /// sequence gave). Returns the sequence ids whose cells the caller must clear: `slot`
    /// itself when an entry already has these tokens (or more), else the entries that
    /// `tokens` extends (their tokens are a prefix of it: the new entry serves their
    /// prompts; their recorded answers go with them).
    pub(crate) fn insert(&mut self, slot: i32, tokens: Vec<T>, answer: Option<Answer>) -> Vec<i32> {
        if tokens.is_empty() || self.entries.iter().any(|e| e.tokens.starts_with(&tokens)) {
            return vec![slot];
        }
        let mut cleared = Vec::new();
        self.entries.retain(|e| {
            let covered = tokens.starts_with(&e.tokens);
            if covered {
                cleared.push(e.slot);
            }
            !covered
        });
        self.clock += 1;
        self.entries.push(Entry {
            slot,
            tokens,
            answer,
            last_use: self.clock,
        });
        while self.entries.len() > MAX_ENTRIES {
            let e = self.evict(Some(slot)).expect("more than one entry");
            cleared.push(e.slot);
        }
        cleared
    }

    /// Forget every entry (the caller clears the KV cache).
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }
}

/// The sequence ids of one call's context: free ones, and those the prompt cache holds
/// (taken back, least recently used first, when a sequence needs an id or cells).
pub(crate) struct Slots<'a> {
    free: Vec<i32>,
    cache: &'a mut PromptCache<LlamaToken>,
    /// Whether ended sequences are kept and prompts looked up.
    reuse: bool,
}

fn forget(ctx: &mut LlamaContext, slot: i32) {
    let _ = ctx.clear_kv_cache_seq(Some(slot as u32), None, None);
}

impl<'a> Slots<'a> {
    /// The ids `0..seqs` of a context whose KV cells hold only what `cache` records (the
    /// caller cleared the rest).
    pub(crate) fn new(seqs: usize, cache: &'a mut PromptCache<LlamaToken>, reuse: bool) -> Self {
        let free = (0..seqs as i32)
            .rev()
            .filter(|s| !cache.holds(*s))
            .collect();
        Self { free, cache, reuse }
    }

    /// Sequences that can start now: free ids and ids the cache would give back.
    pub(crate) fn room(&self) -> usize {
        self.free.len() + self.cache.len()
    }

    /// KV cells free for new reservations: `total` less `reserved` by running sequences
    /// and the cache's entries, after dropping least recently used entries while fewer
    /// than `need` are free.
    pub(crate) fn cells_free(
        &mut self,
        ctx: &mut LlamaContext,
        total: usize,
        reserved: usize,
        need: usize,
    ) -> usize {
        loop {
            let free = total.saturating_sub(reserved + self.cache.cells());
            if free >= need {
                return free;
            }
            match self.cache.evict(None) {
                Some(e) => {
                    forget(ctx, e.slot);
                    self.free.push(e.slot);
                }
                None => return free,
            }
        }
    }

    /// An id for a sequence reading `prompt` and sampling as `sampling` (the caller
    /// checked [`room`](Self::room)), with what the cache has of it copied in when
    /// `lookup` (a sequence under a LoRA adapter computes other keys and values: it
    /// neither reads nor leaves cache entries).
    pub(crate) fn take(
        &mut self,
        ctx: &mut LlamaContext,
        prompt: &[LlamaToken],
        sampling: Sampling,
        lookup: bool,
    ) -> Start {
        let hit = if self.reuse && lookup {
            self.cache.lookup(prompt, sampling)
        } else {
            None
        };
        let slot = match self.free.pop() {
            Some(s) => Some(s),
            None => self.cache.evict(hit.as_ref().map(|h| h.slot)).map(|e| {
                forget(ctx, e.slot);
                e.slot
            }),
        };
        let Some(hit) = hit else {
            return Start {
                slot: slot.expect("the caller checked for room"),
                cached: 0,
                copied: 0,
                replay: None,
            };
        };
        let slot = match slot {
            Some(s) => {
                let _ = ctx.copy_kv_cache_seq(hit.slot, s, Some(0), Some(hit.copy as u32));
                s
            }
            None => {
                // The only entry left is the one to reuse: take its id over, keeping the
                // reused cells and dropping the rest.
                self.cache.take(hit.slot);
                let _ = ctx.clear_kv_cache_seq(Some(hit.slot as u32), Some(hit.copy as u32), None);
                hit.slot
            }
        };
        Start {
            slot,
            cached: match hit.answer {
                Some(_) => prompt.len(),
                None => hit.copy,
            },
            copied: hit.copy,
            replay: hit.answer,
        }
    }

    /// Sequence `slot` ended holding `tokens` at positions `0..` (cells past them are
    /// dropped), and `answer` if it sampled deterministically: keep them for later
    /// prompts when `keep`, or free the id.
    pub(crate) fn retire(
        &mut self,
        ctx: &mut LlamaContext,
        slot: i32,
        tokens: Vec<LlamaToken>,
        answer: Option<Answer>,
        keep: bool,
    ) {
        let cleared = if self.reuse && keep {
            let _ = ctx.clear_kv_cache_seq(Some(slot as u32), Some(tokens.len() as u32), None);
            self.cache.insert(slot, tokens, answer)
        } else {
            vec![slot]
        };
        for s in cleared {
            forget(ctx, s);
            self.free.push(s);
        }
    }
}

/// How a sequence starts: its id, the prompt tokens it did not have to compute, the
/// positions copied in, and the recorded answer it replays first, if any.
pub(crate) struct Start {
    pub(crate) slot: i32,
    pub(crate) cached: usize,
    pub(crate) copied: usize,
    pub(crate) replay: Option<Answer>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const OTHER: Sampling = Sampling::Other;
    const GREEDY: Sampling = Sampling::Deterministic {
        key: 1,
        logprobs: false,
        max_tokens: 100,
        resumable: true,
    };

    #[test]
    fn longest_prefix_wins_and_the_last_prompt_token_is_left_to_decode() {
        let mut c = PromptCache::default();
        assert!(c.insert(0, vec![1, 2, 3, 4], None).is_empty());
        assert!(c.insert(1, vec![1, 2, 9], None).is_empty());
        let hit = |slot, copy| {
            Some(Hit {
                slot,
                copy,
                answer: None,
            })
        };
        assert_eq!(c.lookup(&[1, 2, 3, 4, 5], OTHER), hit(0, 4));
        assert_eq!(c.lookup(&[1, 2, 9, 9], GREEDY), hit(1, 3));
        // The same prompt again: all but its last token.
        assert_eq!(c.lookup(&[1, 2, 3, 4], OTHER), hit(0, 3));
        assert_eq!(c.lookup(&[7, 1, 2], OTHER), None);
        assert_eq!(c.lookup(&[1], OTHER), None);
        assert_eq!(c.cells(), 7);
    }

    #[test]
    fn at_most_max_entries_are_kept() {
        let mut c = PromptCache::default();
        for slot in 0..MAX_ENTRIES as i32 {
            assert!(c.insert(slot, vec![slot], None).is_empty());
        }
        c.lookup(&[0, 9], OTHER); // 0 used again: 1 is the least recently used now
        assert_eq!(c.insert(99, vec![99], None), vec![1]);
        assert_eq!(c.len(), MAX_ENTRIES);
        assert!(c.holds(0) && c.holds(99) && !c.holds(1));
    }

    #[test]
    fn least_recently_used_goes_first_but_not_the_one_being_copied() {
        let mut c = PromptCache::default();
        c.insert(0, vec![1, 2], None);
        c.insert(1, vec![3, 4], None);
        c.insert(2, vec![5, 6], None);
        let hit = c.lookup(&[1, 2, 0], OTHER).unwrap();
        assert_eq!(c.evict(None).unwrap().slot, 1);
        assert_eq!(c.evict(Some(hit.slot)).unwrap().slot, 2);
        assert!(c.evict(Some(hit.slot)).is_none(), "the entry in use stays");
        c.take(hit.slot);
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn an_extension_replaces_its_prefix_and_a_covered_sequence_is_not_kept() {
        let mut c = PromptCache::default();
        c.insert(0, vec![1, 2, 3], None);
        // A chat's next turn: the earlier entry is a prefix of it and goes.
        assert_eq!(c.insert(1, vec![1, 2, 3, 4, 5], None), vec![0]);
        assert!(!c.holds(0) && c.holds(1));
        // A sequence holding what an entry has already (or less) is not kept.
        assert_eq!(c.insert(2, vec![1, 2, 3], None), vec![2]);
        assert_eq!(c.insert(3, vec![], None), vec![3]);
        assert_eq!(c.len(), 1);
    }

    fn answer_for_test() -> Answer {
        Answer {
            prompt_len: 3,
            tokens: vec![7, 8, 9],
            logprobs: vec![],
            key: 1,
            eos: false,
        }
    }

    #[test]
    fn a_deterministic_answer_replays_only_for_its_own_prompt_and_sampling() {
        let mut c = PromptCache::default();
        // Prompt [1, 2, 3] answered [7, 8, 9]: the cells hold the prompt and 7, 8.
        let answer = answer_for_test();
        c.insert(0, vec![1, 2, 3, 7, 8], Some(answer.clone()));
        let replay = c.lookup(&[1, 2, 3], GREEDY).unwrap();
        assert_eq!(replay.copy, 5);
        assert_eq!(replay.answer, Some(answer));
        // Sampled, or wanting log-probabilities it did not record: the prompt's cells only.
        let no_replay = Some(Hit {
            slot: 0,
            copy: 2,
            answer: None,
        });
        assert_eq!(c.lookup(&[1, 2, 3], OTHER), no_replay);
        let with = |key, logprobs, max_tokens, resumable| Sampling::Deterministic {
            key,
            logprobs,
            max_tokens,
            resumable,
        };
        assert_eq!(c.lookup(&[1, 2, 3], with(1, true, 9, true)), no_replay);
        // Other sampling settings, or a seeded request wanting more than was drawn.
        assert_eq!(c.lookup(&[1, 2, 3], with(2, false, 9, true)), no_replay);
        assert_eq!(c.lookup(&[1, 2, 3], with(1, false, 4, false)), no_replay);
        assert!(c
            .lookup(&[1, 2, 3], with(1, false, 3, false))
            .unwrap()
            .answer
            .is_some());
        // A request for fewer tokens gets no more of the answer, and of its cells, than it
        // can use: 2 tokens, the prompt and the first of them.
        let short = c.lookup(&[1, 2, 3], with(1, false, 2, false)).unwrap();
        assert_eq!((short.copy, short.answer.unwrap().tokens), (4, vec![7, 8]));
        // An entry whose cells do not hold all of the answer but its last token is no
        // replay (a sequence that ended mid-replay keeps fewer).
        let mut d = PromptCache::default();
        let partial = Answer {
            tokens: vec![7, 8, 9],
            ..answer_for_test()
        };
        d.insert(0, vec![1, 2, 3, 7, 8, 9], Some(partial));
        assert_eq!(d.lookup(&[1, 2, 3], GREEDY).unwrap().answer, None);
        // A longer or shorter prompt is not this answer's.
        assert_eq!(c.lookup(&[1, 2, 3, 7, 8, 4], GREEDY).unwrap().answer, None);
        assert_eq!(c.lookup(&[1, 2], GREEDY).unwrap().answer, None);
    }
}
