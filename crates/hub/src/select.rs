//! Which files of a repo a model needs: weights in one format and one quantization,
//! config, tokenizer, chat template, generation config — not `.bin` when `.safetensors`
//! exist, not ONNX/TF/Flax exports, not every GGUF quantization of a GGUF repo.

use super::{HubError, RemoteFile};
use globset::{Glob, GlobSet, GlobSetBuilder};

/// The files to fetch and, for `info`, the ones left out with why.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub files: Vec<RemoteFile>,
    pub skipped: Vec<(String, &'static str)>,
}

impl Selection {
    /// Bytes to fetch.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// GGUF quantizations in order of preference when a repo offers several: what both
/// providers read fast on CPU first, then larger exact formats.
const GGUF_PREFERENCE: &[&str] = &[
    "q4_k_m", "q4_0", "q4_1", "q5_k_m", "q8_0", "q6_k", "q4_k_s", "q5_0", "q5_1", "f16", "bf16",
    "f32",
];

const OTHER_FORMATS: &[&str] = &[
    ".onnx",
    ".onnx_data",
    ".h5",
    ".msgpack",
    ".ot",
    ".tflite",
    ".mlmodel",
    ".pb",
    ".xml",
    ".ckpt",
];
const OTHER_DIRS: &[&str] = &["onnx/", "openvino/", "coreml/", "tf/", "flax/", "original/"];
const TORCH: &[&str] = &[".bin", ".pt", ".pth"];
const SMALL_KEEP: &[&str] = &[
    ".json",
    ".txt",
    ".model",
    ".jinja",
    ".tiktoken",
    ".py",
    ".yaml",
];

/// The GGUF quantization named in a file name (`…Q4_K_M.gguf` → `q4_k_m`).
pub fn gguf_quant(name: &str) -> Option<String> {
    let stem = name
        .rsplit('/')
        .next()?
        .strip_suffix(".gguf")?
        .to_ascii_lowercase();
    GGUF_PREFERENCE
        .iter()
        .chain(
            [
                "iq4_xs", "iq4_nl", "q2_k", "q3_k_m", "q3_k_s", "q3_k_l", "q5_k_s",
            ]
            .iter(),
        )
        .filter(|q| stem.ends_with(*q) && stem[..stem.len() - q.len()].ends_with(['.', '-', '_']))
        .max_by_key(|q| q.len())
        .map(|q| q.to_string())
}

fn globs(what: &str, pats: &[String]) -> Result<Option<GlobSet>, HubError> {
    if pats.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for p in pats {
        b.add(Glob::new(p).map_err(|e| HubError::Other(format!("--{what} `{p}`: {e}")))?);
    }
    b.build()
        .map(Some)
        .map_err(|e| HubError::Other(format!("--{what}: {e}")))
}

/// Pick the files to fetch. `include` (globs) replaces the default choice; `exclude`
/// removes from whichever choice was made.
pub fn select_files(
    files: &[RemoteFile],
    include: &[String],
    exclude: &[String],
) -> Result<Selection, HubError> {
    let inc = globs("include", include)?;
    let exc = globs("exclude", exclude)?;
    let mut sel = Selection::default();
    let has_safetensors = |dir: &str| {
        files
            .iter()
            .any(|f| f.path.ends_with(".safetensors") && parent(&f.path) == dir)
    };
    // One GGUF: the most preferred quantization; among equals, the smallest file.
    let ggufs: Vec<&RemoteFile> = files.iter().filter(|f| f.path.ends_with(".gguf")).collect();
    let best_gguf = ggufs
        .iter()
        .min_by_key(|f| {
            let q = gguf_quant(&f.path).unwrap_or_default();
            let rank = GGUF_PREFERENCE
                .iter()
                .position(|p| *p == q)
                .unwrap_or(GGUF_PREFERENCE.len());
            (rank, f.size)
        })
        .map(|f| f.path.clone());
    for f in files {
        let p = f.path.as_str();
        let lower = p.to_ascii_lowercase();
        let why: Option<&'static str> = if let Some(inc) = &inc {
            (!inc.is_match(p)).then_some("not matched by --include")
        } else if OTHER_DIRS.iter().any(|d| lower.starts_with(d))
            || OTHER_FORMATS.iter().any(|e| lower.ends_with(e))
        {
            Some("another runtime's format")
        } else if TORCH.iter().any(|e| lower.ends_with(e)) {
            if has_safetensors(parent(p)) {
                Some("PyTorch pickle; the .safetensors copy is used")
            } else if lower.contains("optimizer") || lower.contains("training_args") {
                Some("training state")
            } else {
                None
            }
        } else if lower.ends_with(".gguf") {
            (Some(p) != best_gguf.as_deref()).then_some("another quantization")
        } else if lower.ends_with(".safetensors") {
            // Mistral-style repos carry a consolidated copy beside the shards.
            (lower.starts_with("consolidated")
                && files
                    .iter()
                    .any(|g| g.path.starts_with("model") && g.path.ends_with(".safetensors")))
            .then_some("duplicate of the sharded weights")
        } else if SMALL_KEEP.iter().any(|e| lower.ends_with(e)) {
            let name = lower.rsplit('/').next().unwrap_or(&lower);
            let txt_ok = !lower.ends_with(".txt")
                || name.starts_with("vocab")
                || name.starts_with("merges")
                || name.starts_with("added_tokens");
            let py_ok = !lower.ends_with(".py");
            (!(txt_ok && py_ok) || name == "readme.md").then_some("not needed to run")
        } else {
            Some("not needed to run")
        };
        let why = why.or_else(|| {
            exc.as_ref()
                .is_some_and(|e| e.is_match(p))
                .then_some("matched by --exclude")
        });
        match why {
            Some(w) => sel.skipped.push((f.path.clone(), w)),
            None => sel.files.push(f.clone()),
        }
    }
    Ok(sel)
}

fn parent(p: &str) -> &str {
    p.rsplit_once('/').map_or("", |(d, _)| d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(p: &str, size: u64) -> RemoteFile {
        RemoteFile {
            path: p.into(),
            size,
            git_oid: "0".repeat(40),
            lfs_sha256: None,
        }
    }

    fn chosen(files: &[RemoteFile], inc: &[&str], exc: &[&str]) -> Vec<String> {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        select_files(files, &s(inc), &s(exc))
            .unwrap()
            .files
            .into_iter()
            .map(|f| f.path)
            .collect()
    }

    #[test]
    fn safetensors_repo() {
        let files = [
            f(".gitattributes", 1),
            f("README.md", 1),
            f("config.json", 1),
            f("model.safetensors", 9),
            f("pytorch_model.bin", 9),
            f("onnx/model.onnx", 9),
            f("tokenizer.json", 1),
            f("vocab.txt", 1),
            f("train_script.py", 1),
            f("1_Pooling/config.json", 1),
            f("tf_model.h5", 9),
        ];
        assert_eq!(
            chosen(&files, &[], &[]),
            [
                "config.json",
                "model.safetensors",
                "tokenizer.json",
                "vocab.txt",
                "1_Pooling/config.json"
            ]
        );
        assert_eq!(chosen(&files, &["*.bin"], &[]), ["pytorch_model.bin"]);
        assert_eq!(
            chosen(&files, &[], &["vocab.txt", "1_Pooling/*"]),
            ["config.json", "model.safetensors", "tokenizer.json"]
        );
    }

    #[test]
    fn gguf_repo_takes_one_quantization() {
        let files = [
            f("m.Q8_0.gguf", 8),
            f("m.Q4_1.gguf", 5),
            f("m.Q4_K_M.gguf", 5),
            f("m.f16.gguf", 16),
        ];
        assert_eq!(chosen(&files, &[], &[]), ["m.Q4_K_M.gguf"]);
        assert_eq!(chosen(&files, &["*Q4_1*"], &[]), ["m.Q4_1.gguf"]);
        assert_eq!(
            gguf_quant("x/SmolLM2-135M-Instruct.Q4_1.gguf").as_deref(),
            Some("q4_1")
        );
        assert_eq!(
            gguf_quant("gemma-3-270m-q4_k_m.gguf").as_deref(),
            Some("q4_k_m")
        );
        assert_eq!(gguf_quant("model.gguf"), None);
    }

    #[test]
    fn bad_glob_is_named() {
        let e = select_files(&[], &["[".into()], &[]).unwrap_err();
        assert!(e.to_string().contains("--include `[`"), "{e}");
    }
}
