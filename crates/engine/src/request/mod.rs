//! Checked requests, one type per kind. A request is checked once, where it enters: the
//! CLI builds one from its flags, the server from OpenAI JSON (two parsers of one type,
//! as ripgrep's low-level → high-level arguments), and everything below — the engine,
//! the server's scheduler, the plugins — trusts it. Plugins keep only the checks that need
//! model facts (the prompt against the context length, an unknown pooling for this model).
//!
//! The rules here are the engine's: what any plugin may rely on. Front ends may be
//! stricter (the OpenAI API caps `temperature` at 2 and `stop` at 4 strings); they check
//! their own rules before building these.

use plugin_api::{
    embed::EmbedRequest,
    quant::QuantizeRequest,
    text::{
        GenerateRequest, SamplingParams, ADAPTERS_OPTION, KV_BUDGET_OPTION, PROMPT_CACHE_OPTION,
    },
    Features,
};
use std::ops::Deref;

mod image;
pub use image::{Image, MAX_GUIDANCE, MAX_IMAGES, MAX_SIDE, MAX_STEPS, SAMPLERS};

/// Most sequences in one generation request (prompts × choices).
pub const MAX_SEQUENCES: usize = 256;
/// Most texts in one embedding request.
pub const MAX_TEXTS: usize = 2048;

/// A request that breaks a rule: the field (as plugin-api names it) and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("`{field}`: {message}")]
pub struct InvalidRequest {
    /// The field, as plugin-api names it (`max_tokens`, `inputs[2]`, `temperature`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
    /// For one item of a list (`inputs[2]`): its position, so a caller that sent the list
    /// in pieces or under another name can name the item its own way.
    pub index: Option<usize>,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> InvalidRequest {
    InvalidRequest {
        field: field.into(),
        message: message.into(),
        index: None,
    }
}

/// Item `i` of the list field `list` breaks a rule.
fn invalid_item(list: &str, i: usize, message: &str) -> InvalidRequest {
    InvalidRequest {
        index: Some(i),
        ..invalid(format!("{list}[{i}]"), message)
    }
}

/// A generation request whose fields hold: 1 to [`MAX_SEQUENCES`] inputs, each a
/// non-empty prompt or non-empty messages (not both); `max_tokens` ≥ 1; finite sampling
/// parameters in range; `options` a JSON object or empty.
#[derive(Debug, Clone)]
pub struct Generate(GenerateRequest, Vec<AdapterUse>);

/// Most LoRA adapters one request applies together.
pub const MAX_ADAPTERS: usize = 8;

/// A LoRA adapter a request applies: the id of a `lora` registry entry and its scale
/// (`None`: the entry's). Checked: a well-formed id, a finite scale within
/// ±[`MAX_ADAPTER_SCALE`](crate::registry::MAX_ADAPTER_SCALE).
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterUse {
    pub id: String,
    pub scale: Option<f32>,
}

impl AdapterUse {
    /// `id` at `scale`, checked.
    pub fn new(id: &str, scale: Option<f32>) -> Result<Self, InvalidRequest> {
        crate::registry::check_id(id).map_err(|why| invalid("adapter", why))?;
        let max = crate::registry::MAX_ADAPTER_SCALE;
        if let Some(s) = scale {
            if !(s.is_finite() && f64::from(s.abs()) <= max) {
                return Err(invalid(
                    "adapter",
                    format!("adapter `{id}`: scale {s} is not a number from -{max} to {max}"),
                ));
            }
        }
        Ok(Self {
            id: id.to_owned(),
            scale,
        })
    }

    /// `ID[:SCALE]`, as the CLI's `--adapter` takes it.
    pub fn parse(s: &str) -> Result<Self, InvalidRequest> {
        match s.rsplit_once(':') {
            Some((id, scale)) => {
                let v: f32 = scale.parse().map_err(|_| {
                    invalid(
                        "adapter",
                        format!("`{s}`: the scale after `:` is not a number (ID[:SCALE])"),
                    )
                })?;
                Self::new(id, Some(v))
            }
            None => Self::new(s, None),
        }
    }
}

impl Generate {
    /// Check `req`.
    pub fn new(req: GenerateRequest) -> Result<Self, InvalidRequest> {
        let n = req.inputs.len();
        if n == 0 {
            return Err(invalid("inputs", "the request has no inputs"));
        }
        if n > MAX_SEQUENCES {
            return Err(invalid(
                "inputs",
                format!("{n} sequences; one request takes at most {MAX_SEQUENCES}"),
            ));
        }
        for (i, input) in req.inputs.iter().enumerate() {
            match (input.prompt.is_empty(), input.messages.is_empty()) {
                (true, true) => return Err(invalid_item("inputs", i, "give a prompt or messages")),
                (false, false) => {
                    return Err(invalid_item(
                        "inputs",
                        i,
                        "give a prompt or messages, not both",
                    ))
                }
                _ => {}
            }
        }
        if req.max_tokens == 0 {
            return Err(invalid("max_tokens", "max_tokens must be at least 1"));
        }
        check_sampling(&req.sampling)?;
        check_options(req.options.as_str())?;
        let adapters = match req.adapter.as_ref().into_option() {
            Some(name) => vec![AdapterUse::new(name, None)?],
            None => Vec::new(),
        };
        Self(req, Vec::new()).with_adapters(adapters)
    }

    /// The request as the plugin ABI carries it.
    pub fn into_inner(self) -> GenerateRequest {
        self.0
    }

    /// This request applying `adapters` (in place of any it had), at most
    /// [`MAX_ADAPTERS`], each once. The plugin sees them as `adapter` (the first) and
    /// the [`ADAPTERS_OPTION`] list.
    pub fn with_adapters(mut self, adapters: Vec<AdapterUse>) -> Result<Self, InvalidRequest> {
        if adapters.len() > MAX_ADAPTERS {
            return Err(invalid(
                "adapter",
                format!(
                    "{} adapters; a request applies at most {MAX_ADAPTERS}",
                    adapters.len()
                ),
            ));
        }
        for (i, a) in adapters.iter().enumerate() {
            if adapters[..i].iter().any(|b| b.id == a.id) {
                return Err(invalid(
                    "adapter",
                    format!("adapter `{}` is named twice", a.id),
                ));
            }
        }
        self.0.adapter = adapters.first().map(|a| a.id.as_str().into()).into();
        let list: Vec<serde_json::Value> = adapters
            .iter()
            .map(|a| serde_json::json!({"name": a.id, "scale": a.scale}))
            .collect();
        if list.is_empty() {
            remove_option(&mut self.0, ADAPTERS_OPTION);
        } else {
            set_option(&mut self.0, ADAPTERS_OPTION, list.into());
        }
        self.1 = adapters;
        Ok(self)
    }

    /// The adapters it applies, in order.
    pub fn adapters(&self) -> &[AdapterUse] {
        &self.1
    }

    /// This request with the host's KV-cache budget in its options
    /// ([`plugin_api::text::KV_BUDGET_OPTION`]; a client's value for that key is replaced).
    pub(crate) fn with_kv_budget(&self, bytes: Option<u64>) -> GenerateRequest {
        let mut req = self.0.clone();
        if let Some(bytes) = bytes {
            set_option(&mut req, KV_BUDGET_OPTION, bytes.into());
        }
        req
    }

    /// This request with any prompt cache bypassed ([`plugin_api::text::PROMPT_CACHE_OPTION`]
    /// = false): what `bench` runs, so repeated runs measure the work, not a replay.
    pub fn without_prompt_cache(mut self) -> Self {
        set_option(&mut self.0, PROMPT_CACHE_OPTION, false.into());
        self
    }

    /// The plugin features serving it takes: streaming when it streams, batching when it
    /// holds more than one sequence.
    pub fn needs(&self) -> Features {
        let mut needs = Features::NONE;
        if self.0.stream {
            needs = needs.union(Features::STREAMING);
        }
        if self.0.inputs.len() > 1 {
            needs = needs.union(Features::BATCHING);
        }
        if !self.1.is_empty() {
            needs = needs.union(Features::LORA_ADAPTERS);
        }
        if self
            .0
            .inputs
            .iter()
            .any(|i| i.messages.iter().any(|m| m.has_media()))
        {
            needs = needs.union(Features::MULTI_MODAL_INPUT);
        }
        needs
    }
}

impl Deref for Generate {
    type Target = GenerateRequest;
    fn deref(&self) -> &GenerateRequest {
        &self.0
    }
}

fn check_sampling(s: &SamplingParams) -> Result<(), InvalidRequest> {
    let within = |field: &str, v: f32, lo: f32, hi: f32| {
        if v.is_finite() && (lo..=hi).contains(&v) {
            Ok(())
        } else {
            Err(invalid(
                field,
                format!("{field} must be between {lo} and {hi} (got {v})"),
            ))
        }
    };
    within("temperature", s.temperature, 0.0, f32::MAX)?;
    within("top_p", s.top_p, 0.0, 1.0)?;
    within("min_p", s.min_p, 0.0, 1.0)?;
    within("presence_penalty", s.presence_penalty, -f32::MAX, f32::MAX)?;
    within(
        "frequency_penalty",
        s.frequency_penalty,
        -f32::MAX,
        f32::MAX,
    )?;
    // Logits are divided by it: 0 would make them infinite.
    if !(s.repetition_penalty.is_finite() && s.repetition_penalty > 0.0) {
        return Err(invalid(
            "repetition_penalty",
            format!(
                "repetition_penalty must be above 0 (got {}; 1 = off)",
                s.repetition_penalty
            ),
        ));
    }
    Ok(())
}

fn check_options(options: &str) -> Result<(), InvalidRequest> {
    if options.trim().is_empty() {
        return Ok(());
    }
    match serde_json::from_str::<serde_json::Value>(options) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        Ok(_) => Err(invalid("options", "options must be a JSON object")),
        Err(e) => Err(invalid("options", format!("options is not JSON: {e}"))),
    }
}

/// An embedding request whose fields hold: 1 to [`MAX_TEXTS`] texts, none empty;
/// `options` a JSON object or empty.
#[derive(Debug, Clone)]
pub struct Embed(EmbedRequest);

impl Embed {
    /// The request in pieces, in order, each of at most `texts` texts and `chars` bytes
    /// of text (but at least one text); each keeps the request's settings and holds by
    /// the same rules.
    pub(crate) fn chunks(&self, texts: usize, chars: usize) -> Vec<Embed> {
        let mut out = Vec::new();
        let mut start = 0;
        let all = &self.0.texts;
        while start < all.len() {
            let mut end = start + 1;
            let mut size = all[start].len();
            while end < all.len() && end - start < texts && size + all[end].len() <= chars {
                size += all[end].len();
                end += 1;
            }
            out.push(Embed(EmbedRequest {
                texts: all[start..end].to_vec().into(),
                pooling: self.0.pooling,
                normalize: self.0.normalize,
                truncate: self.0.truncate,
                options: self.0.options.clone(),
            }));
            start = end;
        }
        out
    }

    /// Check `req`.
    pub fn new(req: EmbedRequest) -> Result<Self, InvalidRequest> {
        let n = req.texts.len();
        if n == 0 {
            return Err(invalid("texts", "the request has no texts"));
        }
        if n > MAX_TEXTS {
            return Err(invalid(
                "texts",
                format!("{n} texts; one request takes at most {MAX_TEXTS}"),
            ));
        }
        if let Some(i) = req.texts.iter().position(|t| t.is_empty()) {
            return Err(invalid_item("texts", i, "texts must not be empty"));
        }
        check_options(req.options.as_str())?;
        Ok(Self(req))
    }
}

impl Deref for Embed {
    type Target = EmbedRequest;
    fn deref(&self) -> &EmbedRequest {
        &self.0
    }
}

/// Bit widths an MLX affine quantization takes.
pub const QUANT_BITS: [u32; 6] = [2, 3, 4, 5, 6, 8];
/// Group sizes an MLX affine quantization takes.
pub const QUANT_GROUPS: [u32; 3] = [32, 64, 128];
/// `req.options` with `key` set to `value` (a previous value replaced).
fn remove_option(req: &mut GenerateRequest, key: &str) {
    let mut opts =
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(req.options.as_str())
            .unwrap_or_default();
    if opts.remove(key).is_some() {
        req.options = serde_json::Value::Object(opts).to_string().into();
    }
}

fn set_option(req: &mut GenerateRequest, key: &str, value: serde_json::Value) {
    let mut opts =
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(req.options.as_str())
            .unwrap_or_default(); // checked at `Generate::new`: empty or an object
    opts.insert(key.to_owned(), value);
    req.options = serde_json::Value::Object(opts).to_string().into();
}

/// MLX quantization modes `quantize` writes: affine (2–8 bits, groups of 32/64/128) and
/// mxfp4 (4-bit floats in groups of 32 with a power-of-two scale).
pub const QUANT_MODES: [&str; 2] = ["affine", "mxfp4"];
/// Output formats of `quantize`: `mlx` (mlx-lm's checkpoint) and `gguf`.
pub const QUANT_FORMATS: [&str; 2] = ["mlx", "gguf"];

/// A conversion whose fields hold: `src` exists; `dst` is new (or `force` replaces it)
/// and its parent folder exists; `format` is one of [`QUANT_FORMATS`] (a `.gguf` `dst`
/// only with `gguf`: then the one file is written there); for `mlx`, `bits`
/// in [`QUANT_BITS`], `group_size` in [`QUANT_GROUPS`], a mode of [`QUANT_MODES`] (mxfp4:
/// 4 bits, groups of 32); `options` a JSON
/// object or empty.
#[derive(Debug, Clone)]
pub struct Quantize {
    req: QuantizeRequest,
    format: String,
    force: bool,
}

impl Quantize {
    /// Check `req` for output `format`; `force` allows replacing an existing `dst`.
    pub fn new(req: QuantizeRequest, format: &str, force: bool) -> Result<Self, InvalidRequest> {
        let src = std::path::Path::new(req.src.as_str());
        if !src.exists() {
            return Err(invalid(
                "src",
                format!("{}: no such file or folder", src.display()),
            ));
        }
        let dst = std::path::Path::new(req.dst.as_str());
        if req.dst.is_empty() || dst.file_name().is_none() {
            return Err(invalid("dst", "give the folder to write"));
        }
        if dst.exists() && !force {
            return Err(invalid(
                "dst",
                format!(
                    "{} already exists (pass --force to replace it)",
                    dst.display()
                ),
            ));
        }
        let parent = dst
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        if !parent.is_dir() {
            return Err(invalid(
                "dst",
                format!("{}: no such folder", parent.display()),
            ));
        }
        if !QUANT_FORMATS.contains(&format) {
            return Err(invalid(
                "format",
                format!(
                    "`{format}` is not an output format ({})",
                    QUANT_FORMATS.join(", ")
                ),
            ));
        }
        let gguf_file = dst.extension().is_some_and(|e| e == "gguf");
        if gguf_file && format != "gguf" {
            return Err(invalid(
                "dst",
                format!(
                    "{}: a .gguf file is written with format `gguf`, not `{format}`",
                    dst.display()
                ),
            ));
        }
        if format == "mlx" {
            if !QUANT_BITS.contains(&req.bits) {
                return Err(invalid(
                    "bits",
                    format!("{} bits: MLX quantizes to {QUANT_BITS:?}", req.bits),
                ));
            }
            if !QUANT_GROUPS.contains(&req.group_size) {
                return Err(invalid(
                    "group_size",
                    format!("{}: MLX groups {QUANT_GROUPS:?} weights", req.group_size),
                ));
            }
            match req.mode.as_str() {
                "affine" => {}
                "mxfp4" if (req.bits, req.group_size) == (4, 32) => {}
                "mxfp4" => {
                    return Err(invalid(
                        "mode",
                        format!(
                            "`mxfp4` is 4 bits in groups of 32 (got {} bits, group {})",
                            req.bits, req.group_size
                        ),
                    ))
                }
                m => {
                    return Err(invalid(
                        "mode",
                        format!("`{m}` is not supported ({})", QUANT_MODES.join(", ")),
                    ))
                }
            }
        }
        check_options(req.options.as_str())?;
        Ok(Self {
            req,
            format: format.to_owned(),
            force,
        })
    }

    /// The output format.
    pub fn format(&self) -> &str {
        &self.format
    }

    /// Whether an existing `dst` is replaced.
    pub fn force(&self) -> bool {
        self.force
    }

    /// Whether `dst` is one `.gguf` file rather than a model folder.
    pub fn single_file(&self) -> bool {
        self.format == "gguf"
            && std::path::Path::new(self.req.dst.as_str())
                .extension()
                .is_some_and(|e| e == "gguf")
    }

    /// The request as the ABI carries it.
    pub fn into_request(self) -> QuantizeRequest {
        self.req
    }
}

impl Deref for Quantize {
    type Target = QuantizeRequest;
    fn deref(&self) -> &QuantizeRequest {
        &self.req
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::text::TextInput;

    fn request(prompt: &str, max_tokens: u32) -> GenerateRequest {
        GenerateRequest {
            inputs: vec![TextInput {
                prompt: prompt.into(),
                messages: Default::default(),
            }]
            .into(),
            sampling: SamplingParams::default(),
            max_tokens,
            stop: Default::default(),
            logprobs: false,
            stream: false,
            adapter: None.into(),
            options: "".into(),
        }
    }

    fn field(r: Result<Generate, InvalidRequest>) -> String {
        r.unwrap_err().field
    }

    #[test]
    fn each_rule_names_its_field() {
        assert!(Generate::new(request("hi", 4)).is_ok());
        assert_eq!(field(Generate::new(request("hi", 0))), "max_tokens");
        assert_eq!(field(Generate::new(request("", 4))), "inputs[0]");
        let mut r = request("hi", 4);
        r.inputs = Default::default();
        assert_eq!(field(Generate::new(r)), "inputs");
        let mut r = request("hi", 4);
        r.inputs = vec![r.inputs[0].clone(); MAX_SEQUENCES + 1].into();
        assert_eq!(field(Generate::new(r)), "inputs");
        for (name, set) in [
            (
                "temperature",
                (|s: &mut SamplingParams| s.temperature = -0.1) as fn(&mut _),
            ),
            ("temperature", |s| s.temperature = f32::NAN),
            ("top_p", |s| s.top_p = 1.5),
            ("min_p", |s| s.min_p = -1.0),
            ("repetition_penalty", |s| s.repetition_penalty = 0.0),
            ("frequency_penalty", |s| s.frequency_penalty = f32::INFINITY),
        ] {
            let mut r = request("hi", 4);
            set(&mut r.sampling);
            assert_eq!(field(Generate::new(r)), name);
        }
        let mut r = request("hi", 4);
        r.options = "[1]".into();
        assert_eq!(field(Generate::new(r)), "options");
    }

    #[test]
    fn needs_follow_streaming_and_batch_size() {
        let mut r = request("hi", 4);
        assert_eq!(Generate::new(r.clone()).unwrap().needs(), Features::NONE);
        r.stream = true;
        r.inputs = vec![r.inputs[0].clone(); 2].into();
        let needs = Generate::new(r).unwrap().needs();
        assert_eq!(
            needs,
            Features::STREAMING.union(Features::BATCHING),
            "{needs:?}"
        );
    }

    #[test]
    fn embed_texts_are_checked() {
        let req = |texts: Vec<&str>| EmbedRequest {
            texts: texts.into_iter().map(Into::into).collect(),
            pooling: plugin_api::embed::Pooling::MODEL_DEFAULT,
            normalize: None.into(),
            truncate: false,
            options: "".into(),
        };
        assert!(Embed::new(req(vec!["a", "b"])).is_ok());
        assert_eq!(Embed::new(req(vec![])).unwrap_err().field, "texts");
        assert_eq!(
            Embed::new(req(vec!["a", ""])).unwrap_err().field,
            "texts[1]"
        );
        // Chunks: in order, by count and by size, never empty, a long text alone.
        let e = Embed::new(req(vec!["aa", "bb", "cc", "dddddddd", "e"])).unwrap();
        let sizes = |texts, bytes| -> Vec<Vec<String>> {
            e.chunks(texts, bytes)
                .iter()
                .map(|c| c.texts.iter().map(|t| t.to_string()).collect())
                .collect()
        };
        assert_eq!(
            sizes(2, 100),
            [vec!["aa", "bb"], vec!["cc", "dddddddd"], vec!["e"]]
        );
        assert_eq!(
            sizes(10, 6),
            [vec!["aa", "bb", "cc"], vec!["dddddddd"], vec!["e"]]
        );
        assert_eq!(e.chunks(256, 1 << 15).len(), 1);
    }
}
