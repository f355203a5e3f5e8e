//! Image preprocessing against transformers' Idefics3 processor (Pillow backend) on real
//! photographs (scikit-image 0.26.0's sample data, fetched by `scripts/setup.sh`):
//! `tests/fixtures/vlm/preprocess.json` holds its frames as 8-bit levels for the test
//! checkpoint's processor (128-pixel resize, 64-pixel tiles), and the tiling SmolVLM's
//! own settings (2048, 512) give.
//!
//! Tolerance: none for PNG sources. Our resampler is Pillow's integer algorithm (the
//! same fixed-point weights, the same rounding of each pass), so the levels are equal
//! and the normalised pixels within float rounding (< 1e-6 ≪ 1/255), on any CPU: no
//! step is floating point but the weights, computed in f64 and rounded to 22 bits.
//! JPEG sources also go through a decoder, and ours (zune-jpeg) reconstructs some
//! pixels up to 2 levels away from Pillow's libjpeg-turbo (another IDCT and chroma
//! upsampling rounding: on rocket.jpg 0.6 % of values by 1, 0.1 % by 2). Resizing
//! carries a difference d into at most d · Σ|w| per pass, and Lanczos-3's normalised
//! weights sum in absolute value to at most 1.55 (at image edges, where the kernel is
//! cut), so a frame may be 2 · 1.55² = 4.8 → 5 levels off; the mean must stay near the
//! decode's (< 0.1 level).

use base64::Engine;
use mlxengine_vlm::{image, models::idefics3::Processor};
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/vlm"
    ))
}

fn photos() -> PathBuf {
    let cache = std::env::var_os("MLXENGINE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/mlxengine")
        });
    let models = std::env::var_os("MLXENGINE_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache.join("models"));
    let dir = models.join("skimage-data");
    assert!(
        dir.join(".complete").exists(),
        "{} missing: run scripts/setup.sh",
        dir.display()
    );
    dir
}

#[test]
fn frames_match_the_transformers_processor_on_photographs() {
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("preprocess.json")).unwrap())
            .unwrap();
    let ours = Processor::from_dir(&fixtures().join("idefics3"), 4).unwrap();
    let smol_dir = tempfile_dir();
    std::fs::write(
        smol_dir.join("preprocessor_config.json"),
        r#"{"do_image_splitting": true, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
            "max_image_size": {"longest_edge": 512}, "resample": 1, "rescale_factor": 0.00392156862745098,
            "size": {"longest_edge": 2048}}"#,
    )
    .unwrap();
    let smol = Processor::from_dir(&smol_dir, 64).unwrap();
    for p in r["photos"].as_array().unwrap() {
        let file = p["file"].as_str().unwrap();
        let img = image::decode(&std::fs::read(photos().join(file)).unwrap()).unwrap();
        assert_eq!(
            [img.width as u64, img.height as u64],
            [
                p["size"][0].as_u64().unwrap(),
                p["size"][1].as_u64().unwrap()
            ],
            "{file}: size"
        );
        let (frames, rows, cols) = ours.frames(&img);
        assert_eq!(
            (rows as u64, cols as u64),
            (p["rows"].as_u64().unwrap(), p["cols"].as_u64().unwrap()),
            "{file}: tiles"
        );
        let want = base64::engine::general_purpose::STANDARD
            .decode(p["levels"].as_str().unwrap())
            .unwrap();
        // Reference: (frames, 3, H, W) planes; ours: RGB pixels.
        let mut got = Vec::with_capacity(want.len());
        for f in &frames {
            let px = ours.pixels(f);
            got.extend(px.iter().map(|v| ((v + 1.0) / 2.0 * 255.0).round() as u8));
            // The normalisation itself, (level / 255 - 0.5) / 0.5, of the first pixel.
            for c in 0..3 {
                let want = (f32::from(f.data[c]) / 255.0 - 0.5) / 0.5;
                assert!(
                    (px[c * f.width * f.height] - want).abs() < 1e-6,
                    "{file}: normalisation"
                );
            }
        }
        assert_eq!(got.len(), want.len(), "{file}: frame data size");
        let diff: Vec<u8> = got.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).collect();
        let max = diff.iter().copied().max().unwrap_or(0);
        let off = diff.iter().filter(|d| **d > 0).count();
        println!(
            "{file} ({}): {} frames, max |Δ| = {max} levels, {off} of {} values differ",
            p["mode"].as_str().unwrap(),
            frames.len(),
            want.len()
        );
        let mean = diff.iter().map(|d| f64::from(*d)).sum::<f64>() / diff.len() as f64;
        let bound = if file.ends_with(".jpg") { 5 } else { 0 };
        assert!(max <= bound, "{file}: max level difference {max} > {bound}");
        assert!(mean < 0.1, "{file}: mean level difference {mean}");

        let (frames, rows, cols) = smol.frames(&img);
        let s = &p["smolvlm"];
        assert_eq!(
            (frames.len() as u64, rows as u64, cols as u64),
            (
                s["frames"].as_u64().unwrap(),
                s["rows"].as_u64().unwrap(),
                s["cols"].as_u64().unwrap()
            ),
            "{file}: SmolVLM tiling"
        );
    }
}

fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("mlxengine-vlm-pre-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
