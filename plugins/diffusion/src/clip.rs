//! The CLIP text side of Stable Diffusion: CLIP's BPE tokenizer (from `tokenizer.json`,
//! or built from the `vocab.json` + `merges.txt` the SD repositories ship, exactly as
//! transformers converts them) and transformers' `CLIPTextModel` /
//! `CLIPTextModelWithProjection` — the `lm` crate's pre-norm encoder run causally, under
//! token and position embeddings and a final LayerNorm.

use crate::nn::{sizes, MlxResult};
use lm::encoder::{Act, Encoder, LayerNorm, Shape};
use mlx_common::{Linear, ModelError, Weights};
use mlx_rs::{ops::indexing::IndexOp, Array};
use serde_json::{json, Value as Json};
use std::path::Path;
use tokenizers::Tokenizer;

/// A prompt tokenizer padded and truncated to the text encoder's length.
pub struct ClipTokenizer {
    inner: Tokenizer,
    /// `model_max_length` (77 for every SD text encoder).
    pub max_len: usize,
    pad: u32,
    eos: u32,
}

fn tokenizer_error(file: &Path, msg: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer {
        file: file.into(),
        msg: msg.to_string(),
    }
}

impl ClipTokenizer {
    /// From a `tokenizer/` (or `tokenizer_2/`) folder.
    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        let cfg_file = dir.join("tokenizer_config.json");
        let cfg = if cfg_file.is_file() {
            crate::read_json(&cfg_file)?
        } else {
            Json::Null
        };
        let special = dir.join("special_tokens_map.json");
        let map = if special.is_file() {
            crate::read_json(&special)?
        } else {
            Json::Null
        };
        // A token setting: a string or {"content": ...}, in the config or the map.
        let token = |k: &str| -> Option<String> {
            let v = cfg.get(k).or_else(|| map.get(k))?;
            v.as_str()
                .or_else(|| v.get("content").and_then(Json::as_str))
                .map(str::to_owned)
        };
        let file = dir.join("tokenizer.json");
        let inner = if file.is_file() {
            Tokenizer::from_file(&file).map_err(|e| tokenizer_error(&file, e))?
        } else {
            let bos = token("bos_token").unwrap_or_else(|| "<|startoftext|>".into());
            let eos = token("eos_token").unwrap_or_else(|| "<|endoftext|>".into());
            let unk = token("unk_token").unwrap_or_else(|| eos.clone());
            let pad = token("pad_token").unwrap_or_else(|| eos.clone());
            from_vocab_merges(dir, &[&bos, &eos, &unk, &pad])?
        };
        let id = |name: &str, what: &str| -> Result<u32, ModelError> {
            inner.token_to_id(name).ok_or_else(|| {
                tokenizer_error(dir, format!("the {what} `{name}` is not in the vocabulary"))
            })
        };
        let eos_name = token("eos_token").unwrap_or_else(|| "<|endoftext|>".into());
        let eos = id(&eos_name, "eos_token")?;
        let pad = match token("pad_token") {
            Some(p) => id(&p, "pad_token")?,
            None => eos,
        };
        let max_len = cfg
            .get("model_max_length")
            .and_then(Json::as_u64)
            .filter(|&n| (2..=4096).contains(&n))
            .unwrap_or(77) as usize;
        Ok(Self {
            inner,
            max_len,
            pad,
            eos,
        })
    }

    /// `text` as the pipelines tokenize it: start and end tokens, truncated to
    /// `max_len` (the end token kept), padded with the pad token.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| ModelError::Request(format!("tokenizing the prompt: {e}")))?;
        let mut ids = enc.get_ids().to_vec();
        if ids.len() > self.max_len {
            ids.truncate(self.max_len - 1);
            ids.push(self.eos);
        }
        ids.resize(self.max_len, self.pad);
        Ok(ids)
    }

    /// Tokens of `text` beyond what the encoder reads (reported to users).
    pub fn overflow(&self, text: &str) -> usize {
        self.inner
            .encode(text, true)
            .map(|e| e.get_ids().len().saturating_sub(self.max_len))
            .unwrap_or(0)
    }
}

/// CLIP's fast tokenizer from the slow tokenizer's files, as transformers' converter
/// builds it (NFC, whitespace runs to one space, lowercase; CLIP's split pattern then
/// byte-level symbols; BPE with `</w>` word ends; start/end tokens around). `specials`
/// are the start, end, unknown and pad tokens: each is matched whole before anything
/// else, as transformers registers them (SDXL's second tokenizer pads with `!`, so a
/// prompt's `!` is that token too).
fn from_vocab_merges(dir: &Path, specials: &[&str; 4]) -> Result<Tokenizer, ModelError> {
    let [bos, eos, unk, _] = *specials;
    let vocab_file = dir.join("vocab.json");
    let merges_file = dir.join("merges.txt");
    for f in [&vocab_file, &merges_file] {
        if !f.is_file() {
            return Err(ModelError::MissingFile(f.clone()));
        }
    }
    let vocab = crate::read_json(&vocab_file)?;
    if !vocab.is_object() {
        return Err(tokenizer_error(
            &vocab_file,
            "not a JSON object of token ids",
        ));
    }
    let text =
        std::fs::read_to_string(&merges_file).map_err(|e| ModelError::io(&merges_file, e))?;
    let merges: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    let id = |t: &str| -> Result<u64, ModelError> {
        vocab
            .get(t)
            .and_then(Json::as_u64)
            .ok_or_else(|| tokenizer_error(&vocab_file, format!("`{t}` is not in the vocabulary")))
    };
    let (bos_id, eos_id) = (id(bos)?, id(eos)?);
    let mut added = Vec::new();
    for t in specials {
        let i = id(t)?;
        if !added.iter().any(|a: &Json| a["id"] == i) {
            added.push(
                json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                              "rstrip": false, "normalized": false, "special": true}),
            );
        }
    }
    let esc = |s: &str| {
        s.chars()
            .map(|c| {
                if "\\^$.|?*+()[]{}".contains(c) {
                    format!("\\{c}")
                } else {
                    c.to_string()
                }
            })
            .collect::<String>()
    };
    let split = format!(
        "{}|{}|'s|'t|'re|'ve|'m|'ll|'d|[\\p{{L}}]+|[\\p{{N}}]|[^\\s\\p{{L}}\\p{{N}}]+",
        esc(bos),
        esc(eos)
    );
    let spec = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"},
            {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
            {"type": "Lowercase"}]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": split}, "behavior": "Removed", "invert": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]},
        "post_processor": {"type": "RobertaProcessing", "sep": [eos, eos_id], "cls": [bos, bos_id],
            "trim_offsets": false, "add_prefix_space": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": "",
            "end_of_word_suffix": "</w>", "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": merges}
    });
    spec.to_string()
        .parse::<Tokenizer>()
        .map_err(|e| tokenizer_error(&merges_file, format!("building CLIP's tokenizer: {e}")))
}

/// `text_encoder/config.json` (`CLIPTextConfig`), resolved.
#[derive(Clone, Debug)]
pub struct ClipConfig {
    pub hidden: i32,
    pub vocab: i32,
    pub positions: i32,
    shape: Shape,
    eos_token_id: i64,
    /// `projection_dim` when the model is `CLIPTextModelWithProjection` (SDXL's second).
    pub projection: Option<i32>,
}

impl ClipConfig {
    /// From `file`.
    pub fn from_file(file: &Path) -> Result<Self, ModelError> {
        let c = crate::read_json(file)?;
        let bad = |msg: String| ModelError::Config {
            file: file.into(),
            msg,
        };
        let int = |k: &str, d: i64| -> Result<i32, ModelError> {
            let n = c.get(k).and_then(Json::as_i64).unwrap_or(d);
            if n <= 0 || n > 1 << 20 {
                return Err(bad(format!("`{k}` = {n} is out of range")));
            }
            Ok(n as i32)
        };
        let hidden = int("hidden_size", 512)?;
        let heads = int("num_attention_heads", 8)?;
        if hidden % heads != 0 {
            return Err(bad(format!(
                "`hidden_size` {hidden} does not split into {heads} heads"
            )));
        }
        let act = c
            .get("hidden_act")
            .and_then(Json::as_str)
            .unwrap_or("quick_gelu");
        let with_projection = c
            .get("architectures")
            .and_then(Json::as_array)
            .is_some_and(|a| {
                a.iter()
                    .any(|v| v.as_str() == Some("CLIPTextModelWithProjection"))
            });
        Ok(Self {
            hidden,
            vocab: int("vocab_size", 49408)?,
            positions: int("max_position_embeddings", 77)?,
            shape: Shape {
                hidden,
                intermediate: int("intermediate_size", 2048)?,
                heads,
                layers: int("num_hidden_layers", 12)?,
                eps: c
                    .get("layer_norm_eps")
                    .and_then(Json::as_f64)
                    .unwrap_or(1e-5) as f32,
                act: Act::from_name(act, "hidden_act", file)?,
            },
            eos_token_id: c.get("eos_token_id").and_then(Json::as_i64).unwrap_or(2),
            projection: with_projection
                .then(|| int("projection_dim", 512))
                .transpose()?,
        })
    }
}

/// What a text encoder gives the pipelines.
pub struct TextOutput {
    /// After the final LayerNorm (N, L, hidden): SD 1.x / 2.x's context.
    pub last: Array,
    /// After the next-to-last layer, no final norm (N, L, hidden): SDXL's.
    pub penultimate: Array,
    /// The final-norm state at each row's end token, projected when the model has a
    /// projection (N, hidden or projection): SDXL's pooled embedding.
    pub pooled: Array,
}

/// A CLIP text encoder.
pub struct ClipText {
    pub config: ClipConfig,
    token_embedding: Array,
    position_embedding: Array,
    encoder: Encoder,
    final_norm: LayerNorm,
    projection: Option<Linear>,
}

impl ClipText {
    /// Every weight of `text_encoder/` under transformers' names.
    pub fn load(config: ClipConfig, w: &mut Weights) -> Result<Self, ModelError> {
        let h = config.hidden;
        // transformers 4 saves under `text_model.` (the Hub's checkpoints); 5 without it.
        if !w.contains("text_model.embeddings.token_embedding.weight") {
            for part in ["embeddings.", "encoder.", "final_layer_norm."] {
                w.rename_prefix(part, &format!("text_model.{part}"));
            }
        }
        w.drop_where(|n| n == "text_model.embeddings.position_ids");
        let p = "text_model";
        let token_embedding = w.take(
            &format!("{p}.embeddings.token_embedding.weight"),
            &[config.vocab, h],
        )?;
        let position_embedding = w.take(
            &format!("{p}.embeddings.position_embedding.weight"),
            &[config.positions, h],
        )?;
        let encoder = Encoder::load(
            config.shape,
            w,
            &format!("{p}.encoder"),
            config.shape.layers,
        )?
        .causal();
        let final_norm = LayerNorm::load(w, &format!("{p}.final_layer_norm"), h, config.shape.eps)?;
        let projection = config
            .projection
            .map(|d| w.linear("text_projection", h, d, false))
            .transpose()?;
        Ok(Self {
            config,
            token_embedding,
            position_embedding,
            encoder,
            final_norm,
            projection,
        })
    }

    /// Rows of `ids` (N, L ≤ positions), each a padded prompt.
    pub fn forward(&self, ids: &[Vec<u32>]) -> MlxResult<TextOutput> {
        let (n, l) = (ids.len() as i32, ids[0].len() as i32);
        let flat: Vec<u32> = ids.concat();
        let idx = Array::from_slice(&flat, &[n, l]);
        let pos = self.position_embedding.index(..l).expand_dims(0)?;
        let x = self.token_embedding.take_axis(&idx, 0)?.add(&pos)?;
        let layers = self.encoder.len();
        let mut states = self.encoder.hidden_states(x, &[layers - 1, layers])?;
        let last_raw = states.pop().expect("two states asked");
        let penultimate = states.pop().expect("two states asked");
        let last = self.final_norm.forward(&last_raw)?;
        // transformers: the first end token of each row (the highest id when the
        // config's end token is the legacy 2).
        let at: Vec<i32> = ids
            .iter()
            .map(|row| {
                let pos = if self.config.eos_token_id == 2 {
                    row.iter()
                        .enumerate()
                        .max_by_key(|(i, &t)| (t, std::cmp::Reverse(*i)))
                        .map(|(i, _)| i)
                } else {
                    row.iter()
                        .position(|&t| t as i64 == self.config.eos_token_id)
                };
                pos.unwrap_or(row.len() - 1) as i32
            })
            .collect();
        let rows = Array::from_slice(&(0..n).collect::<Vec<i32>>(), &[n]);
        let cols = Array::from_slice(&at, &[n]);
        let flat_idx = rows.multiply(Array::from_int(l))?.add(&cols)?;
        let mut pooled = last.reshape(&[n * l, -1])?.take_axis(&flat_idx, 0)?;
        if let Some(p) = &self.projection {
            pooled = p.forward(&pooled)?;
        }
        Ok(TextOutput {
            last,
            penultimate,
            pooled,
        })
    }

    /// Parameter count and bytes.
    pub fn sizes(&self) -> (u64, u64) {
        let mut a = vec![&self.token_embedding, &self.position_embedding];
        a.extend(self.encoder.parameters());
        a.extend(self.final_norm.arrays());
        if let Some(p) = &self.projection {
            a.extend(p.arrays());
        }
        sizes(a)
    }
}
