//! Text generation (`llm`) and vision-language (`vlm`) requests.

use crate::PluginError;
use abi_stable::{
    sabi_trait,
    sabi_types::RMut,
    std_types::{ROption, RString, RVec},
    StableAbi,
};

/// What a [`ContentPart`] holds. An open set of codes.
#[repr(transparent)]
#[derive(
    StableAbi, serde::Serialize, serde::Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default,
)]
pub struct PartKind(pub u8);

impl PartKind {
    /// UTF-8 text in `text`.
    pub const TEXT: Self = Self(0);
    /// An encoded image (PNG, JPEG, WebP, ...) in `data`, its MIME type in `mime`.
    pub const IMAGE: Self = Self(1);
    /// Encoded audio in `data` (reserved: no plugin reads it yet).
    pub const AUDIO: Self = Self(2);

    /// Lowercase name (`"text"`, `"image"`, `"audio"`, `"unknown"`).
    pub fn name(self) -> &'static str {
        match self {
            Self::TEXT => "text",
            Self::IMAGE => "image",
            Self::AUDIO => "audio",
            _ => "unknown",
        }
    }
}

/// One part of a chat message, in the order the user wrote them (text and images may
/// interleave).
#[repr(C)]
#[derive(StableAbi, serde::Serialize, serde::Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ContentPart {
    /// What the part holds.
    pub kind: PartKind,
    /// The text, for [`PartKind::TEXT`].
    pub text: RString,
    /// The encoded bytes, for media parts.
    pub data: RVec<u8>,
    /// MIME type of `data` if known (`"image/png"`), else empty.
    pub mime: RString,
}

impl ContentPart {
    /// A text part.
    pub fn text(text: impl Into<RString>) -> Self {
        Self {
            kind: PartKind::TEXT,
            text: text.into(),
            ..Default::default()
        }
    }

    /// An image part from its encoded bytes.
    pub fn image(data: Vec<u8>, mime: impl Into<RString>) -> Self {
        Self {
            kind: PartKind::IMAGE,
            data: data.into(),
            mime: mime.into(),
            ..Default::default()
        }
    }
}

/// One chat message.
#[repr(C)]
#[derive(StableAbi, serde::Serialize, serde::Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ChatMessage {
    /// `"system"`, `"user"`, `"assistant"`, `"tool"`.
    pub role: RString,
    /// The content, in order.
    pub parts: RVec<ContentPart>,
}

impl ChatMessage {
    /// A message of one text part.
    pub fn text(role: &str, text: &str) -> Self {
        Self {
            role: role.into(),
            parts: vec![ContentPart::text(text)].into(),
        }
    }

    /// The text parts joined (what a text-only model sees).
    pub fn joined_text(&self) -> String {
        self.parts
            .iter()
            .filter(|p| p.kind == PartKind::TEXT)
            .map(|p| p.text.as_str())
            .collect()
    }

    /// Whether any part is not text.
    pub fn has_media(&self) -> bool {
        self.parts.iter().any(|p| p.kind != PartKind::TEXT)
    }
}

/// One sequence to generate from: a raw prompt, or chat messages rendered with the
/// model's chat template (used when `messages` is not empty).
#[repr(C)]
#[derive(StableAbi, serde::Serialize, serde::Deserialize, Clone, Debug, Default)]
pub struct TextInput {
    /// Raw prompt, used as-is (no template) when `messages` is empty.
    pub prompt: RString,
    /// Chat messages.
    pub messages: RVec<ChatMessage>,
}

/// Sampling parameters. `temperature == 0` is greedy.
#[repr(C)]
#[derive(StableAbi, serde::Serialize, serde::Deserialize, Clone, Debug)]
pub struct SamplingParams {
    /// Softmax temperature; 0 = greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 = off.
    pub top_k: u32,
    /// Nucleus sampling mass; 1 = off.
    pub top_p: f32,
    /// Drop tokens below `min_p` × the top probability; 0 = off.
    pub min_p: f32,
    /// Multiplicative penalty on tokens already seen; 1 = off.
    pub repetition_penalty: f32,
    /// Additive penalty on tokens already seen; 0 = off.
    pub presence_penalty: f32,
    /// Additive penalty per occurrence; 0 = off.
    pub frequency_penalty: f32,
    /// RNG seed; same seed, same output.
    pub seed: ROption<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: ROption::RNone,
        }
    }
}

/// A generation request: one or more inputs decoded together.
#[repr(C)]
#[derive(StableAbi, serde::Serialize, serde::Deserialize, Clone, Debug, Default)]
pub struct GenerateRequest {
    /// Inputs; more than one is a batch (feature `batching`).
    pub inputs: RVec<TextInput>,
    /// Sampling parameters for every input.
    pub sampling: SamplingParams,
    /// Most new tokens per input.
    pub max_tokens: u32,
    /// Stop strings (may span tokens); the text stops before them.
    pub stop: RVec<RString>,
    /// Report the log-probability of each chosen token.
    pub logprobs: bool,
    /// Send [`StreamEvent`]s to the sink as tokens are produced.
    pub stream: bool,
    /// LoRA adapter (by name, loaded before) to apply to this request only.
    pub adapter: ROption<RString>,
    /// Additions without an ABI change, as a JSON object (empty = none). The host sets
    /// [`KV_BUDGET_OPTION`] in it.
    pub options: RString,
}

/// Key of [`GenerateRequest::options`] the host sets when a request applies LoRA
/// adapters: `[{"name": "a", "scale": 1.0}, …]` — adapters loaded before (by name, see
/// [`Model::adapter`](crate::Model)) and the scale of each (`scale` absent: the one it
/// was loaded with); several = the sum of their updates. [`GenerateRequest::adapter`]
/// holds the first name, for plugins that read only it.
pub const ADAPTERS_OPTION: &str = "adapters";

/// Key of [`GenerateRequest::options`] the host sets on every generation call (and on
/// every request joining a running batch): the bytes this model's KV cache may take for
/// the running batch — the memory budget less what the other loaded models are charged
/// and this one's weights and runtime. A number; absent = no limit. A plugin refuses a
/// request whose sequences (prompt + `max_tokens`, capped by the context, for each)
/// would need more, with [`ErrorKind::RESOURCE_EXHAUSTED`](crate::ErrorKind) naming
/// both figures, and gives memory above its working size back when the batch ends.
pub const KV_BUDGET_OPTION: &str = "kv_budget_bytes";

/// Key of [`GenerateRequest::options`]: `false` asks a provider with a prompt cache not to
/// reuse, replay or keep cached prompts for this call (benchmarks measure cold work). A
/// boolean; absent = the model's setting.
pub const PROMPT_CACHE_OPTION: &str = "prompt_cache";

/// Why a sequence ended. An open set of codes.
#[repr(transparent)]
#[derive(
    StableAbi, serde::Serialize, serde::Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default,
)]
pub struct FinishReason(pub u8);

impl FinishReason {
    /// Still running (stream events before the last).
    pub const NONE: Self = Self(0);
    /// An end-of-sequence token or a stop string.
    pub const STOP: Self = Self(1);
    /// `max_tokens` or the context length reached.
    pub const LENGTH: Self = Self(2);
    /// The sink asked to stop.
    pub const CANCELLED: Self = Self(3);

    /// OpenAI-style name.
    pub fn name(self) -> &'static str {
        match self {
            Self::STOP => "stop",
            Self::LENGTH => "length",
            Self::CANCELLED => "cancelled",
            _ => "",
        }
    }
}

/// One streamed step of one sequence.
#[repr(C)]
#[derive(StableAbi, serde::Serialize, serde::Deserialize, Clone, Debug)]
pub struct StreamEvent {
    /// Which input of the request.
    pub index: u32,
    /// The token produced.
    pub token: u32,
    /// Text that became final with this token (may be empty mid-character).
    pub text: RString,
    /// Log-probability of the token, when requested (else 0).
    pub logprob: f32,
    /// Set on the last event of a sequence.
    pub finish: FinishReason,
}

/// What the sink tells the plugin after each event.
#[repr(u8)]
#[derive(StableAbi, serde::Serialize, serde::Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
pub enum StreamControl {
    /// Keep generating.
    Continue,
    /// Stop every sequence of the request this event belongs to (the call's own request,
    /// or a request that joined it) and free its cache.
    Stop,
}

/// The host's receiver of streamed events, and (for providers with
/// [`Features::CONTINUOUS_BATCHING`](crate::Features::CONTINUOUS_BATCHING)) the source of
/// requests that join a running batch.
///
/// Indices: the call's own inputs are `0..inputs.len()`; the inputs of each joined request
/// take the next indices, in the order the requests joined.
#[sabi_trait]
pub trait TokenSink {
    /// Called for each event; return [`StreamControl::Stop`] to cancel the event's request.
    #[sabi(last_prefix_field)]
    fn on_event(&mut self, event: &StreamEvent) -> StreamControl;

    /// Between decode steps, a provider with free room asks for another request to join
    /// the running batch. `None`: nothing waiting. Requests that join are answered only
    /// through this sink (events, [`on_finished`](Self::on_finished)), never in the
    /// call's response.
    fn poll_join(&mut self) -> ROption<GenerateRequest> {
        ROption::RNone
    }

    /// A sequence ended (any reason); its whole output. Called for every sequence, the
    /// call's own included, before the call returns.
    fn on_finished(&mut self, _index: u32, _output: &GenerateOutput) {}

    /// The request last returned by [`poll_join`](Self::poll_join) was refused; it took no
    /// indices. With [`ErrorKind::RESOURCE_EXHAUSTED`](crate::ErrorKind) (no room now) the
    /// host keeps it first in line and the provider asks again only after a sequence
    /// ends; with any other kind the request is invalid and the host answers it.
    fn on_rejected(&mut self, _error: &PluginError) {}

    /// The prompt of sequence `index` began with `tokens` tokens whose KV cache the
    /// provider reused from an earlier sequence instead of computing it (its prompt
    /// cache; 0: nothing reused). Called once per sequence, before its first event, by
    /// providers that keep a prompt cache. Since plugin API 2.1.
    fn on_prompt_cached(&mut self, _index: u32, _tokens: u32) {}
}

/// A borrowed [`TokenSink`] crossing the ABI.
pub type TokenSinkMut<'a> = TokenSink_TO<'a, RMut<'a, ()>>;

/// Result for one input.
#[repr(C)]
#[derive(StableAbi, serde::Serialize, serde::Deserialize, Clone, Debug, Default)]
pub struct GenerateOutput {
    /// Generated text (stop string excluded).
    pub text: RString,
    /// Generated token ids.
    pub tokens: RVec<u32>,
    /// Log-probabilities of the generated tokens (empty unless requested).
    pub logprobs: RVec<f32>,
    /// Why it ended.
    pub finish: FinishReason,
    /// Tokens in the (templated) prompt.
    pub prompt_tokens: u32,
}

/// Figures for the whole request.
#[repr(C)]
#[derive(StableAbi, serde::Serialize, serde::Deserialize, Clone, Debug, Default)]
pub struct GenerationStats {
    /// Prompt tokens over all inputs.
    pub prompt_tokens: u64,
    /// Generated tokens over all inputs.
    pub generated_tokens: u64,
    /// Prompt processing speed.
    pub prefill_tokens_per_s: f64,
    /// Generation speed.
    pub decode_tokens_per_s: f64,
    /// Time from the call to the first generated token.
    pub time_to_first_token_ms: f64,
    /// Peak memory of the compute library during the request, in bytes.
    pub peak_memory_bytes: u64,
}

/// Result of a generation request.
#[repr(C)]
#[derive(StableAbi, serde::Serialize, serde::Deserialize, Clone, Debug, Default)]
pub struct GenerateResponse {
    /// One per input, in order.
    pub outputs: RVec<GenerateOutput>,
    /// Figures.
    pub stats: GenerationStats,
}
