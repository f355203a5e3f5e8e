//! What the `gguf` crate reads from a GGUF (the MLX provider and `mlxengine import` use
//! it) against llama.cpp reading the same: tensor values (`gguf::quants` vs ggml's own
//! dequantization, on tensors ggml's quantizer wrote) and SentencePiece tokenization
//! (`tokenizer_json_from_gguf` vs llama.cpp's SPM tokenizer, on the shipped Gemma 3).

use llama_cpp_sys_2 as sys;

/// Deterministic test data: rows of different scales and offsets, some all-positive
/// (K-quant mins), some centred, some with outliers.
fn rows(n_rows: usize, n_per_row: usize) -> Vec<f32> {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    (0..n_rows)
        .flat_map(|r| {
            let scale = [0.02, 1.0, 7.5, 300.0][r % 4];
            let offset = [0.0, 0.4, -1.0, 0.0][r % 4] * scale;
            (0..n_per_row)
                .map(|i| {
                    let outlier = if i % 97 == 0 { 6.0 } else { 1.0 };
                    next() * scale * outlier + offset
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn every_type_gguf_reads_dequantizes_as_ggml_does() {
    let (n_rows, n_per_row) = (8usize, 1024usize);
    let src = rows(n_rows, n_per_row);
    // The float types and every quantized type `gguf::quants` reads.
    for ty in [0u32, 1, 30, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14] {
        let name = gguf::type_name(ty);
        assert!(gguf::quants::is_supported(ty), "{name}");
        let (block, bytes) = gguf::quants::block_layout(ty).unwrap();
        // SAFETY: `ty` is a ggml type id; the traits are static.
        let traits = unsafe { &*sys::ggml_get_type_traits(ty as sys::ggml_type) };
        assert_eq!(
            (traits.blck_size as usize, traits.type_size),
            (block, bytes),
            "{name}: block layout"
        );
        let size = n_rows * n_per_row / block * bytes;
        let mut q = vec![0u8; size];
        // SAFETY: `src` holds n_rows × n_per_row floats, `q` the bytes ggml's row size
        // gives for them (checked against the traits above); no importance matrix, which
        // none of these types requires.
        let written = unsafe {
            assert!(!sys::ggml_quantize_requires_imatrix(ty as sys::ggml_type));
            sys::ggml_quantize_chunk(
                ty as sys::ggml_type,
                src.as_ptr(),
                q.as_mut_ptr().cast(),
                0,
                n_rows as i64,
                n_per_row as i64,
                std::ptr::null(),
            )
        };
        assert_eq!(written, size, "{name}: bytes written");
        let mut want = vec![0f32; src.len()];
        match traits.to_float {
            // SAFETY: `q` holds the blocks of src.len() values, `want` that many floats.
            Some(f) => unsafe { f(q.as_ptr().cast(), want.as_mut_ptr(), src.len() as i64) },
            // F32 is stored as is.
            None if ty == 0 => want.copy_from_slice(&src),
            None => panic!("{name}: ggml has no to_float"),
        }
        let mut got = Vec::new();
        gguf::quants::dequantize(ty, &q, &mut got);
        assert_eq!(got.len(), want.len(), "{name}: length");
        // Bound: both evaluate the same expression per value (scale × code ± min, from the
        // same f16 scales); ggml's C may contract a multiply-add into one FMA, which skips
        // one rounding of the product: at most half an ulp of a term, and each term is at
        // most a few times the row's largest value. 2^-22 of the row's largest value covers
        // it with margin; any wrong bit, nibble or scale is off by a whole step (≥ 2^-8 of it).
        let mut exact = 0;
        for (r, (g, w)) in got
            .chunks(n_per_row)
            .zip(want.chunks(n_per_row))
            .enumerate()
        {
            let peak = w.iter().fold(0f32, |m, x| m.max(x.abs()));
            let tol = peak * 2f32.powi(-22);
            for (i, (a, b)) in g.iter().zip(w).enumerate() {
                assert!(
                    (a - b).abs() <= tol,
                    "{name}: row {r} element {i}: ours {a}, ggml {b} (tolerance {tol})"
                );
                exact += usize::from(a.to_bits() == b.to_bits());
            }
        }
        println!("{name}: {exact}/{} values bit-identical to ggml", src.len());
    }
}

#[test]
fn sentencepiece_vocabularies_tokenize_as_llama_cpp_does() {
    let dir = engine::paths::models_dir().join("gemma3-270m");
    let file = gguf::model_file(&dir)
        .unwrap_or_else(|| panic!("no GGUF in {}: run scripts/setup.sh", dir.display()));
    let g = gguf::Gguf::open(&file).unwrap();
    assert_eq!(g.str("tokenizer.ggml.model"), Some("llama"));
    let ours: tokenizers::Tokenizer =
        serde_json::from_value(gguf::tokenizer_json_from_gguf(&g).unwrap()).unwrap();
    let spec = plugin_api::ModelSpec {
        id: "gemma".into(),
        kind: plugin_api::ModelKind::LLM,
        architecture: "gemma3".into(),
        path: file.display().to_string().into(),
        quantization: None.into(),
        dtype: None.into(),
        context_length: 0,
        system_prompt: None.into(),
        extra_eos: Default::default(),
        options: "".into(),
    };
    let llama = crate::Scorer::open(&spec).unwrap();
    let bos = g.int("tokenizer.ggml.bos_token_id").unwrap() as u32;
    let texts = [
        "The capital of France is",
        "  two leading spaces, and   runs   of them  ",
        "Zürich, naïve café — «quotes» and 東京 and 🦀🚀",
        "fn main() {\n\tprintln!(\"{}\", 1 + 2);\n}\n",
        "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n",
        "numbers 1234567890 3.14159 -42 1e-9",
        "\u{7f}\u{1}control\u{0}bytes and a lone \u{fffd}",
        "unbelievably antidisestablishmentarianism supercalifragilistic",
    ];
    for text in texts {
        let input = plugin_api::text::TextInput {
            prompt: text.into(),
            messages: Default::default(),
        };
        let want = llama.prompt_ids(&input).unwrap();
        let enc = ours.encode(text, false).unwrap();
        let mut got = vec![bos];
        got.extend_from_slice(enc.get_ids());
        assert_eq!(got, want, "{text:?}");
        let back = ours.decode(&got[1..], false).unwrap();
        assert_eq!(back, text, "decoding {text:?}");
    }
}
