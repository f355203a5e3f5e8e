//! Text embedding (`embed`) requests.

use abi_stable::{
    std_types::{ROption, RString, RVec},
    StableAbi,
};

/// How token vectors become one vector per text. An open set of codes.
#[repr(transparent)]
#[derive(
    StableAbi, serde::Serialize, serde::Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default,
)]
pub struct Pooling(pub u8);

impl Pooling {
    /// What the model's own configuration says (sentence-transformers `1_Pooling`).
    pub const MODEL_DEFAULT: Self = Self(0);
    /// Mean over non-padding tokens.
    pub const MEAN: Self = Self(1);
    /// The first (`[CLS]`) token.
    pub const CLS: Self = Self(2);
    /// The last non-padding token.
    pub const LAST: Self = Self(3);

    /// CLI / HTTP name.
    pub fn name(self) -> &'static str {
        match self {
            Self::MODEL_DEFAULT => "default",
            Self::MEAN => "mean",
            Self::CLS => "cls",
            Self::LAST => "last",
            _ => "unknown",
        }
    }

    /// Parse a CLI / HTTP name.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::MODEL_DEFAULT, Self::MEAN, Self::CLS, Self::LAST]
            .into_iter()
            .find(|p| p.name() == name)
    }
}

/// Embed a batch of texts.
#[repr(C)]
#[derive(StableAbi, serde::Serialize, serde::Deserialize, Clone, Debug, Default)]
pub struct EmbedRequest {
    /// Texts to embed (at least one).
    pub texts: RVec<RString>,
    /// Pooling; [`Pooling::MODEL_DEFAULT`] follows the model's configuration.
    pub pooling: Pooling,
    /// L2-normalize the vectors; `None` follows the model's configuration.
    pub normalize: ROption<bool>,
    /// Cut texts longer than the model's maximum instead of failing.
    pub truncate: bool,
    /// Additions without an ABI change, as a JSON object (empty = none).
    pub options: RString,
}

/// Embeddings, row-major: text `i` is `data[i * dim .. (i + 1) * dim]`.
#[repr(C)]
#[derive(StableAbi, serde::Serialize, serde::Deserialize, Clone, Debug, Default)]
pub struct EmbedResponse {
    /// Vector size.
    pub dim: u32,
    /// `texts.len() * dim` floats.
    pub data: RVec<f32>,
    /// Tokens processed (without padding).
    pub prompt_tokens: u64,
}
