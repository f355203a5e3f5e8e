//! The steps every architecture's prompt takes: the input's images decoded (each error
//! naming its message and part), the chat rendered with the model's template, each
//! image marker replaced by the architecture's expansion, the text tokenized and its
//! image tokens counted, and the embeddings of the ids built with the image features
//! in the image tokens' places.

use crate::image::{self, Rgb};
use lm::{loader::Loaded, media::MediaPrompt, LlmError};
use mlx_rs::{ops::indexing::IndexOp, Array};
use plugin_api::text::{PartKind, TextInput};

/// The decoded images of `input`, in order, each with its place
/// (`messages[m].content[p]`).
pub fn images(input: &TextInput) -> Result<Vec<(String, Rgb)>, LlmError> {
    let mut out = Vec::new();
    for (m, msg) in input.messages.iter().enumerate() {
        for (p, part) in msg.parts.iter().enumerate() {
            if part.kind == PartKind::TEXT {
                continue;
            }
            let place = format!("messages[{m}].content[{p}]");
            if part.kind != PartKind::IMAGE {
                return Err(LlmError::Request(format!(
                    "{place}: {} parts are not supported by this model",
                    part.kind.name()
                )));
            }
            let img = image::decode(part.data.as_slice())
                .map_err(|e| LlmError::Request(format!("{place}: {e}")))?;
            out.push((place, img));
        }
    }
    Ok(out)
}

/// Token ids of input `index`: its chat rendered (after `system_prompt` unless it has a
/// system message), the template's `marker` for image i replaced by `expansions[i]`.
pub fn expand(
    lm: &Loaded,
    system_prompt: Option<&str>,
    input: &TextInput,
    index: usize,
    marker: &str,
    expansions: &[String],
) -> Result<Vec<u32>, LlmError> {
    let msgs = textgen::media_messages(&input.messages, system_prompt);
    let text = lm::tokenizer::render_chat(&lm.tokenizer, &msgs)?;
    let pieces: Vec<&str> = text.split(marker).collect();
    if pieces.len() != expansions.len() + 1 {
        return Err(LlmError::Request(format!(
            "input #{index}: the chat template wrote {} image markers for {} images",
            pieces.len() - 1,
            expansions.len()
        )));
    }
    let mut expanded = String::from(pieces[0]);
    for (e, rest) in expansions.iter().zip(&pieces[1..]) {
        expanded.push_str(e);
        expanded.push_str(rest);
    }
    lm.tokenizer.encode_rendered(&expanded)
}

/// Checks that `ids` hold `want` image tokens (`token`, written as `marker`).
pub fn count_image_tokens(
    lm: &Loaded,
    ids: &[u32],
    token: u32,
    marker: &str,
    want: usize,
) -> Result<(), LlmError> {
    let n = ids.iter().filter(|&&t| t == token).count();
    if n == want {
        return Ok(());
    }
    Err(LlmError::Tokenizer {
        file: lm.tokenizer.source.clone(),
        msg: format!(
            "the prompt has {n} image tokens (id {token}) where its images need {want}: `{marker}` is not one token of this tokenizer"
        ),
    })
}

/// Checks that input `index`'s `ids` fit the model's context.
pub fn check_context(lm: &Loaded, ids: &[u32], index: usize) -> Result<(), LlmError> {
    match textgen::context_overflow([ids.len()], lm.model.max_context()) {
        None => Ok(()),
        Some(msg) => Err(LlmError::ContextLength(msg.replacen(
            "input #0",
            &format!("input #{index}"),
            1,
        ))),
    }
}

/// The prompt of `ids`: each `token` takes the next row of `feats` (image tokens,
/// hidden), every other id its embedding; evaluated, as the prefill reads it a chunk at
/// a time and a lazy array would run the vision tower again for every chunk.
pub fn splice(
    lm: &Loaded,
    ids: Vec<u32>,
    token: u32,
    feats: &Array,
) -> Result<MediaPrompt, LlmError> {
    let l = ids.len() as i32;
    let tokens = Array::from_slice(&ids.iter().map(|&t| t as i32).collect::<Vec<_>>(), &[1, l]);
    let text = lm.model.embed_tokens(&tokens)?.index((0, .., ..));
    let mut k = 0;
    let gather: Vec<i32> = ids
        .iter()
        .enumerate()
        .map(|(j, &t)| {
            if t == token {
                k += 1;
                l + k - 1
            } else {
                j as i32
            }
        })
        .collect();
    let table = mlx_rs::ops::concatenate(&[&text, &feats.as_dtype(text.dtype())?], 0)?;
    let embeds = table
        .take_axis(Array::from_slice(&gather, &[l]), 0)?
        .reshape(&[1, l, -1])?;
    embeds.eval()?;
    Ok(MediaPrompt {
        ids,
        embeds,
        positions: None,
    })
}
