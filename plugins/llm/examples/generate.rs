//! Generate with the llm plugin's Rust API (no host, no ABI), streaming to stdout.
//!
//! ```sh
//! cargo run --release -p mlxengine-llm --example generate -- \
//!     ~/.cache/mlxengine/models/smollm2-135m-instruct "What is the capital of France?"
//! ```
use mlxengine_llm::{generate::generate_alone, load_options, loader};
use plugin_api::text::{ChatMessage, GenerateRequest, StreamControl, TextInput};
use std::io::Write;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: generate MODEL_PATH PROMPT")?;
    let prompt = args
        .next()
        .unwrap_or_else(|| "Write a haiku about the sea.".into());
    let opts = load_options(None, mlx_common::mlx_backend())?;
    let lm = loader::load(path.as_ref(), opts)?;
    let req = GenerateRequest {
        inputs: vec![TextInput {
            messages: vec![ChatMessage::text("user", &prompt)].into(),
            ..Default::default()
        }]
        .into(),
        max_tokens: 64,
        stream: true,
        ..Default::default()
    };
    let out = generate_alone(&lm, &req, &mut |ev| {
        print!("{}", ev.text);
        let _ = std::io::stdout().flush();
        StreamControl::Continue
    })?;
    let s = &out.stats;
    println!(
        "\n[{} prompt tokens, {} generated; prefill {:.1} tok/s, decode {:.1} tok/s, ttft {:.0} ms, peak {:.0} MB]",
        s.prompt_tokens, s.generated_tokens, s.prefill_tokens_per_s, s.decode_tokens_per_s, s.time_to_first_token_ms,
        s.peak_memory_bytes as f64 / 1e6
    );
    println!("token ids: {:?}", out.outputs[0].tokens);
    Ok(())
}
