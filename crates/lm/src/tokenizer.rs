//! Text in and out: the `tokenizers` tokenizer (from `tokenizer.json`, or built from a
//! GGUF's vocabulary), the model's own Jinja chat template, end-of-sequence ids, and
//! streaming detokenization that never splits a UTF-8 character or drops a space.

use crate::error::LlmError;
use gguf::{tokenizer_config_from_gguf, tokenizer_json_from_gguf, Gguf};
use serde_json::{json, Value as Json};
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

/// Tokenizer, chat template and special tokens of a model.
pub struct TextTokenizer {
    pub tokenizer: Tokenizer,
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// Prepend BOS to raw prompts.
    pub add_bos: bool,
    pub bos_id: Option<u32>,
    /// Every id that ends a sequence.
    pub eos_ids: Vec<u32>,
    /// Where the tokenizer came from, for messages.
    pub source: PathBuf,
}

fn token_str(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_owned),
        _ => None,
    }
}

impl TextTokenizer {
    /// From `tokenizer.json` + `tokenizer_config.json` (+ `chat_template.jinja`) in `dir`;
    /// `eos_from_config` are the ids from config.json / generation_config.json.
    pub fn from_dir(dir: &Path, eos_from_config: &[u32]) -> Result<Self, LlmError> {
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            return Err(LlmError::MissingFile(tok_path));
        }
        let tokenizer = mlx_common::tokens::load(&tok_path)?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Json = if cfg_path.is_file() {
            let text =
                std::fs::read_to_string(&cfg_path).map_err(|e| LlmError::io(&cfg_path, e))?;
            serde_json::from_str(&text).map_err(|e| LlmError::Config {
                file: cfg_path.clone(),
                msg: e.to_string(),
            })?
        } else {
            json!({})
        };
        let mut template = cfg.get("chat_template").and_then(|t| match t {
            Json::String(s) => Some(s.clone()),
            // A list of named templates: take "default".
            Json::Array(a) => a
                .iter()
                .find(|x| x.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|x| x.get("template"))
                .and_then(|t| t.as_str())
                .map(str::to_owned),
            _ => None,
        });
        // Processors (vision-language models) ship the template in `chat_template.json`.
        let json_file = dir.join("chat_template.json");
        if template.is_none() && json_file.is_file() {
            let text =
                std::fs::read_to_string(&json_file).map_err(|e| LlmError::io(&json_file, e))?;
            let v: Json = serde_json::from_str(&text).map_err(|e| LlmError::Config {
                file: json_file.clone(),
                msg: e.to_string(),
            })?;
            template = Some(
                v.get("chat_template")
                    .and_then(Json::as_str)
                    .ok_or_else(|| LlmError::Config {
                        file: json_file.clone(),
                        msg: "missing string `chat_template`".into(),
                    })?
                    .to_owned(),
            );
        }
        let jinja = dir.join("chat_template.jinja");
        if template.is_none() && jinja.is_file() {
            template = Some(std::fs::read_to_string(&jinja).map_err(|e| LlmError::io(&jinja, e))?);
        }
        let bos_token = cfg.get("bos_token").and_then(token_str);
        let eos_token = cfg.get("eos_token").and_then(token_str);
        let add_bos = cfg
            .get("add_bos_token")
            .and_then(|b| b.as_bool())
            .unwrap_or(false);
        Ok(Self::assemble(
            tokenizer,
            template,
            bos_token,
            eos_token,
            add_bos,
            eos_from_config,
            tok_path,
        ))
    }

    /// From a GGUF's metadata alone.
    pub fn from_gguf(g: &Gguf) -> Result<Self, LlmError> {
        let json = tokenizer_json_from_gguf(g)?;
        let tokenizer: Tokenizer =
            serde_json::from_value::<Tokenizer>(json).map_err(|e| LlmError::Tokenizer {
                file: g.path.clone(),
                msg: e.to_string(),
            })?;
        let cfg = tokenizer_config_from_gguf(g);
        let eos: Vec<u32> = g
            .get("tokenizer.ggml.eos_token_id")
            .and_then(|v| v.as_i64())
            .map(|i| i as u32)
            .into_iter()
            .collect();
        Ok(Self::assemble(
            tokenizer,
            cfg["chat_template"].as_str().map(str::to_owned),
            cfg["bos_token"].as_str().map(str::to_owned),
            cfg["eos_token"].as_str().map(str::to_owned),
            cfg["add_bos_token"].as_bool().unwrap_or(false),
            &eos,
            g.path.clone(),
        ))
    }

    fn assemble(
        tokenizer: Tokenizer,
        chat_template: Option<String>,
        bos_token: Option<String>,
        eos_token: Option<String>,
        add_bos: bool,
        eos_ids: &[u32],
        source: PathBuf,
    ) -> Self {
        let mut eos: Vec<u32> = eos_ids.to_vec();
        if let Some(id) = eos_token.as_deref().and_then(|t| tokenizer.token_to_id(t)) {
            eos.push(id);
        }
        eos.sort_unstable();
        eos.dedup();
        let bos_id = bos_token.as_deref().and_then(|t| tokenizer.token_to_id(t));
        Self {
            tokenizer,
            chat_template,
            bos_token,
            eos_token,
            add_bos,
            bos_id,
            eos_ids: eos,
            source,
        }
    }

    /// Add end-of-sequence tokens given as text (registry `extra_eos`).
    pub fn add_eos_tokens(&mut self, tokens: &[String]) -> Result<(), LlmError> {
        for t in tokens {
            let id = self
                .tokenizer
                .token_to_id(t)
                .ok_or_else(|| LlmError::Tokenizer {
                    file: self.source.clone(),
                    msg: format!("extra_eos token {t:?} is not in the vocabulary"),
                })?;
            if !self.eos_ids.contains(&id) {
                self.eos_ids.push(id);
            }
        }
        Ok(())
    }

    /// Token ids of a raw prompt (BOS prepended when the model wants it).
    pub fn encode_raw(&self, text: &str) -> Result<Vec<u32>, LlmError> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| LlmError::Request(format!("tokenizer: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos {
            ids.extend(self.bos_id);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Token ids of text that already holds its special tokens (a rendered template).
    pub fn encode_rendered(&self, text: &str) -> Result<Vec<u32>, LlmError> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| LlmError::Request(format!("tokenizer: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decode ids to text (special tokens kept, as the model wrote them).
    pub fn decode(&self, ids: &[u32]) -> Result<String, LlmError> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| LlmError::Request(format!("detokenizer: {e}")))
    }
}

/// Incremental detokenizer for one sequence: emits text only once it is final (no
/// half-written UTF-8 character), using a sliding window so each step decodes a few
/// tokens, not the whole sequence.
#[derive(Default)]
pub struct StreamDecoder {
    tokens: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl StreamDecoder {
    /// Add a token; returns the text that became final.
    pub fn push(&mut self, tok: &TextTokenizer, id: u32) -> Result<String, LlmError> {
        self.tokens.push(id);
        let prefix = tok.decode(&self.tokens[self.prefix_offset..self.read_offset])?;
        let full = tok.decode(&self.tokens[self.prefix_offset..])?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') && full.starts_with(&prefix) {
            let delta = full[prefix.len()..].to_owned();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.tokens.len();
            Ok(delta)
        } else {
            Ok(String::new())
        }
    }

    /// Text still held back at the end of the sequence (an incomplete character).
    pub fn flush(&mut self, tok: &TextTokenizer) -> Result<String, LlmError> {
        let prefix = tok.decode(&self.tokens[self.prefix_offset..self.read_offset])?;
        let full = tok.decode(&self.tokens[self.prefix_offset..])?;
        self.prefix_offset = self.tokens.len();
        self.read_offset = self.tokens.len();
        Ok(full.get(prefix.len()..).unwrap_or_default().to_owned())
    }
}

pub use textgen::Message;

/// Render `messages` with the model's own chat template, ending with the generation prompt.
pub fn render_chat(tok: &TextTokenizer, messages: &[Message<'_>]) -> Result<String, LlmError> {
    let template = tok
        .chat_template
        .as_deref()
        .ok_or_else(|| LlmError::Tokenizer {
            file: tok.source.clone(),
            msg: "the model has no chat template; send a raw prompt instead".into(),
        })?;
    textgen::render_chat(
        template,
        messages,
        tok.bos_token.as_deref().unwrap_or_default(),
        tok.eos_token.as_deref().unwrap_or_default(),
    )
    .map_err(LlmError::Request)
}
