//! Image preprocessing against transformers' processors (Pillow backend) on real
//! photographs (scikit-image 0.26.0's sample data, fetched by `scripts/setup.sh`):
//! `tests/fixtures/vlm/preprocess.json` holds the frames as 8-bit levels for the test
//! checkpoints' processors — Idefics3's (128-pixel resize, 64-pixel tiles) and LLaVA's
//! (padded to a square of the mean colour, bicubic to 32, centre crop) — the tiling
//! SmolVLM's own settings (2048, 512) give, and one photograph's frame under LLaVA 1.5's
//! own settings (336 shortest edge and crop, no padding); Qwen2-VL's smart resize and
//! patches.
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
use mlxengine_vlm::{
    image,
    models::idefics3::Processor,
    models::{llava, llava_next::Grid, qwen2_vl},
    vision::qwen_vit::{self, merge_order, Variant},
};
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
        // Reference: (frames, 3, H, W) planes; ours: RGB pixels.
        let mut got = Vec::new();
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
        println!(
            "{file} ({}): {} frames",
            p["mode"].as_str().unwrap(),
            frames.len()
        );
        compare_levels("idefics3", file, &got, p["levels"].as_str().unwrap());

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

/// Our frame's levels against the reference's (base64 of (3, H, W) planes), within the
/// decoder's bound; prints what differs.
fn compare_levels(what: &str, file: &str, got: &[u8], want_b64: &str) {
    let want = base64::engine::general_purpose::STANDARD
        .decode(want_b64)
        .unwrap();
    assert_eq!(got.len(), want.len(), "{what} {file}: frame data size");
    let diff: Vec<u8> = got.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).collect();
    let max = diff.iter().copied().max().unwrap_or(0);
    let off = diff.iter().filter(|d| **d > 0).count();
    println!(
        "{what} {file}: max |Δ| = {max} levels, {off} of {} values differ",
        want.len()
    );
    let mean = diff.iter().map(|d| f64::from(*d)).sum::<f64>() / diff.len() as f64;
    let bound = if file.ends_with(".jpg") { 5 } else { 0 };
    assert!(
        max <= bound,
        "{what} {file}: max level difference {max} > {bound}"
    );
    assert!(mean < 0.1, "{what} {file}: mean level difference {mean}");
}

/// LLaVA's frames: CLIP's normalisation undone to levels (v · std + mean) · 255, exact
/// to ~1e-4 of a level in f32, so rounding gives the level back.
#[test]
fn llava_frames_match_the_transformers_processor_on_photographs() {
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("preprocess.json")).unwrap())
            .unwrap();
    let (tiny, _) = llava::Processor::from_dir(&fixtures().join("llava"), 32, true).unwrap();
    let dir = tempfile_dir().join("llava15");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("preprocessor_config.json"),
        r#"{"crop_size": {"height": 336, "width": 336}, "do_center_crop": true, "do_normalize": true,
            "do_resize": true, "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_processor_type": "CLIPImageProcessor", "image_std": [0.26862954, 0.26130258, 0.27577711],
            "resample": 3, "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 336}}"#,
    )
    .unwrap();
    let (llava15, _) = llava::Processor::from_dir(&dir, 336, true).unwrap();
    let mean = [0.481_454_66f32, 0.457_827_5, 0.408_210_73];
    let std = [0.268_629_54f32, 0.261_302_6, 0.275_777_1];
    // A frame's levels (`img` already a frame when `framed`).
    let levels_of = |proc: &llava::Processor, img: &image::Rgb, framed: bool| -> Vec<u8> {
        let f = if framed { img.clone() } else { proc.frame(img) };
        let n = f.width * f.height;
        proc.pixels(&f)
            .iter()
            .enumerate()
            .map(|(i, v)| ((v * std[i / n] + mean[i / n]) * 255.0).round() as u8)
            .collect()
    };
    // LLaVA-NeXT: the test checkpoint's grids of 32-pixel tiles, and LLaVA 1.6's own
    // (336-pixel tiles, the default grids) for frame and image-token counts.
    let (next, _) = llava::Processor::from_dir(&fixtures().join("llava_next"), 32, false).unwrap();
    let grid = Grid::new(vec![(32, 64), (64, 32), (64, 64)], 32, 4);
    let v16 = Grid::llava_v16();
    let mut checked_big = 0;
    for p in r["photos"].as_array().unwrap() {
        let file = p["file"].as_str().unwrap();
        let img = image::decode(&std::fs::read(photos().join(file)).unwrap()).unwrap();
        let l = &p["llava"];
        let frames = grid.frames(&img, &next, next.base_side());
        assert_eq!(
            frames.len() as u64,
            l["next_frames"].as_u64().unwrap(),
            "{file}: frames"
        );
        let mut got = Vec::new();
        for f in &frames {
            got.extend(levels_of(&next, f, true));
        }
        compare_levels(
            "llava-next (grid of 32)",
            file,
            &got,
            l["next_levels"].as_str().unwrap(),
        );
        let (gh, gw) = v16.best(img.height, img.width);
        assert_eq!(
            (1 + (gh / 336) * (gw / 336)) as u64,
            l["next16_frames"].as_u64().unwrap(),
            "{file}: LLaVA 1.6 frames"
        );
        assert_eq!(
            v16.feature_count(img.height, img.width, 576) as u64,
            l["next16_tokens"].as_u64().unwrap(),
            "{file}: LLaVA 1.6 image tokens"
        );
        compare_levels(
            "llava (padded, 32)",
            file,
            &levels_of(&tiny, &img, false),
            l["levels"].as_str().unwrap(),
        );
        if let Some(big) = l.get("llava15").and_then(|v| v.as_str()) {
            compare_levels(
                "llava 1.5 (336)",
                file,
                &levels_of(&llava15, &img, false),
                big,
            );
            checked_big += 1;
        }
    }
    assert_eq!(checked_big, 1, "the fixture holds one LLaVA 1.5 frame");
}

/// Qwen2-VL's processor: the test checkpoint's (8-pixel patches merged 2×2, within
/// 64×64 pixels, bicubic) frame levels read back from our patches (so the patch order
/// is checked with them), and the patch grids of Qwen2-VL's own sizes (56² to 28²·1280
/// pixels) and of a small `max_pixels`.
#[test]
fn qwen2_vl_patches_match_the_transformers_processor_on_photographs() {
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("preprocess.json")).unwrap())
            .unwrap();
    let vision = |patch: i32| {
        qwen_vit::Config::from_json(
            Variant::Qwen2,
            &serde_json::json!({"patch_size": patch}),
            std::path::Path::new("config.json"),
        )
        .unwrap()
    };
    let tiny = qwen2_vl::Processor::from_dir(&fixtures().join("qwen2_vl"), &vision(8)).unwrap();
    let with_sizes = |name: &str, min: u64, max: u64| {
        let dir = tempfile_dir().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("preprocessor_config.json"),
            format!(
                r#"{{"min_pixels": {min}, "max_pixels": {max}, "patch_size": 14, "merge_size": 2,
                "temporal_patch_size": 2, "image_processor_type": "Qwen2VLImageProcessor"}}"#
            ),
        )
        .unwrap();
        qwen2_vl::Processor::from_dir(&dir, &vision(14)).unwrap()
    };
    let real = with_sizes("qwen-real", 56 * 56, 28 * 28 * 1280);
    let small = with_sizes("qwen-small", 256 * 28 * 28, 512 * 28 * 28);
    let mean = [0.481_454_66f32, 0.457_827_5, 0.408_210_73];
    let std = [0.268_629_54f32, 0.261_302_6, 0.275_777_1];
    let grid_of = |proc: &qwen2_vl::Processor, img: &image::Rgb| {
        let (h, w) = proc.size(img.height, img.width).unwrap();
        serde_json::json!([1, h / 14, w / 14])
    };
    for p in r["photos"].as_array().unwrap() {
        let file = p["file"].as_str().unwrap();
        let img = image::decode(&std::fs::read(photos().join(file)).unwrap()).unwrap();
        let q = &p["qwen"];
        assert_eq!(
            grid_of(&real, &img),
            q["real_grid"],
            "{file}: Qwen2-VL grid"
        );
        assert_eq!(grid_of(&small, &img), q["small_grid"], "{file}: small grid");
        let frame = tiny.frame(&img).unwrap();
        let (px, gh, gw) = tiny.patches(&frame);
        assert_eq!(
            serde_json::json!([1, gh, gw]),
            q["grid"],
            "{file}: test processor grid"
        );
        // Patch i of the tower's order back to its place in a (3, H, W) frame.
        let (ps, w) = (8, gw * 8);
        let n = gh * gw * ps * ps;
        let mut levels = vec![0u8; 3 * n];
        for (i, (row, col)) in merge_order(gh as i32, gw as i32, 2).enumerate() {
            let (row, col) = (row as usize, col as usize);
            for ch in 0..3 {
                for y in 0..ps {
                    for x in 0..ps {
                        let v = px[((i * 3 + ch) * ps + y) * ps + x];
                        levels[ch * n + (row * ps + y) * w + col * ps + x] =
                            ((v * std[ch] + mean[ch]) * 255.0).round() as u8;
                    }
                }
            }
        }
        compare_levels(
            "qwen2-vl (16-pixel grid)",
            file,
            &levels,
            q["levels"].as_str().unwrap(),
        );
    }
}

/// Our resampler against Pillow 13's own `Image.resize` (`resample.json`): the same
/// bytes for every filter, size and pass order.
#[test]
fn resizing_gives_pillows_bytes() {
    use sha2::Digest;
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("resample.json")).unwrap())
            .unwrap();
    let mut bad = Vec::new();
    let cases = r["cases"].as_array().unwrap();
    for c in cases {
        let file = c["image"].as_str().unwrap();
        let img =
            image::decode(&std::fs::read(fixtures().join("images").join(file)).unwrap()).unwrap();
        let filter = image::resample::Filter::from_pil(c["filter"].as_i64().unwrap()).unwrap();
        let (w, h) = (
            c["size"][0].as_u64().unwrap() as usize,
            c["size"][1].as_u64().unwrap() as usize,
        );
        let out = img.resize(w, h, filter);
        let got: String = sha2::Sha256::digest(&out.data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if got != c["sha256"].as_str().unwrap() {
            bad.push(format!("{file} {filter:?} {w}x{h}"));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} differ from Pillow: {bad:?}",
        bad.len(),
        cases.len()
    );
}

fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("mlxengine-vlm-pre-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
