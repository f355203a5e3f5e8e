use super::*;
use safetensors::tensor::TensorView;
use serde_json::json;

type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

fn write(dir: &Path, format: Format, cfg: serde_json::Value, tensors: &Tensors) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("adapter_config.json"), cfg.to_string()).unwrap();
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, s, v)| {
            let b = v
                .iter()
                .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                .collect();
            (k.clone(), s.clone(), b)
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(k, s, b)| {
            (
                k.clone(),
                TensorView::new(Dtype::F16, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join(format.weights_file())).unwrap();
}

/// (rank 2, in 3, out 4) factors with values exact in f16.
fn factors() -> (Vec<f32>, Vec<f32>) {
    let a: Vec<f32> = (0..6).map(|i| i as f32 * 0.25 - 0.5).collect();
    let b: Vec<f32> = (0..8).map(|i| 1.0 - i as f32 * 0.125).collect();
    (a, b)
}

fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols)
        .flat_map(|c| (0..rows).map(move |r| (r, c)))
        .map(|(r, c)| v[r * cols + c])
        .collect()
}

fn peft_cfg() -> serde_json::Value {
    json!({"peft_type": "LORA", "r": 2, "lora_alpha": 8, "target_modules": ["q_proj"],
           "bias": "none", "modules_to_save": null, "use_dora": false})
}

fn peft(dir: &Path, cfg: serde_json::Value) {
    let (a, b) = factors();
    let p = "base_model.model.model.layers.0.self_attn.q_proj";
    write(
        dir,
        Format::Peft,
        cfg,
        &vec![
            (format!("{p}.lora_A.weight"), vec![2, 3], a),
            (format!("{p}.lora_B.weight"), vec![4, 2], b),
        ],
    );
}

#[test]
fn peft_and_mlx_lm_layouts_read_to_the_same_factors() {
    let t = tempfile::tempdir().unwrap();
    peft(&t.path().join("peft"), peft_cfg());
    let (a, b) = factors();
    let l = "model.layers.0.self_attn.q_proj";
    write(
        &t.path().join("mlx"),
        Format::MlxLm,
        json!({"fine_tune_type": "lora", "num_layers": 1,
               "lora_parameters": {"rank": 2, "scale": 4.0, "dropout": 0.0}}),
        &vec![
            (format!("{l}.lora_a"), vec![3, 2], transpose(&a, 2, 3)),
            (format!("{l}.lora_b"), vec![2, 4], transpose(&b, 4, 2)),
        ],
    );
    let p = Adapter::open(&t.path().join("peft")).unwrap();
    let m = Adapter::open(&t.path().join("mlx")).unwrap();
    assert_eq!((p.format, m.format), (Format::Peft, Format::MlxLm));
    for ad in [&p, &m] {
        assert_eq!(ad.modules.len(), 1);
        let md = &ad.modules[0];
        assert_eq!(
            (md.name.as_str(), md.rank, md.in_features, md.out_features),
            (l, 2, 3, 4)
        );
        // PEFT: alpha 8 / r 2; mlx-lm: its scale.
        assert_eq!(md.scale, 4.0);
        assert_eq!(ad.a(md).unwrap(), a);
        assert_eq!(ad.b(md).unwrap(), b);
        assert_eq!(ad.parameters(), 14);
    }
    // delta = scale · B·A, checked at one element by hand: row 1, column 2.
    let md = &p.modules[0];
    let d = delta(&a, &b, md);
    let want = 4.0 * (b[2] * a[2] + b[3] * a[5]);
    assert_eq!(d[5], want);
    // rsLoRA divides by √r.
    let mut cfg = peft_cfg();
    cfg["use_rslora"] = json!(true);
    peft(&t.path().join("rs"), cfg);
    let rs = Adapter::open(&t.path().join("rs")).unwrap();
    assert_eq!(rs.modules[0].scale, 8.0 / 2f32.sqrt());
}

#[test]
fn what_cannot_be_applied_is_refused_by_name() {
    let t = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("dora", json!({"use_dora": true}), "`use_dora`"),
        (
            "save",
            json!({"modules_to_save": ["lm_head"]}),
            "`modules_to_save`",
        ),
        ("bias", json!({"bias": "all"}), "`bias` `all`"),
        ("type", json!({"peft_type": "LOHA"}), "`peft_type` `LOHA`"),
        ("alpha", json!({"lora_alpha": null}), "`lora_alpha`"),
        (
            "pattern",
            json!({"alpha_pattern": {"q_proj": 4}}),
            "`alpha_pattern`",
        ),
    ];
    for (name, edit, want) in cases {
        let mut cfg = peft_cfg();
        for (k, v) in edit.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        let dir = t.path().join(name);
        peft(&dir, cfg);
        let e = Adapter::open(&dir).unwrap_err().to_string();
        assert!(
            e.contains(want) && e.contains("adapter_config.json"),
            "{name}: {e}"
        );
    }
    // Tensors: a lone factor, ranks that disagree, a DoRA magnitude, a stray weight.
    let (a, b) = factors();
    let p = "base_model.model.model.layers.0.self_attn.q_proj";
    let bad: Vec<(&str, Tensors, &str)> = vec![
        (
            "lone",
            vec![(format!("{p}.lora_A.weight"), vec![2, 3], a.clone())],
            "only one of its two",
        ),
        (
            "rank",
            vec![
                (format!("{p}.lora_A.weight"), vec![2, 3], a.clone()),
                (format!("{p}.lora_B.weight"), vec![2, 4], b.clone()),
            ],
            "disagree on the rank",
        ),
        (
            "mag",
            vec![(
                format!("{p}.lora_magnitude_vector.weight"),
                vec![1, 4],
                b[..4].to_vec(),
            )],
            "DoRA",
        ),
        (
            "stray",
            vec![(
                "base_model.model.lm_head.weight".into(),
                vec![2, 4],
                b.clone(),
            )],
            "`base_model.model.lm_head.weight`",
        ),
    ];
    for (name, tensors, want) in bad {
        let dir = t.path().join(name);
        write(&dir, Format::Peft, peft_cfg(), &tensors);
        let e = Adapter::open(&dir).unwrap_err().to_string();
        assert!(
            e.contains(want) && e.contains("adapter_model.safetensors"),
            "{name}: {e}"
        );
    }
    // No weights file; not a folder.
    std::fs::create_dir_all(t.path().join("empty")).unwrap();
    std::fs::write(t.path().join("empty/adapter_config.json"), "{}").unwrap();
    let e = Adapter::open(&t.path().join("empty"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("adapters.safetensors (mlx-lm)"), "{e}");
    let e = Adapter::open(&t.path().join("missing"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a folder"), "{e}");
}

#[test]
fn a_base_without_the_layer_or_with_other_shapes_is_named() {
    let t = tempfile::tempdir().unwrap();
    peft(t.path(), peft_cfg());
    let a = Adapter::open(t.path()).unwrap();
    assert!(a.check_base("tiny", |_| Some((3, 4))).is_ok());
    let e = a.check_base("tiny", |_| None).unwrap_err().to_string();
    assert!(
        e.contains("`model.layers.0.self_attn.q_proj` is not a linear layer of base model `tiny`"),
        "{e}"
    );
    let e = a
        .check_base("tiny", |_| Some((3, 8)))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("3 → 4 in the adapter, 3 → 8 in base model `tiny`"),
        "{e}"
    );
}
