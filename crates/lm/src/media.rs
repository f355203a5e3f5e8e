//! What a multimodal plugin adds to the text loop: prompts whose messages hold images
//! (or other media) become token ids with the placeholders expanded, and the input
//! embeddings of those ids with the media's features in place of their tokens'. The
//! loop prefills such a row from its embeddings and decodes it as any other row.

use crate::{error::LlmError, loader::Loaded, models::Positions};
use mlx_rs::Array;
use plugin_api::text::TextInput;

/// A prompt with media, ready for the language model.
pub struct MediaPrompt {
    /// Token ids, media placeholders expanded (what the context counts).
    pub ids: Vec<u32>,
    /// Input embeddings (1, L, H) for `ids`, media features in place.
    pub embeds: Array,
    /// Multimodal RoPE positions, for models whose media tokens take positions of
    /// their own (Qwen2-VL); `None`: positions 0..L.
    pub positions: Option<MediaPositions>,
}

/// Per-section positions of a prompt's tokens and the shift of the positions after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaPositions {
    /// (S, L) row-major: section k's position of token j at `ids[k * L + j]`.
    pub ids: Vec<i32>,
    /// Sections (3 for Qwen2-VL: temporal, height, width).
    pub sections: usize,
    /// What position L + i (the i-th generated token) turns as: L + i + `delta`
    /// (the largest position + 1 − L).
    pub delta: i32,
}

impl MediaPrompt {
    /// The positions a whole-prompt forward pass from an empty cache takes.
    pub fn prefill_positions(&self) -> Positions {
        match &self.positions {
            None => Positions::Shared(0),
            Some(p) => Positions::Explicit {
                ids: Array::from_slice(&p.ids, &[p.sections as i32, 1, self.ids.len() as i32]),
                mask: None,
            },
        }
    }
}

/// The media side of a multimodal model (its encoders, its processor).
pub trait Media: Send {
    /// Input `index` of a request, whose messages hold media: rendered with the model's
    /// chat template (after `system_prompt` unless the input has a system message),
    /// the media decoded, checked and encoded.
    fn prompt(
        &self,
        lm: &Loaded,
        system_prompt: Option<&str>,
        input: &TextInput,
        index: usize,
    ) -> Result<MediaPrompt, LlmError>;
    /// Every array it holds, for the loader to evaluate on its thread.
    fn parameters(&self) -> Vec<&Array>;
    /// (parameters, bytes) of its weights.
    fn sizes(&self) -> (u64, u64) {
        self.parameters().iter().fold((0, 0), |(p, b), a| {
            (p + a.size() as u64, b + a.nbytes() as u64)
        })
    }
}

/// Whether input `input` holds media.
pub fn has_media(input: &TextInput) -> bool {
    input
        .messages
        .iter()
        .any(plugin_api::text::ChatMessage::has_media)
}
