//! A request's texts as the model's token ids: encoded with `tokenizer.json` (cut at the
//! model's maximum when the request allows it), every id checked against the model's
//! tables, and grouped into batches of similar length.

use crate::{tokens, SentenceConfig, SentenceError};
use plugin_api::embed::{EmbedRequest, Pooling};
use std::{ops::Range, path::Path};
use tokenizers::{Encoding, Tokenizer, TruncationParams};

/// The tokenizer of an embedding model, with the limits of its tables.
pub struct TextEncoder {
    tokenizer: Tokenizer,
    truncating: Tokenizer,
    /// What sentence-transformers does after the transformer.
    pub sentence: SentenceConfig,
    /// Longest input in tokens (`max_seq_length`, at most the position table).
    pub max_len: usize,
    /// Rows of the word and token-type embedding tables: every id a request's encoding
    /// holds is checked against them (the post-processor's special tokens are not in the
    /// vocabulary the load check sees).
    table_rows: (u32, u32),
    file: std::path::PathBuf,
}

impl TextEncoder {
    /// The tokenizer and sentence-transformers files of the model in `dir`, for tables of
    /// `vocab_rows` words, `type_rows` token types and `positions` positions.
    pub fn load(
        dir: &Path,
        vocab_rows: usize,
        type_rows: usize,
        positions: usize,
    ) -> Result<Self, SentenceError> {
        let sentence = SentenceConfig::load(dir)?;
        let file = dir.join("tokenizer.json");
        if !file.is_file() {
            return Err(SentenceError::MissingFile(file));
        }
        let mut tokenizer = tokens::load(&file)?;
        tokens::check_ids(&tokenizer, vocab_rows, &file)?;
        let bad = |e: tokenizers::Error| SentenceError::Tokenizer {
            file: file.clone(),
            msg: e.to_string(),
        };
        // Padding and truncation are ours (batching, model limits), not tokenizer.json's.
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(bad)?;
        let max_len = sentence.max_seq_length.unwrap_or(usize::MAX).min(positions);
        let mut truncating = tokenizer.clone();
        truncating
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(bad)?;
        Ok(Self {
            tokenizer,
            truncating,
            sentence,
            max_len,
            table_rows: (
                u32::try_from(vocab_rows).unwrap_or(u32::MAX),
                u32::try_from(type_rows).unwrap_or(u32::MAX),
            ),
            file,
        })
    }

    /// The pooling and normalization `req` asks for, the model's where it leaves them.
    pub fn settings(&self, req: &EmbedRequest) -> Result<(Pooling, bool), SentenceError> {
        let pooling = match req.pooling {
            Pooling::MODEL_DEFAULT => self.sentence.pooling,
            p @ (Pooling::MEAN | Pooling::CLS | Pooling::LAST) => p,
            Pooling(n) => return Err(SentenceError::Request(format!("unknown pooling code {n}"))),
        };
        let normalize = req
            .normalize
            .into_option()
            .unwrap_or(self.sentence.normalize);
        Ok((pooling, normalize))
    }

    /// `req`'s texts as encodings (the host checked there is at least one), each within
    /// the model's maximum and its tables.
    pub fn encode(&self, req: &EmbedRequest) -> Result<Vec<Encoding>, SentenceError> {
        let tok = if req.truncate {
            &self.truncating
        } else {
            &self.tokenizer
        };
        let texts: Vec<&str> = req.texts.iter().map(|t| t.as_str()).collect();
        let encodings = tok
            .encode_batch(texts, true)
            .map_err(|e| SentenceError::Request(format!("tokenizer: {e}")))?;
        if let Some((i, e)) = encodings
            .iter()
            .enumerate()
            .find(|(_, e)| e.len() > self.max_len)
        {
            return Err(SentenceError::Request(format!(
                "text #{i} has {} tokens, more than the model's maximum of {} (enable truncation)",
                e.len(),
                self.max_len
            )));
        }
        let (words, types) = self.table_rows;
        for (i, e) in encodings.iter().enumerate() {
            let bad_id = e.get_ids().iter().find(|&&id| id >= words);
            let bad_type = e.get_type_ids().iter().find(|&&t| t >= types);
            if let Some(what) = bad_id
                .map(|id| format!("token id {id}, outside the {words}-row embedding table"))
                .or_else(|| {
                    bad_type.map(|t| format!("token type {t}, outside the {types}-row type table"))
                })
            {
                return Err(SentenceError::Tokenizer {
                    file: self.file.clone(),
                    msg: format!(
                        "text #{i} encodes to {what}; the tokenizer does not belong to these weights"
                    ),
                });
            }
        }
        Ok(encodings)
    }
}

/// The texts of lengths `lens` in batches: `order` lists text indices shortest first, and
/// each range of it is one batch of at most `max_rows` texts whose padded size (rows ×
/// longest) stays within `max_tokens` (a lone text longer than that is a batch of one).
pub fn batches(
    lens: &[usize],
    max_rows: usize,
    max_tokens: usize,
) -> (Vec<usize>, Vec<Range<usize>>) {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| lens[i]);
    let mut ranges = Vec::new();
    let mut start = 0;
    while start < order.len() {
        let mut end = start;
        while end < order.len() && end - start < max_rows.max(1) {
            let longest = lens[order[end]].max(1);
            if end > start && (end - start + 1) * longest > max_tokens {
                break;
            }
            end += 1;
        }
        ranges.push(start..end);
        start = end;
    }
    (order, ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_sort_by_length_and_respect_both_bounds() {
        let lens = [5, 1, 9, 3, 3, 40];
        let (order, ranges) = batches(&lens, 2, 12);
        assert_eq!(order, [1, 3, 4, 0, 2, 5]);
        // (1,3) → 2×3 = 6; (3,5) → 2×5 = 10; (9) since 2×9 > 12; (40) alone.
        assert_eq!(ranges, [0..2, 2..4, 4..5, 5..6]);
        let covered: usize = ranges.iter().map(|r| r.len()).sum();
        assert_eq!(covered, lens.len());
        assert!(batches(&[], 4, 4).1.is_empty());
    }
}
