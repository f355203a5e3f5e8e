//! Images on the ggml route: llama.cpp's multimodal library (`mtmd`) with the projector
//! GGUF beside the model (`mmproj*.gguf`, the vision tower and connector as llama.cpp's
//! converter writes them). A prompt with images is rendered by the model's chat
//! template with llama.cpp's media marker where each image was (as llama-server does),
//! tokenized by mtmd into text and image chunks (each image decoded by the `pixels`
//! crate first — the pixel limit checked from its header, EXIF orientation, RGB — so
//! both providers refuse and read images alike), and read into a sequence by mtmd's
//! helper, which encodes each image and places its embeddings (at M-RoPE positions for
//! Qwen2-VL). The sequence then decodes as any other.
//!
//! The model directory's `preprocessor_config.json`, when there, gives the pixel limits
//! (`min_pixels` / `max_pixels`, or `size.shortest_edge` / `size.longest_edge`) as
//! mtmd's image-token limits, so an image is sized as the model's own processor sizes
//! it; without one, llama.cpp's defaults for the projector apply.

use crate::{err, take_llama_errors, GPU_BUILD};
use llama_cpp_2::{
    context::LlamaContext,
    model::LlamaModel,
    mtmd::{
        MtmdBitmap, MtmdContext, MtmdContextParams, MtmdInputChunkType, MtmdInputChunks,
        MtmdInputText,
    },
    token::LlamaToken,
};
use plugin_api::{
    text::{PartKind, TextInput},
    ErrorKind, PluginError,
};
use serde_json::Value as Json;
use std::{path::Path, sync::Mutex};

/// A model's vision side.
pub(crate) struct Vision {
    /// Encoding takes `&mut`; the model's context lock already serialises requests.
    ctx: Mutex<MtmdContext>,
    marker: String,
}

/// A prompt with images, tokenized into chunks.
pub(crate) struct MediaPrompt {
    pub(crate) chunks: MtmdInputChunks,
    /// Its text tokens, in order (what repetition penalties count).
    pub(crate) text: Vec<LlamaToken>,
    /// KV cells it takes: text and image tokens.
    pub(crate) tokens: usize,
}

impl Vision {
    /// The projector `mmproj` for `model` (model `id`, in `dir`), computing with `threads`.
    pub(crate) fn open(
        id: &str,
        dir: &Path,
        mmproj: &Path,
        model: &LlamaModel,
        threads: usize,
    ) -> Result<Self, PluginError> {
        let mut params = MtmdContextParams {
            use_gpu: GPU_BUILD,
            print_timings: false,
            n_threads: threads as i32,
            ..MtmdContextParams::default()
        };
        if let Some((min, max)) = token_limits(dir)? {
            params.image_min_tokens = min;
            params.image_max_tokens = max;
        }
        let marker = params.media_marker.to_string_lossy().into_owned();
        let path = mmproj.to_string_lossy();
        take_llama_errors();
        let ctx = MtmdContext::init_from_file(&path, model, &params).map_err(|e| {
            let why = match take_llama_errors() {
                w if w.is_empty() => String::new(),
                w => format!(" (llama.cpp: {w})"),
            };
            err(ErrorKind::LOAD, id, format!("{path}: {e}{why}"))
        })?;
        if !ctx.support_vision() {
            return Err(err(
                ErrorKind::LOAD,
                id,
                format!("{path}: the projector has no vision encoder"),
            ));
        }
        Ok(Self {
            ctx: Mutex::new(ctx),
            marker,
        })
    }

    /// Input `index` tokenized: rendered by `template` (after `system_prompt` unless the
    /// input has a system message), each image decoded and placed where it was.
    pub(crate) fn prompt(
        &self,
        id: &str,
        template: &str,
        specials: (&str, &str),
        system_prompt: Option<&str>,
        input: &TextInput,
    ) -> Result<MediaPrompt, PluginError> {
        let bad = |msg: String| err(ErrorKind::INVALID_REQUEST, id, msg);
        let mut bitmaps = Vec::new();
        for (m, msg) in input.messages.iter().enumerate() {
            for (p, part) in msg.parts.iter().enumerate() {
                if part.kind == PartKind::TEXT {
                    continue;
                }
                let place = format!("messages[{m}].content[{p}]");
                if part.kind != PartKind::IMAGE {
                    return Err(bad(format!(
                        "{place}: {} parts are not supported by this model",
                        part.kind.name()
                    )));
                }
                let img = pixels::decode(part.data.as_slice())
                    .map_err(|e| bad(format!("{place}: {e}")))?;
                let bitmap =
                    MtmdBitmap::from_image_data(img.width as u32, img.height as u32, &img.data)
                        .map_err(|e| bad(format!("{place}: {e}")))?;
                bitmaps.push(bitmap);
            }
        }
        let msgs = textgen::marked_messages(&input.messages, system_prompt, &self.marker);
        let text = textgen::render_chat(template, &msgs, specials.0, specials.1).map_err(bad)?;
        let ctx = self.ctx.lock().unwrap_or_else(|p| p.into_inner());
        let refs: Vec<&MtmdBitmap> = bitmaps.iter().collect();
        take_llama_errors();
        let chunks = ctx
            .tokenize(
                MtmdInputText {
                    text,
                    add_special: false,
                    parse_special: true,
                },
                &refs,
            )
            .map_err(|e| {
                let why = match take_llama_errors() {
                    w if w.is_empty() => String::new(),
                    w => format!(" (llama.cpp: {w})"),
                };
                bad(format!("the images did not tokenize: {e}{why}"))
            })?;
        let mut text_tokens = Vec::new();
        for i in 0..chunks.len() {
            if let Some(c) = chunks.get(i) {
                if c.chunk_type() == MtmdInputChunkType::Text {
                    text_tokens.extend_from_slice(c.text_tokens().unwrap_or_default());
                }
            }
        }
        Ok(MediaPrompt {
            tokens: chunks.total_tokens(),
            chunks,
            text: text_tokens,
        })
    }

    /// `p` read into sequence `slot` of `ctx` from position 0, logits of its last token
    /// kept; the position after it (M-RoPE counts an image by its larger side).
    pub(crate) fn eval(
        &self,
        id: &str,
        p: &MediaPrompt,
        ctx: &mut LlamaContext,
        slot: i32,
        batch: usize,
    ) -> Result<i32, PluginError> {
        let mut m = self.ctx.lock().unwrap_or_else(|p| p.into_inner());
        take_llama_errors();
        p.chunks
            .eval_chunks(&mut m, ctx, 0, slot, batch as i32, true)
            .map_err(|e| {
                let why = match take_llama_errors() {
                    w if w.is_empty() => String::new(),
                    w => format!(" (llama.cpp: {w})"),
                };
                err(
                    ErrorKind::INTERNAL,
                    id,
                    format!("reading the images: {e}{why}"),
                )
            })
    }
}

/// mtmd's image-token limits from `dir/preprocessor_config.json`'s pixel limits (each
/// token covers (patch · merge)² pixels); `None` without the file.
fn token_limits(dir: &Path) -> Result<Option<(i32, i32)>, PluginError> {
    let file = dir.join("preprocessor_config.json");
    let Ok(text) = std::fs::read_to_string(&file) else {
        return Ok(None);
    };
    let bad = |msg: String| {
        PluginError::new(
            ErrorKind::LOAD,
            format!("{}: {msg}", file.display()).as_str(),
        )
    };
    let cfg: Json = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let int = |flat: &str, sub: &str| {
        cfg.get(flat)
            .or_else(|| cfg.get("size").and_then(|s| s.get(sub)))
            .and_then(Json::as_u64)
    };
    let (Some(min), Some(max)) = (
        int("min_pixels", "shortest_edge"),
        int("max_pixels", "longest_edge"),
    ) else {
        return Ok(None);
    };
    let patch = cfg.get("patch_size").and_then(Json::as_u64).unwrap_or(14);
    let merge = cfg.get("merge_size").and_then(Json::as_u64).unwrap_or(2);
    let area = (patch * merge).pow(2).max(1);
    let tokens = |px: u64| (px / area).clamp(1, 1 << 20) as i32;
    if min > max {
        return Err(bad(format!(
            "`min_pixels` {min} is above `max_pixels` {max}"
        )));
    }
    Ok(Some((tokens(min), tokens(max))))
}
