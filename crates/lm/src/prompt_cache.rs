//! The MLX provider's prompt (prefix) cache: the KV cache of sequences that ended, kept
//! so a later prompt that starts the same way (a chat's earlier turns, a shared system
//! prompt) starts from it instead of recomputing it. Least recently used entries go
//! first; the cache is bounded in tokens, and gives way to running batches (the model's
//! KV budget counts it).

use crate::models::KvCache;

/// Most tokens kept over all entries when the budget does not say less.
pub const MAX_TOKENS: usize = 16_384;
/// Most entries kept.
pub const MAX_ENTRIES: usize = 16;
/// Shortest reuse worth a lookup hit (fewer tokens recompute as fast as they copy).
pub const MIN_REUSE: usize = 4;

struct Entry {
    /// Which adapters (names and scales) the KV was computed with: other adapters give
    /// other keys and values.
    adapters: String,
    /// The tokens whose keys and values `kv` holds, in order.
    tokens: Vec<u32>,
    /// One single-row cache per layer.
    kv: Vec<KvCache>,
    last_used: u64,
}

/// Ended sequences' KV caches, by their tokens.
#[derive(Default)]
pub struct PromptCache {
    entries: Vec<Entry>,
    clock: u64,
}

/// The registry's `prompt_cache` option (on unless `false`).
pub fn enabled_in(options: &str) -> Result<bool, String> {
    let v: serde_json::Value = match options.trim() {
        "" => return Ok(true),
        s => serde_json::from_str(s).map_err(|e| format!("options are not JSON: {e}"))?,
    };
    match v.get(plugin_api::text::PROMPT_CACHE_OPTION) {
        None => Ok(true),
        Some(b) => b
            .as_bool()
            .ok_or_else(|| format!("option `prompt_cache`: expected true or false, got {b}")),
    }
}

impl PromptCache {
    /// Tokens held over all entries.
    pub fn tokens(&self) -> usize {
        self.entries.iter().map(|e| e.tokens.len()).sum()
    }

    /// The longest cached start of `prompt` computed with `adapters`, leaving at least
    /// its last token to compute (its logits start the answer): the number of tokens
    /// reused and a cache per layer holding them. `None`: under [`MIN_REUSE`] tokens.
    pub fn lookup(&mut self, adapters: &str, prompt: &[u32]) -> Option<(usize, Vec<KvCache>)> {
        let most = prompt.len().saturating_sub(1);
        let (at, n) = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.adapters == adapters)
            .map(|(i, e)| {
                let same = e.tokens.iter().zip(prompt).take_while(|(a, b)| a == b);
                (i, same.count().min(most))
            })
            .max_by_key(|(_, n)| *n)?;
        if n < MIN_REUSE {
            return None;
        }
        self.clock += 1;
        let e = &mut self.entries[at];
        e.last_used = self.clock;
        Some((n, e.kv.iter().map(|c| c.prefix(n as i32)).collect()))
    }

    /// Keep `kv` (one single-row cache per layer) for `tokens`, then drop least recently
    /// used entries until at most `max_tokens` tokens and [`MAX_ENTRIES`] entries remain.
    /// An entry whose tokens start the new one's is superseded by it.
    pub fn insert(
        &mut self,
        adapters: &str,
        tokens: Vec<u32>,
        kv: Vec<KvCache>,
        max_tokens: usize,
    ) {
        let max_tokens = max_tokens.min(MAX_TOKENS);
        if tokens.len() < MIN_REUSE || tokens.len() > max_tokens {
            return;
        }
        self.entries
            .retain(|e| !(e.adapters == adapters && tokens.starts_with(&e.tokens)));
        if self
            .entries
            .iter()
            .any(|e| e.adapters == adapters && e.tokens.starts_with(&tokens))
        {
            return;
        }
        self.clock += 1;
        self.entries.push(Entry {
            adapters: adapters.to_owned(),
            tokens,
            kv,
            last_used: self.clock,
        });
        self.shrink_to(max_tokens);
    }

    /// Drop least recently used entries until at most `max_tokens` tokens remain.
    pub fn shrink_to(&mut self, max_tokens: usize) {
        while self.entries.len() > MAX_ENTRIES || self.tokens() > max_tokens {
            let Some(oldest) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i)
            else {
                return;
            };
            self.entries.swap_remove(oldest);
        }
    }

    /// Forget everything (the weights or the adapters changed).
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::KvStore;

    fn kv(t: i32) -> Vec<KvCache> {
        let mut c = KvCache::new(KvStore::Model);
        let a = mlx_rs::ops::ones::<f32>(&[1, 1, t, 4]).unwrap();
        c.update(a.clone(), a).unwrap();
        vec![c]
    }

    #[test]
    fn the_longest_start_is_reused_and_the_last_token_always_computed() {
        let mut pc = PromptCache::default();
        pc.insert("", (0..10).collect(), kv(10), 1000);
        pc.insert("", vec![0, 1, 2, 3, 4, 50, 51], kv(7), 1000);
        // Another adapter's entries never match.
        assert!(pc.lookup("pirate", &[0, 1, 2, 3, 4, 5, 6]).is_none());
        let (n, caches) = pc.lookup("", &[0, 1, 2, 3, 4, 5, 6, 7, 99]).unwrap();
        assert_eq!(n, 8);
        assert_eq!(caches[0].offset, 8);
        // The whole prompt cached: all but its last token reused.
        let (n, _) = pc.lookup("", &[0, 1, 2, 3, 4, 50, 51]).unwrap();
        assert_eq!(n, 6);
        assert!(pc.lookup("", &[0, 1, 2, 9]).is_none(), "under MIN_REUSE");
    }

    #[test]
    fn entries_are_superseded_and_bounded() {
        let mut pc = PromptCache::default();
        pc.insert("", (0..6).collect(), kv(6), 20);
        pc.insert("", (0..9).collect(), kv(9), 20);
        assert_eq!(pc.tokens(), 9, "the shorter entry starts the longer one");
        pc.insert("", (0..5).collect(), kv(5), 20);
        assert_eq!(pc.tokens(), 9, "already covered");
        pc.insert("", (100..112).collect(), kv(12), 20);
        // 9 + 12 > 20: the least recently used goes.
        assert_eq!(pc.tokens(), 12);
        assert!(pc.lookup("", &(0..9).collect::<Vec<_>>()).is_none());
        pc.insert("", (200..230).collect(), kv(30), 20);
        assert_eq!(pc.tokens(), 12, "an entry over the bound is not kept");
    }
}
