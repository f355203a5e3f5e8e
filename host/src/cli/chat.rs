//! `mlxengine chat`: interactive multi-turn chat.

use super::generate::SamplingArgs;
use anyhow::{Context, Result};
use clap::Args;
use engine::Engine;
use plugin_api::{
    text::{ChatMessage, ContentPart, StreamControl, TextInput},
    ModelKind,
};
use std::io::{BufRead, Write};

#[derive(Args)]
pub(crate) struct ChatArgs {
    /// Load dtype for MLX models loaded by this command (float32, bfloat16, float16);
    /// default: the device policy (float32 on CPU when it fits the budget).
    #[arg(long)]
    pub(crate) dtype: Option<String>,
    /// Registry id of a language model (default: the registry's default LLM).
    #[arg(long, short)]
    pub(crate) model: Option<String>,
    /// System prompt.
    #[arg(long)]
    pub(crate) system: Option<String>,
    /// Force a provider: `mlx`, `ggml`, or a plugin name (default: best probe score).
    #[arg(long)]
    pub(crate) backend: Option<String>,
    #[command(flatten)]
    pub(crate) sampling: SamplingArgs,
    #[command(flatten)]
    pub(crate) adapters: super::adapter::AdapterArgs,
}

pub(crate) fn cmd_chat(engine: &Engine, a: &ChatArgs) -> Result<()> {
    let model = match &a.model {
        Some(m) => m.clone(),
        None => engine.default_model(ModelKind::LLM)?,
    };
    let mut history: Vec<ChatMessage> = Vec::new();
    let reset = |h: &mut Vec<ChatMessage>| {
        h.clear();
        if let Some(s) = &a.system {
            h.push(ChatMessage::text("system", s));
        }
    };
    reset(&mut history);
    eprintln!(
        "chatting with {model} — /image PATH adds an image to your next message, /reset clears the history, /exit quits"
    );
    let mut images: Vec<ContentPart> = Vec::new();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        eprint!("> ");
        let Some(line) = lines.next() else { break };
        let line = line.context("reading stdin")?;
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                reset(&mut history);
                images.clear();
                eprintln!("(history cleared)");
                continue;
            }
            t if t.starts_with("/image ") => {
                let path = std::path::Path::new(t["/image ".len()..].trim());
                match super::generate::image_part(path) {
                    Ok(p) => {
                        images.push(p);
                        eprintln!("(image {} added to your next message)", path.display());
                    }
                    Err(e) => eprintln!("error: {e:#}"),
                }
                continue;
            }
            _ => {}
        }
        let mut parts = std::mem::take(&mut images);
        parts.push(ContentPart::text(line.as_str()));
        history.push(ChatMessage {
            role: "user".into(),
            parts: parts.into(),
        });
        let input = TextInput {
            prompt: "".into(),
            messages: history.clone().into(),
        };
        let req = a
            .adapters
            .apply(engine, &model, a.sampling.request(vec![input], true)?)?;
        let mut out = std::io::stdout().lock();
        let res = engine.generate_on(&model, a.backend.as_deref(), &req, &mut |ev| {
            let _ = write!(out, "{}", ev.text).and_then(|_| out.flush());
            StreamControl::Continue
        });
        println!();
        match res {
            Ok(r) => history.push(ChatMessage::text("assistant", r.outputs[0].text.as_str())),
            Err(e) => {
                // One failed turn does not end the session.
                history.pop();
                eprintln!("error: {e:#}");
            }
        }
    }
    Ok(())
}
