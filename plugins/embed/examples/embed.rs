//! Embed sentences with the embed plugin's Rust API (no host, no ABI) and print cosine
//! similarities.
//!
//! ```sh
//! cargo run --release -p mlxengine-embed --example embed -- \
//!     ~/.cache/mlxengine/models/all-minilm-l6-v2 "A man is eating food." "A man eats bread."
//! ```
use mlxengine_embed::Encoder;
use plugin_api::embed::EmbedRequest;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: embed MODEL_DIR TEXT...")?;
    let texts: Vec<String> = args.collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // float32 weights, batches spread over every core, no memory budget
    let encoder = Encoder::load(dir.as_ref(), mlx_rs::Dtype::Float32, cores, 0)?;
    let t = std::time::Instant::now();
    let out = encoder.embed(&EmbedRequest {
        texts: texts.iter().map(|t| t.as_str().into()).collect(),
        truncate: true,
        ..Default::default()
    })?;
    let dim = out.dim as usize;
    println!(
        "{} texts, dim {dim}, {:.1} ms",
        texts.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let rows: Vec<&[f32]> = out.data.chunks(dim).collect();
    for (i, a) in rows.iter().enumerate() {
        println!("{:>2} {:?}… {}", i, &a[..4], texts[i]);
        for (j, b) in rows.iter().enumerate().skip(i + 1) {
            let cos: f32 = a.iter().zip(*b).map(|(x, y)| x * y).sum();
            println!("   cos({i},{j}) = {cos:.4}");
        }
    }
    Ok(())
}
