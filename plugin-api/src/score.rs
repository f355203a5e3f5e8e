//! Tokenizing and teacher-forced scoring (`llm`): what perplexity, prompt log-probabilities
//! and likelihood-based evaluations need from a model. Added in plugin-api 2.2.

use abi_stable::{
    std_types::{ROption, RString, RVec},
    StableAbi,
};

/// Tokenize `text` as the model's generation does.
#[repr(C)]
#[derive(StableAbi, serde::Serialize, serde::Deserialize, Clone, Debug, Default)]
pub struct TokenizeRequest {
    pub text: RString,
    /// Add the special tokens the model adds to a raw prompt (BOS where it takes one).
    pub add_special: bool,
    /// Additions without an ABI change, as a JSON object (empty = none).
    pub options: RString,
}

/// The tokens of a [`TokenizeRequest`].
#[repr(C)]
#[derive(StableAbi, serde::Serialize, serde::Deserialize, Clone, Debug, Default)]
pub struct TokenizeResponse {
    pub tokens: RVec<u32>,
    /// The model's BOS token, when it starts sequences with one.
    pub bos: ROption<u32>,
}

/// Score `tokens` by teacher forcing: the model reads them all in one context.
#[repr(C)]
#[derive(StableAbi, serde::Serialize, serde::Deserialize, Clone, Debug, Default)]
pub struct ScoreRequest {
    pub tokens: RVec<u32>,
    /// The first position whose prediction is scored (0: every token after the first).
    pub first: u32,
    /// Additions without an ABI change, as a JSON object (empty = none).
    pub options: RString,
}

/// `logprobs[i]` = log p(`tokens[first + 1 + i]` | `tokens[..= first + i]`), natural log.
#[repr(C)]
#[derive(StableAbi, serde::Serialize, serde::Deserialize, Clone, Debug, Default)]
pub struct ScoreResponse {
    pub logprobs: RVec<f32>,
}
