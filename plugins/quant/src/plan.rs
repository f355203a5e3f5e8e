//! What happens to each tensor: the request's options (recipe, per-layer rules, dtype)
//! checked once, then one decision per tensor — quantize at (group size, bits), or keep
//! in float — made the way mlx-lm's `quantize_model` and its `mixed_*` recipes make it.

use serde::Deserialize;

/// (group size, bits) of one quantized layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub group_size: i32,
    pub bits: i32,
}

/// A per-layer rule of the request (`layers` in the options, from the CLI's TOML): the
/// first rule whose pattern matches a module path decides it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// A module path (`model.layers.0.mlp.down_proj`); `*` matches any run of characters.
    #[serde(rename = "match")]
    pub pattern: String,
    pub bits: Option<i32>,
    pub group_size: Option<i32>,
    /// `false`: keep the layer in float.
    #[serde(default = "yes")]
    pub quantize: bool,
}

fn yes() -> bool {
    true
}

/// The options of a [`plugin_api::quant::QuantizeRequest`] this plugin reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// Target format; this plugin writes `mlx`.
    #[serde(default)]
    pub format: Option<String>,
    /// `mixed_2_6`, `mixed_3_4`, `mixed_3_6`, `mixed_4_6` (mlx-lm's recipes).
    #[serde(default)]
    pub recipe: Option<String>,
    #[serde(default)]
    pub layers: Vec<Rule>,
    /// Float type of what stays float and of the scales (default: the source's).
    #[serde(default)]
    pub dtype: Option<String>,
    /// Keep layers whose input size is not a multiple of the group size in float (as
    /// mlx-lm does silently) instead of refusing them.
    #[serde(default)]
    pub allow_float: bool,
    /// llama.cpp type for GGUF output (read by the ggml plugin, not here).
    #[serde(default)]
    pub gguf_type: Option<String>,
    /// Fuse a LoRA adapter into the MLX-quantized source with its own settings instead
    /// of quantizing (what `mlxengine fuse` asks for such a base).
    #[serde(default)]
    pub fuse: Option<crate::fuse::FuseOptions>,
}

/// mlx-lm's mixed recipes: (low bits, high bits).
pub const RECIPES: [(&str, i32, i32); 4] = [
    ("mixed_2_6", 2, 6),
    ("mixed_3_4", 3, 4),
    ("mixed_3_6", 3, 6),
    ("mixed_4_6", 4, 6),
];

/// The whole model's plan.
#[derive(Debug, Clone)]
pub struct Plan {
    pub default: Setting,
    recipe: Option<(i32, i32)>,
    rules: Vec<Rule>,
    pub allow_float: bool,
    /// Decoder layers (for the recipes' first/last eighth).
    num_layers: usize,
}

/// What to do with one tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Not a linear or embedding weight (norms, biases): kept.
    Keep,
    /// A layer a rule keeps in float.
    Float,
    /// Rows of this many inputs are not whole groups: kept in float (allowed) — mlx-lm
    /// leaves these out silently.
    Indivisible,
    Quantize(Setting),
}

impl Plan {
    /// The plan for `default` settings, `opts` and a model of `num_layers` layers.
    pub fn new(default: Setting, opts: &Options, num_layers: usize) -> Result<Self, String> {
        let recipe = match opts.recipe.as_deref() {
            None => None,
            Some(name) => Some(
                RECIPES
                    .iter()
                    .find(|(n, ..)| *n == name)
                    .map(|&(_, lo, hi)| (lo, hi))
                    .ok_or_else(|| {
                        format!(
                            "unknown recipe `{name}` (known: {})",
                            RECIPES.map(|r| r.0).join(", ")
                        )
                    })?,
            ),
        };
        Ok(Self {
            default,
            recipe,
            rules: opts.layers.clone(),
            allow_float: opts.allow_float,
            num_layers,
        })
    }

    /// Whether the plan gives layers their own settings (then the config lists each).
    pub fn per_layer(&self) -> bool {
        self.recipe.is_some() || !self.rules.is_empty()
    }

    /// The decision for tensor `name` of `shape`. `Err` names a layer a rule asked to
    /// quantize at a group size that does not divide its rows.
    pub fn decide(&self, name: &str, shape: &[usize]) -> Result<Decision, String> {
        let Some(path) = name.strip_suffix(".weight") else {
            return Ok(Decision::Keep);
        };
        let [_, cols] = shape else {
            return Ok(Decision::Keep);
        };
        let setting = match self.rules.iter().find(|r| glob(&r.pattern, path)) {
            Some(r) if !r.quantize => return Ok(Decision::Float),
            Some(r) => {
                let s = Setting {
                    group_size: r.group_size.unwrap_or(self.default.group_size),
                    bits: r.bits.unwrap_or(self.default.bits),
                };
                if *cols % s.group_size as usize != 0 {
                    return Err(format!(
                        "tensor `{name}`: rows of {cols} inputs are not whole groups of {} (the rule `{}` asks for it)",
                        s.group_size, r.pattern
                    ));
                }
                return Ok(Decision::Quantize(s));
            }
            None => self.recipe_setting(path),
        };
        if *cols % setting.group_size as usize != 0 {
            if self.allow_float {
                return Ok(Decision::Indivisible);
            }
            let fits: Vec<String> = [32, 64, 128]
                .iter()
                .filter(|g| *cols % *g == 0)
                .map(|g| g.to_string())
                .collect();
            return Err(format!(
                "tensor `{name}`: rows of {cols} inputs are not whole groups of {} (group sizes that fit: {}); pass --allow-float to keep such layers in float, as mlx-lm does",
                setting.group_size,
                if fits.is_empty() { "none".to_owned() } else { fits.join(", ") }
            ));
        }
        Ok(Decision::Quantize(setting))
    }

    /// mlx-lm's `mixed_quant_predicate`: more bits for `v_proj` and `down_proj` in the
    /// first and last eighth of the layers and every third layer between, and for
    /// `lm_head`.
    fn recipe_setting(&self, path: &str) -> Setting {
        let Some((low, high)) = self.recipe else {
            return self.default;
        };
        let g = self.default.group_size;
        let n = self.num_layers as i64;
        // mlx-lm finds the layer index at the first numeric segment of a `down_proj` path
        // and reads the same segment position of every path (0 where a path is shorter).
        let index = path
            .split('.')
            .nth(LAYER_SEGMENT)
            .and_then(|s| s.parse::<i64>().ok())
            .unwrap_or(0);
        let more = index < n / 8 || index >= 7 * n / 8 || (index - n / 8).rem_euclid(3) == 2;
        let bits = if ((path.contains("v_proj") || path.contains("down_proj")) && more)
            || path.contains("lm_head")
        {
            high
        } else {
            low
        };
        Setting {
            group_size: g,
            bits,
        }
    }
}

/// `model.layers.N.…`: the layer index is the third segment of every decoder path.
const LAYER_SEGMENT: usize = 2;

/// `*` matches any run of characters (dots included); everything else literally.
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const G64_4: Setting = Setting {
        group_size: 64,
        bits: 4,
    };

    fn plan(opts: Options, layers: usize) -> Plan {
        Plan::new(G64_4, &opts, layers).unwrap()
    }

    #[test]
    fn linear_and_embedding_weights_are_quantized_the_rest_kept() {
        let p = plan(Options::default(), 30);
        let q = Decision::Quantize(G64_4);
        assert_eq!(p.decide("model.embed_tokens.weight", &[49152, 576]), Ok(q));
        assert_eq!(
            p.decide("model.layers.3.mlp.down_proj.weight", &[576, 1536]),
            Ok(q)
        );
        assert_eq!(
            p.decide("model.layers.3.input_layernorm.weight", &[576]),
            Ok(Decision::Keep)
        );
        assert_eq!(
            p.decide("model.layers.3.self_attn.q_proj.bias", &[576]),
            Ok(Decision::Keep)
        );
        assert!(!p.per_layer());
    }

    #[test]
    fn indivisible_rows_are_refused_naming_the_tensor_unless_allowed() {
        let g128 = Setting {
            group_size: 128,
            bits: 4,
        };
        let p = Plan::new(g128, &Options::default(), 30).unwrap();
        let e = p
            .decide("model.layers.0.self_attn.q_proj.weight", &[576, 576])
            .unwrap_err();
        assert!(
            e.contains("`model.layers.0.self_attn.q_proj.weight`") && e.contains("576"),
            "{e}"
        );
        assert!(
            e.contains("group sizes that fit: 32, 64") && e.contains("--allow-float"),
            "{e}"
        );
        let opts = Options {
            allow_float: true,
            ..Default::default()
        };
        let p = Plan::new(g128, &opts, 30).unwrap();
        assert_eq!(
            p.decide("model.layers.0.self_attn.q_proj.weight", &[576, 576]),
            Ok(Decision::Indivisible)
        );
        assert_eq!(
            p.decide("model.layers.0.mlp.down_proj.weight", &[576, 1536]),
            Ok(Decision::Quantize(g128))
        );
    }

    #[test]
    fn rules_match_first_and_override_the_defaults() {
        let rules: Vec<Rule> = serde_json::from_str(
            r#"[{"match": "lm_head", "bits": 8},
                {"match": "model.layers.*.mlp.down_proj", "bits": 6, "group_size": 32},
                {"match": "model.layers.0.*", "quantize": false}]"#,
        )
        .unwrap();
        let p = plan(
            Options {
                layers: rules,
                ..Default::default()
            },
            30,
        );
        assert!(p.per_layer());
        assert_eq!(
            p.decide("lm_head.weight", &[49152, 576]),
            Ok(Decision::Quantize(Setting {
                group_size: 64,
                bits: 8
            }))
        );
        assert_eq!(
            p.decide("model.layers.0.mlp.down_proj.weight", &[576, 1536]),
            Ok(Decision::Quantize(Setting {
                group_size: 32,
                bits: 6
            }))
        );
        assert_eq!(
            p.decide("model.layers.0.self_attn.q_proj.weight", &[576, 576]),
            Ok(Decision::Float)
        );
        assert_eq!(
            p.decide("model.layers.1.self_attn.q_proj.weight", &[576, 576]),
            Ok(Decision::Quantize(G64_4))
        );
        let bad: Result<Vec<Rule>, _> = serde_json::from_str(r#"[{"match": "x", "bitz": 3}]"#);
        assert!(bad
            .unwrap_err()
            .to_string()
            .contains("unknown field `bitz`"));
    }

    #[test]
    fn mixed_recipes_follow_mlx_lm() {
        let opts = Options {
            recipe: Some("mixed_3_6".into()),
            ..Default::default()
        };
        let p = plan(opts, 30);
        let bits = |name: &str| match p.decide(name, &[576, 1536]).unwrap() {
            Decision::Quantize(s) => s.bits,
            d => panic!("{d:?}"),
        };
        // 30 layers: n/8 = 3, 7n/8 = 26; between, (i − 3) % 3 == 2 → 5, 8, …, 23.
        let high: Vec<usize> = (0..30)
            .filter(|i| bits(&format!("model.layers.{i}.mlp.down_proj.weight")) == 6)
            .collect();
        assert_eq!(high, [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]);
        assert_eq!(bits("model.layers.5.self_attn.v_proj.weight"), 6);
        assert_eq!(bits("model.layers.5.self_attn.q_proj.weight"), 3);
        assert_eq!(bits("model.layers.6.self_attn.v_proj.weight"), 3);
        assert_eq!(bits("lm_head.weight"), 6);
        assert_eq!(bits("model.embed_tokens.weight"), 3);
        let e = Plan::new(
            G64_4,
            &Options {
                recipe: Some("mixed_9_9".into()),
                ..Default::default()
            },
            30,
        )
        .unwrap_err();
        assert!(
            e.contains("unknown recipe `mixed_9_9`") && e.contains("mixed_4_6"),
            "{e}"
        );
    }

    #[test]
    fn globs() {
        assert!(glob("model.layers.*.mlp.*", "model.layers.12.mlp.up_proj"));
        assert!(glob("*", "lm_head"));
        assert!(glob("*head", "lm_head"));
        assert!(!glob("model.layers.1.*", "model.layers.12"));
        assert!(!glob("a*b*c", "acb"));
        assert!(glob("lm_head", "lm_head") && !glob("lm_head", "lm_head2"));
    }
}
