//! Describe images with the vlm plugin's Rust API (no host, no ABI), streaming to stdout.
//!
//! ```sh
//! cargo run --release -p mlxengine-vlm --example describe -- \
//!     tests/fixtures/vlm/idefics3 tests/fixtures/vlm/images/field-96x80.png "Describe this image."
//! ```
//! (the tiny random checkpoint prints nonsense; point it at a SmolVLM folder for words).
use lm::generate::generate_alone;
use plugin_api::text::{ChatMessage, ContentPart, GenerateRequest, StreamControl, TextInput};
use std::io::Write;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path, images @ .., prompt] = args.as_slice() else {
        return Err("usage: describe MODEL_PATH IMAGE... PROMPT".into());
    };
    let opts = lm::load_options(None, mlx_common::mlx_backend())?;
    let model = mlxengine_vlm::load(path.as_ref(), opts)?;
    let mut parts = images
        .iter()
        .map(|p| Ok(ContentPart::image(std::fs::read(p)?, "")))
        .collect::<Result<Vec<_>, std::io::Error>>()?;
    parts.push(ContentPart::text(prompt.as_str()));
    let req = GenerateRequest {
        inputs: vec![TextInput {
            messages: vec![ChatMessage {
                role: "user".into(),
                parts: parts.into(),
            }]
            .into(),
            ..Default::default()
        }]
        .into(),
        max_tokens: 64,
        stream: true,
        ..Default::default()
    };
    let out = generate_alone(&model, &req, &mut |ev| {
        print!("{}", ev.text);
        let _ = std::io::stdout().flush();
        StreamControl::Continue
    })?;
    let s = &out.stats;
    println!(
        "\n[{} prompt tokens (images included), {} generated; ttft {:.0} ms, decode {:.1} tok/s]",
        s.prompt_tokens, s.generated_tokens, s.time_to_first_token_ms, s.decode_tokens_per_s
    );
    Ok(())
}
