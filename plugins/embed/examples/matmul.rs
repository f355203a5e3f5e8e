//! Time an f32 matmul in MLX, to check which BLAS MLX's CPU backend uses.
//!
//! ```sh
//! cargo run --release -p mlxengine-embed --example matmul -- 2048
//! # the wheel's own reference BLAS, for comparison:
//! LD_PRELOAD=$(ls ~/.cache/mlxengine/mlx/mlx-cpu-*/mlx_cpu.libs/libblas-*.netlib) \
//!     target/release/examples/matmul 2048
//! ```
use mlx_rs::{random, Array};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: i32 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1024);
    let a = random::normal::<f32>(&[n, n], None, None, None)?;
    let b = random::normal::<f32>(&[n, n], None, None, None)?;
    let run = || -> Result<f64, Box<dyn std::error::Error>> {
        let t = std::time::Instant::now();
        let c: Array = a.matmul(&b)?;
        c.eval()?;
        Ok(t.elapsed().as_secs_f64())
    };
    run()?; // warm-up
    let mut best = f64::MAX;
    for _ in 0..3 {
        best = best.min(run()?);
    }
    let gflops = 2.0 * f64::from(n).powi(3) / best / 1e9;
    println!(
        "f32 matmul {n}x{n}x{n}: {:.1} ms, {gflops:.1} GFLOP/s",
        best * 1e3
    );
    Ok(())
}
