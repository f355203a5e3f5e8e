//! What every `llm` provider (MLX, ggml, …) needs besides its compute backend, so they
//! behave the same: the model's Jinja chat template rendered like transformers does,
//! stop strings that may span tokens (held back while they could still match), and
//! UTF-8 assembly of byte-level token pieces.

mod chat;
mod memory;
mod sequence;
mod stop;

pub use chat::{
    context_overflow, marked_messages, media_messages, render_chat, text_messages, Content,
    Message, Part,
};
pub use memory::{kv_budget, KvBudget};
pub use sequence::{cancel_running, prompt_cache_allowed, stats, stop_strings, SeqOutput, Timings};
pub use stop::{holdback, TextStream, Utf8Pieces};
