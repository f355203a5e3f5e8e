//! The KV-cache budget the host gives each generation call
//! ([`plugin_api::text::KV_BUDGET_OPTION`]), and the one check both providers make
//! against it.

use plugin_api::text::KV_BUDGET_OPTION;

/// The bytes a request's KV cache may take, from its `options` (`None`: no limit).
pub fn kv_budget(options: &str) -> Option<u64> {
    if options.trim().is_empty() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(options).ok()?;
    v.get(KV_BUDGET_OPTION)?.as_u64()
}

/// What a batch's KV cache would take, checked against the budget.
pub struct KvBudget {
    /// Bytes allowed (`None`: no limit).
    pub limit: Option<u64>,
    /// Bytes one token of one sequence takes in the cache.
    pub bytes_per_token: u64,
}

impl KvBudget {
    /// The budget of request `options` for a cache of `bytes_per_token`.
    pub fn of(options: &str, bytes_per_token: u64) -> Self {
        Self {
            limit: kv_budget(options),
            bytes_per_token,
        }
    }

    /// Most cache tokens the budget allows (`usize::MAX` without a limit).
    pub fn max_tokens(&self) -> usize {
        match self.limit {
            None => usize::MAX,
            Some(l) => usize::try_from(l / self.bytes_per_token.max(1)).unwrap_or(usize::MAX),
        }
    }

    /// `Err` with the message to refuse with when `tokens` cache tokens (for `seqs`
    /// sequences of prompt + max_tokens each, capped by the context) exceed the budget.
    pub fn check(&self, tokens: usize, seqs: usize) -> Result<(), String> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let need = (tokens as u64).saturating_mul(self.bytes_per_token);
        if need <= limit {
            return Ok(());
        }
        Err(format!(
            "the KV cache for {seqs} sequence(s) of prompt + max_tokens ({tokens} tokens in all, \
             capped by the context) needs {}, but the memory budget leaves {} for this model's \
             KV cache; lower max_tokens or n, or raise --memory-budget",
            mib(need),
            mib(limit)
        ))
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_comes_from_the_options_and_bounds_tokens() {
        assert_eq!(kv_budget(""), None);
        assert_eq!(kv_budget("{\"temperature_fallback\": 1}"), None);
        assert_eq!(kv_budget("{\"kv_budget_bytes\": 4096}"), Some(4096));
        let b = KvBudget::of("{\"kv_budget_bytes\": 4096}", 64);
        assert_eq!(b.max_tokens(), 64);
        assert!(b.check(64, 1).is_ok());
        let e = b.check(65, 2).unwrap_err();
        assert!(
            e.contains("2 sequence(s)") && e.contains("65 tokens"),
            "{e}"
        );
        assert!(KvBudget::of("", 64).check(usize::MAX, 8).is_ok());
    }
}
