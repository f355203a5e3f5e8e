//! `quant` conversions into GGUF by llama.cpp's own quantizer (`llama_model_quantize`,
//! what `llama-quantize` runs), so the ggml provider can serve any model at any of its
//! types: from a GGUF (requantized — llama.cpp dequantizes each tensor to f32 first), or
//! from a Hub-layout model, written first as a float GGUF by our converter
//! ([`gguf::from_hf`]) into the output folder and removed once quantized.
//!
//! The host hands `convert` an empty folder; the model is written into it as `model.gguf`.
//! llama.cpp's quantizer cannot be interrupted: a cancel asked for while it runs is
//! honoured when it returns (the host then removes the folder).

use crate::{runtime, take_llama_errors};
use plugin_api::{
    quant::{QuantizeReport, QuantizeRequest},
    text::StreamControl,
    ErrorKind, ModelSpec, PluginError,
};
use plugin_sdk::Progress;
use serde_json::Value as Json;
use std::{
    ffi::CString,
    path::{Path, PathBuf},
    sync::{mpsc, Mutex},
    time::Duration,
};

/// The output format this provider writes (`ModelSpec.quantization` of a `quant` probe).
pub const FORMAT: &str = "gguf";

/// The file written into the output folder.
pub const OUTPUT_FILE: &str = "model.gguf";

use llama_cpp_sys_2 as sys;

/// llama.cpp types `--type` names (llama-quantize's names), with their `llama_ftype`.
/// The i-quants are left out: they need an importance matrix.
pub const TYPES: &[(&str, sys::llama_ftype)] = &[
    ("F32", sys::LLAMA_FTYPE_ALL_F32),
    ("F16", sys::LLAMA_FTYPE_MOSTLY_F16),
    ("BF16", sys::LLAMA_FTYPE_MOSTLY_BF16),
    ("Q8_0", sys::LLAMA_FTYPE_MOSTLY_Q8_0),
    ("Q6_K", sys::LLAMA_FTYPE_MOSTLY_Q6_K),
    ("Q5_K_M", sys::LLAMA_FTYPE_MOSTLY_Q5_K_M),
    ("Q5_K_S", sys::LLAMA_FTYPE_MOSTLY_Q5_K_S),
    ("Q5_1", sys::LLAMA_FTYPE_MOSTLY_Q5_1),
    ("Q5_0", sys::LLAMA_FTYPE_MOSTLY_Q5_0),
    ("Q4_K_M", sys::LLAMA_FTYPE_MOSTLY_Q4_K_M),
    ("Q4_K_S", sys::LLAMA_FTYPE_MOSTLY_Q4_K_S),
    ("Q4_1", sys::LLAMA_FTYPE_MOSTLY_Q4_1),
    ("Q4_0", sys::LLAMA_FTYPE_MOSTLY_Q4_0),
    ("Q3_K_L", sys::LLAMA_FTYPE_MOSTLY_Q3_K_L),
    ("Q3_K_M", sys::LLAMA_FTYPE_MOSTLY_Q3_K_M),
    ("Q3_K_S", sys::LLAMA_FTYPE_MOSTLY_Q3_K_S),
    ("Q2_K", sys::LLAMA_FTYPE_MOSTLY_Q2_K),
];

/// Options of a request this provider reads; the MLX-only ones are refused by name.
const MLX_ONLY: &[&str] = &["recipe", "layers", "dtype", "allow_float"];

/// The checked options: the llama.cpp type.
fn gguf_type(options: &str) -> Result<(&'static str, sys::llama_ftype), String> {
    let v: Json = match options.trim() {
        "" => Json::Object(Default::default()),
        s => serde_json::from_str(s).map_err(|e| format!("options: {e}"))?,
    };
    let map = v.as_object().ok_or("options must be a JSON object")?;
    for key in map.keys() {
        if MLX_ONLY.contains(&key.as_str()) {
            return Err(format!(
                "option `{key}` applies to MLX output (format `mlx`), not to GGUF"
            ));
        }
        if !matches!(key.as_str(), "format" | "gguf_type") {
            return Err(format!("unknown option `{key}`"));
        }
    }
    let names = || TYPES.iter().map(|t| t.0).collect::<Vec<_>>().join(", ");
    let name = map
        .get("gguf_type")
        .and_then(Json::as_str)
        .ok_or_else(|| format!("GGUF output needs a llama.cpp type (`--type`): {}", names()))?;
    TYPES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .copied()
        .ok_or_else(|| {
            format!(
                "type `{name}` is not one llama.cpp quantizes to ({})",
                names()
            )
        })
}

/// What a conversion starts from.
enum Source {
    Gguf(PathBuf),
    Hub(PathBuf),
}

impl Source {
    fn open(path: &Path) -> Result<Self, String> {
        if let Some(f) = gguf::model_file(path) {
            return Ok(Source::Gguf(f));
        }
        let cfg = path.join("config.json");
        if !cfg.is_file() {
            return Err(format!(
                "{}: neither a GGUF nor a Hugging Face layout folder (config.json)",
                path.display()
            ));
        }
        let model_type = std::fs::read_to_string(&cfg)
            .ok()
            .and_then(|t| serde_json::from_str::<Json>(&t).ok())
            .and_then(|c| c.get("model_type")?.as_str().map(str::to_owned))
            .unwrap_or_default();
        if !gguf::from_hf::MODEL_TYPES.contains(&model_type.as_str()) {
            return Err(format!(
                "{}: `model_type` `{model_type}` is not one our GGUF converter writes ({}); \
                 start from a GGUF",
                cfg.display(),
                gguf::from_hf::MODEL_TYPES.join(", ")
            ));
        }
        Ok(Source::Hub(path.to_owned()))
    }

    /// Bytes of the source's weights.
    fn bytes(&self) -> u64 {
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        match self {
            Source::Gguf(f) => size(f),
            Source::Hub(d) => std::fs::read_dir(d)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
                .map(|p| size(&p))
                .sum(),
        }
    }
}

/// Probe of a `quant` request: (score, reason).
pub fn probe(m: &ModelSpec) -> (u32, String) {
    let target = m
        .quantization
        .as_ref()
        .map(|q| q.as_str())
        .into_option()
        .unwrap_or("mlx");
    if target != FORMAT {
        return (0, format!("writes `{FORMAT}`, not `{target}`"));
    }
    match Source::open(Path::new(m.path.as_str())) {
        Ok(Source::Gguf(_)) => (100, "llama.cpp's quantizer".into()),
        Ok(Source::Hub(_)) => (
            100,
            "our HF → GGUF converter, then llama.cpp's quantizer".into(),
        ),
        Err(e) => (0, e),
    }
}

/// Lines of llama.cpp's log while a quantization runs (its per-tensor progress), handed
/// from the log callback to the thread that reports progress.
static QUANT_LOG: Mutex<Option<mpsc::Sender<String>>> = Mutex::new(None);
/// One quantization at a time (the log hook is process-wide).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Forward an info line of llama.cpp's log to a running quantization (called by the log
/// callback).
pub(crate) fn log_line(line: &str) {
    if !line.starts_with('[') {
        return;
    }
    if let Some(tx) = QUANT_LOG.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        let _ = tx.send(line.to_owned());
    }
}

/// `[  12/ 272] blk.1.attn_q.weight - …` → (12, 272, name).
fn parse_progress(line: &str) -> Option<(u64, u64, String)> {
    let (counts, rest) = line.strip_prefix('[')?.split_once(']')?;
    let (done, total) = counts.split_once('/')?;
    let name = rest.split_whitespace().next()?.to_owned();
    Some((done.trim().parse().ok()?, total.trim().parse().ok()?, name))
}

fn invalid(msg: impl Into<String>) -> PluginError {
    PluginError::new(ErrorKind::INVALID_REQUEST, msg.into())
}

/// Convert `req.src` into the existing, empty folder `req.dst`.
pub fn convert(
    req: &QuantizeRequest,
    progress: &mut dyn Progress,
) -> Result<QuantizeReport, PluginError> {
    let (_, ftype) = gguf_type(req.options.as_str()).map_err(invalid)?;
    let src = Path::new(req.src.as_str());
    if !src.exists() {
        return Err(PluginError::new(
            ErrorKind::NOT_FOUND,
            format!("{}: no such file or folder", src.display()),
        ));
    }
    let source = Source::open(src).map_err(invalid)?;
    runtime()?;
    let dst = Path::new(req.dst.as_str());
    let out = dst.join(OUTPUT_FILE);
    let cancelled = || PluginError::new(ErrorKind::CANCELLED, "quantization cancelled");
    let input = match &source {
        Source::Gguf(f) => f.clone(),
        Source::Hub(dir) => {
            if progress.step("convert", 0, 1, "HF → GGUF") == StreamControl::Stop {
                return Err(cancelled());
            }
            let float = if ftype == sys::LLAMA_FTYPE_MOSTLY_F16 {
                gguf::writer::TensorType::F16
            } else {
                gguf::writer::TensorType::F32
            };
            let direct = matches!(
                ftype,
                sys::LLAMA_FTYPE_ALL_F32 | sys::LLAMA_FTYPE_MOSTLY_F16
            );
            let target = if direct {
                out.clone()
            } else {
                dst.join(".source.gguf")
            };
            gguf::from_hf::convert(dir, &target, float).map_err(|e| invalid(e.to_string()))?;
            if direct {
                return finish(req, &source, &out);
            }
            target
        }
    };
    let result = quantize(&input, &out, ftype, progress);
    if matches!(source, Source::Hub(_)) {
        let _ = std::fs::remove_file(&input);
    }
    match result? {
        StreamControl::Stop => Err(cancelled()),
        StreamControl::Continue => finish(req, &source, &out),
    }
}

/// The report of a written model.
fn finish(
    req: &QuantizeRequest,
    source: &Source,
    out: &Path,
) -> Result<QuantizeReport, PluginError> {
    let g = gguf::Gguf::open(out).map_err(|e| {
        PluginError::new(
            ErrorKind::INTERNAL,
            format!("the written model does not read back: {e}"),
        )
    })?;
    // F32, F16, BF16 (ggml type ids 0, 1, 30) are float; the rest quantized.
    let quantized = g
        .tensors
        .iter()
        .filter(|t| !matches!(t.ggml_type, 0 | 1 | 30))
        .count() as u32;
    Ok(QuantizeReport {
        dst: req.dst.clone(),
        tensors_quantized: quantized,
        bytes_in: source.bytes(),
        bytes_out: std::fs::metadata(out).map_or(0, |m| m.len()),
    })
}

/// Run llama.cpp's quantizer on `input` into `out`, reporting its per-tensor progress;
/// `Stop` when a cancel was asked for while it ran.
fn quantize(
    input: &Path,
    out: &Path,
    ftype: sys::llama_ftype,
    progress: &mut dyn Progress,
) -> Result<StreamControl, PluginError> {
    let path = |p: &Path| {
        CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|_| invalid(format!("{}: a path with a NUL byte", p.display())))
    };
    let (cin, cout) = (path(input)?, path(out)?);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as i32;
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (tx, rx) = mpsc::channel();
    *QUANT_LOG.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    take_llama_errors();
    let worker = std::thread::spawn(move || {
        // SAFETY: default parameters from llama.cpp with plain fields set; both paths are
        // NUL-terminated and outlive the call.
        unsafe {
            let mut params = sys::llama_model_quantize_default_params();
            params.nthread = threads;
            params.ftype = ftype;
            params.allow_requantize = true;
            sys::llama_model_quantize(cin.as_ptr(), cout.as_ptr(), &params)
        }
    });
    let mut control = StreamControl::Continue;
    let mut on_line = |line: String, control: &mut StreamControl| {
        if let Some((done, total, name)) = parse_progress(&line) {
            if progress.step("quantize", done.saturating_sub(1), total, &name)
                == StreamControl::Stop
            {
                *control = StreamControl::Stop;
            }
        }
    };
    while !worker.is_finished() {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(50)) {
            on_line(line, &mut control);
        }
    }
    *QUANT_LOG.lock().unwrap_or_else(|p| p.into_inner()) = None;
    for line in rx.try_iter() {
        on_line(line, &mut control);
    }
    let rc = worker
        .join()
        .map_err(|_| PluginError::new(ErrorKind::INTERNAL, "llama.cpp's quantizer panicked"))?;
    if rc != 0 {
        let why = take_llama_errors();
        return Err(PluginError::new(
            ErrorKind::LOAD,
            format!(
                "{}: llama.cpp could not quantize it: {why}",
                input.display()
            ),
        ));
    }
    Ok(control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_name_the_type_or_what_does_not_apply() {
        assert_eq!(
            gguf_type(r#"{"format":"gguf","gguf_type":"q4_k_m"}"#).unwrap(),
            ("Q4_K_M", sys::LLAMA_FTYPE_MOSTLY_Q4_K_M)
        );
        for (opts, want) in [
            (
                r#"{"format":"gguf"}"#,
                "needs a llama.cpp type (`--type`): F32, F16",
            ),
            (
                r#"{"gguf_type":"IQ2_XS"}"#,
                "type `IQ2_XS` is not one llama.cpp quantizes to",
            ),
            (
                r#"{"gguf_type":"Q8_0","recipe":"mixed_4_6"}"#,
                "option `recipe` applies to MLX output",
            ),
            (r#"{"gguf_type":"Q8_0","bitz":4}"#, "unknown option `bitz`"),
        ] {
            let e = gguf_type(opts).unwrap_err();
            assert!(e.contains(want), "{opts}: {e}");
        }
        assert_eq!(
            parse_progress(
                "[  12/ 272]                   blk.1.attn_q.weight - [  576,   576], type = q4_1, "
            ),
            Some((12, 272, "blk.1.attn_q.weight".into()))
        );
        assert_eq!(parse_progress("[info] other"), None);
    }
}
