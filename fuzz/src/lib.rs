//! Fuzz targets: every parser that reads input a model file or a client controls.
//!
//! Each target takes arbitrary bytes and must return — never panic, hang, overflow the
//! stack or allocate without bound; errors are fine. `scripts/fuzz.sh` runs them under
//! libFuzzer (the `libfuzzer` feature, on stable Rust with coverage instrumentation);
//! `tests/seeds.rs` runs each on its committed seeds (`seeds/<target>/`) in the normal
//! test suite, so a seed that once crashed stays fixed.

use std::{
    borrow::Cow,
    path::{Path, PathBuf},
};

/// A fuzz target: arbitrary bytes in, nothing out.
pub type Target = fn(&[u8]);

/// The targets by name, as `scripts/fuzz.sh` and the seed test list them.
pub const TARGETS: [(&str, Target); 6] = [
    ("gguf", gguf),
    ("safetensors", safetensors),
    ("tokenizer", tokenizer),
    ("template", template),
    ("registry", registry),
    ("openai", openai),
];

/// `f`, with a panic caught (and not reported: libFuzzer's hook would abort on it).
fn quiet_catch<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    r
}

/// A scratch folder of this process (targets that read files write the input there).
fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mlxengine-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

/// Split `data` in two at its first `0xff` byte (the second part empty without one).
fn split(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// A GGUF file: header, metadata and tensor table (`gguf::Gguf::open`), then everything
/// the host derives from them — the architecture, the Hugging Face `config.json`,
/// tensor names, the tokenizer files, the model's shape facts — and the
/// partial-download reader (`metadata_from_prefix`).
pub fn gguf(data: &[u8]) {
    let _ = gguf::metadata_from_prefix(data);
    let file = scratch().join("model.gguf");
    std::fs::write(&file, data).expect("write the input");
    if let Ok(g) = gguf::Gguf::open(&file) {
        let _ = gguf::hf::model_type(&g);
        let _ = gguf::hf::config(&g);
        let _ = gguf::hf::to_hf(&g);
        let _ = gguf::tokenizer_json_from_gguf(&g);
        let _ = gguf::tokenizer_config_from_gguf(&g);
        let _ = g.unsupported_types();
    }
    let _ = model_facts::facts(&file);
}

/// A Hub-layout model folder: `config.json` (the input up to its first `0xff`) and
/// `model.safetensors` (the rest), read as the host sizes a model (`model_facts`).
pub fn safetensors(data: &[u8]) {
    let (config, weights) = split(data);
    let dir = scratch().join("st");
    std::fs::create_dir_all(&dir).expect("model folder");
    std::fs::write(dir.join("config.json"), config).expect("write config.json");
    std::fs::write(dir.join("model.safetensors"), weights).expect("write the weights");
    let _ = model_facts::facts(&dir);
}

/// A `tokenizer.json`, loaded and used on a fixed text as the plugins use it. Loading
/// is guarded as `mlx_common::tokens::load` guards it: the tokenizers library panics on
/// some malformed files, and the plugins turn that into an error naming the file.
pub fn tokenizer(data: &[u8]) {
    let Ok(Ok(t)) = quiet_catch(|| tokenizers::Tokenizer::from_bytes(data)) else {
        return;
    };
    if let Ok(enc) = t.encode("Hello, world! 123 — ünïcode\n\tend", true) {
        let _ = t.decode(enc.get_ids(), true);
    }
    let _ = t.get_vocab_size(true);
}

/// A chat template (the input up to its first `0xff`) rendered over messages made from
/// the rest, with textgen's limits (fuel, output cap).
pub fn template(data: &[u8]) {
    let (tpl, rest) = split(data);
    let tpl = String::from_utf8_lossy(tpl);
    let rest = String::from_utf8_lossy(rest);
    let roles = ["system", "user", "assistant", "user"];
    let mut messages: Vec<textgen::Message<'_>> = rest
        .split('\n')
        .zip(roles.iter().cycle())
        .take(16)
        .map(|(content, role)| textgen::Message {
            role,
            content: textgen::Content::Text(Cow::Borrowed(content)),
        })
        .collect();
    if messages.is_empty() {
        messages.push(textgen::Message {
            role: "user",
            content: textgen::Content::Text(Cow::Borrowed("Hello")),
        });
    }
    let _ = textgen::render_chat(&tpl, &messages, "<s>", "</s>");
}

/// A `registry.toml`.
pub fn registry(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = engine::registry::parse(&text, "fuzz.toml", Path::new("/nonexistent"));
}

/// An OpenAI request body, checked the way the server's handlers check it into the
/// engine's types: the first byte picks chat completions, completions or embeddings.
pub fn openai(data: &[u8]) {
    use plugin_api::text::TextInput;
    use server::openai::{chat_messages, ChatRequest, CompletionRequest, EmbeddingRequest};
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            if let Ok(req) = ChatRequest::parse(body) {
                let (vlm, remote) = (which & 4 != 0, which & 8 != 0);
                if let Ok(chat) = chat_messages(&req.messages, "fuzz", vlm, remote) {
                    let input = TextInput {
                        prompt: "".into(),
                        messages: chat.messages.into(),
                    };
                    let _ = req.common.to_request(vec![input], 256);
                }
            }
        }
        1 => {
            if let Ok(req) = CompletionRequest::parse(body) {
                let prompts = match req.prompt {
                    server::openai::Prompt::One(p) => vec![p],
                    server::openai::Prompt::Many(v) => v,
                    server::openai::Prompt::Tokens(_) => return,
                };
                let inputs = prompts
                    .into_iter()
                    .map(|p| TextInput {
                        prompt: p.into(),
                        messages: Default::default(),
                    })
                    .collect();
                let _ = req.common.to_request(inputs, 256);
            }
        }
        _ => {
            if let Ok(req) = server::openai::parse::<EmbeddingRequest>(body) {
                if let server::openai::EmbedInput::Many(texts) = req.input {
                    let _ = engine::request::Embed::new(plugin_api::embed::EmbedRequest {
                        texts: texts.iter().map(|t| t.as_str().into()).collect(),
                        pooling: plugin_api::embed::Pooling::MODEL_DEFAULT,
                        normalize: None.into(),
                        truncate: false,
                        options: "".into(),
                    });
                }
            }
        }
    }
}
