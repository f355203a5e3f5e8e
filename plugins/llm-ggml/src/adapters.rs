//! LoRA adapters on the ggml provider: llama.cpp's GGUF LoRA, loaded into the model
//! (converted from PEFT / mlx-lm by the shared `lora` crate, or given as a `.gguf`).
//!
//! llama.cpp applies adapters per context, to every sequence of a decode call: the
//! generation loop decodes the sequences of each adapter (or none) in a call of their
//! own, one after the other within a step, switching the context's adapter between.
//! Loading or unloading one waits for the running batch (the model's adapter set is
//! read by llama.cpp when it sizes a context's graph) and starts a new context after.

use crate::{err, GgmlModel};
use llama_cpp_2::{
    context::LlamaContext,
    model::{LlamaLoraAdapter, LlamaModel},
};
use plugin_api::{
    lora::{AdapterOp, AdapterRequest, AdapterResponse},
    text::GenerateRequest,
    ErrorKind, PluginError,
};
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    ptr::NonNull,
};

/// An adapter loaded into the model.
pub(crate) struct GgmlAdapter {
    lora: LlamaLoraAdapter,
    /// Scale of a request that names none.
    scale: f32,
    /// Bytes of its tensors.
    pub(crate) bytes: u64,
}

/// The adapters loaded on a model, by name.
#[derive(Default)]
pub(crate) struct Adapters(pub(crate) BTreeMap<String, GgmlAdapter>);

// `LlamaModel` and `LlamaLoraAdapter` are each one pointer to the llama.cpp object (a
// single-field struct around a `NonNull`: same size, the field at offset 0), which the
// safe API does not hand out; adapters need it while other threads hold `&LlamaModel`.
const _: () = assert!(std::mem::size_of::<LlamaModel>() == std::mem::size_of::<NonNull<u8>>());
const _: () =
    assert!(std::mem::size_of::<LlamaLoraAdapter>() == std::mem::size_of::<NonNull<u8>>());

fn model_ptr(model: &LlamaModel) -> *mut llama_cpp_sys_2::llama_model {
    // SAFETY: see the size assertions above; the pointer is only passed to llama.cpp.
    unsafe { std::mem::transmute_copy::<LlamaModel, *mut llama_cpp_sys_2::llama_model>(model) }
}

/// The adapter set a request applies: `None` for the base, else the one adapter's name
/// and scale.
pub(crate) type Choice = Option<(String, f32)>;

impl GgmlModel {
    /// What `req` applies, resolved against the loaded adapters.
    pub(crate) fn adapter_choice(&self, req: &GenerateRequest) -> Result<Choice, PluginError> {
        let choices = plugin_sdk::adapters_of(req)?;
        let loaded = self.adapters.lock().unwrap_or_else(|p| p.into_inner());
        let mut live: Vec<(String, f32)> =
            plugin_sdk::resolve_adapters(&choices, &loaded.0, |a| a.scale)
                .map_err(|m| err(ErrorKind::INVALID_REQUEST, &self.id, m))?
                .into_iter()
                .map(|(name, _, scale)| (name.to_owned(), scale))
                .collect();
        if live.len() > 1 {
            return Err(err(
                ErrorKind::UNSUPPORTED,
                &self.id,
                "the ggml provider applies one adapter per request (llama-cpp-2 sets one \
                 per context); a weighted mix of adapters runs on the MLX provider",
            ));
        }
        Ok(live.pop())
    }

    /// Make `choice` the context's adapter, unless `current` says it is (`None`: not
    /// known — a context kept from an earlier call still has its last adapter).
    pub(crate) fn switch_adapter(
        &self,
        ctx: &mut LlamaContext,
        current: &mut Option<Choice>,
        choice: &Choice,
    ) -> Result<(), PluginError> {
        if current.as_ref() == Some(choice) {
            return Ok(());
        }
        let mut loaded = self.adapters.lock().unwrap_or_else(|p| p.into_inner());
        let fail = |e: String| {
            err(
                ErrorKind::INTERNAL,
                &self.id,
                format!("setting the adapter: {e}"),
            )
        };
        match choice {
            Some((name, scale)) => {
                let a = loaded
                    .0
                    .get_mut(name)
                    .ok_or_else(|| fail(format!("`{name}` was unloaded")))?;
                ctx.lora_adapter_set(&mut a.lora, *scale)
                    .map_err(|e| fail(e.to_string()))?;
            }
            None => {
                if let Some(a) = loaded.0.values_mut().next() {
                    ctx.lora_adapter_remove(&mut a.lora)
                        .map_err(|e| fail(e.to_string()))?;
                }
            }
        }
        *current = Some(choice.clone());
        Ok(())
    }

    /// Bytes the loaded adapters take.
    pub(crate) fn adapter_bytes(&self) -> u64 {
        let loaded = self.adapters.lock().unwrap_or_else(|p| p.into_inner());
        loaded.0.values().map(|a| a.bytes).sum()
    }

    /// The ABI's adapter operations.
    pub(crate) fn adapter_op(&self, req: &AdapterRequest) -> Result<AdapterResponse, PluginError> {
        let name = req.name.as_str();
        let bad = |msg: String| err(ErrorKind::INVALID_REQUEST, &self.id, msg);
        if name.is_empty() && req.op != AdapterOp::LIST {
            return Err(bad("the adapter needs a name".into()));
        }
        match req.op {
            AdapterOp::LOAD => {
                if !req.scale.is_finite() {
                    return Err(bad(format!(
                        "adapter `{name}`: scale {} is not a number",
                        req.scale
                    )));
                }
                let (file, bytes, _temp) = self.adapter_gguf(name, Path::new(req.path.as_str()))?;
                // Between batches: llama.cpp reads the model's adapter set when it sizes a
                // context's graph, so the context is made anew after.
                let mut ctx = self.ctx.lock().unwrap_or_else(|p| p.into_inner());
                let lora = self.init_adapter(&file)?;
                *ctx = None;
                let old = self
                    .adapters
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .0
                    .insert(
                        name.to_owned(),
                        GgmlAdapter {
                            lora,
                            scale: req.scale,
                            bytes,
                        },
                    );
                if let Some(old) = old {
                    free(old);
                }
            }
            AdapterOp::UNLOAD => {
                let mut ctx = self.ctx.lock().unwrap_or_else(|p| p.into_inner());
                let gone = self
                    .adapters
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .0
                    .remove(name);
                let Some(gone) = gone else {
                    return Err(bad(format!("adapter `{name}` is not loaded on this model")));
                };
                // No context may keep a pointer to it.
                *ctx = None;
                free(gone);
            }
            AdapterOp::LIST => {}
            other => {
                return Err(err(
                    ErrorKind::UNSUPPORTED,
                    &self.id,
                    format!(
                        "adapter operation {} is not supported by the ggml provider (fusing: \
                         `mlxengine fuse`)",
                        other.0
                    ),
                ))
            }
        }
        let loaded = self.adapters.lock().unwrap_or_else(|p| p.into_inner());
        Ok(AdapterResponse {
            loaded: loaded.0.keys().map(|k| k.as_str().into()).collect(),
            fused: Default::default(),
        })
    }

    /// The GGUF LoRA for the adapter at `path`: a `.gguf` given as is, else the PEFT or
    /// mlx-lm folder converted for this model into a temporary file (removed on drop).
    fn adapter_gguf(
        &self,
        name: &str,
        path: &Path,
    ) -> Result<(PathBuf, u64, Option<TempFile>), PluginError> {
        let bad = |e: String| {
            err(
                ErrorKind::INVALID_REQUEST,
                &self.id,
                format!("adapter `{name}`: {e}"),
            )
        };
        let given = if path.extension().is_some_and(|e| e == "gguf") {
            Some(path.to_owned())
        } else {
            gguf::model_file(path).filter(|_| lora::Format::of(path).is_none())
        };
        if let Some(file) = given {
            let g = gguf::Gguf::open(&file).map_err(|e| bad(e.to_string()))?;
            if g.str("general.type") != Some("adapter") || g.str("adapter.type") != Some("lora") {
                return Err(bad(format!(
                    "{}: not a GGUF LoRA (`general.type` = \"adapter\", `adapter.type` = \"lora\")",
                    file.display()
                )));
            }
            let bytes = g.tensors.iter().map(|t| t.elements() as u64 * 4).sum();
            return Ok((file, bytes, None));
        }
        let ad = lora::Adapter::open(path).map_err(|e| bad(e.to_string()))?;
        let base = gguf::Gguf::open(&self.file).map_err(|e| bad(e.to_string()))?;
        let temp = TempFile::new();
        lora::to_gguf::write(&ad, &base, &self.id, &temp.0).map_err(|e| bad(e.to_string()))?;
        Ok((temp.0.clone(), ad.parameters() * 4, Some(temp)))
    }

    fn init_adapter(&self, file: &Path) -> Result<LlamaLoraAdapter, PluginError> {
        let path = std::ffi::CString::new(file.display().to_string())
            .map_err(|e| err(ErrorKind::INVALID_REQUEST, &self.id, e))?;
        // SAFETY: a valid model pointer and a NUL-terminated path; llama.cpp owns the
        // adapter it returns (freed with the model, or by `free`).
        let raw = unsafe {
            llama_cpp_sys_2::llama_adapter_lora_init(model_ptr(&self.model), path.as_ptr())
        };
        let raw = NonNull::new(raw).ok_or_else(|| {
            err(
                ErrorKind::LOAD,
                &self.id,
                format!(
                    "llama.cpp refused the LoRA {}: {}",
                    file.display(),
                    crate::take_llama_errors()
                ),
            )
        })?;
        // SAFETY: `LlamaLoraAdapter` is that one pointer (see the size assertions).
        Ok(unsafe {
            std::mem::transmute::<NonNull<llama_cpp_sys_2::llama_adapter_lora>, LlamaLoraAdapter>(
                raw,
            )
        })
    }
}

/// Free an adapter no context holds.
fn free(a: GgmlAdapter) {
    // SAFETY: `LlamaLoraAdapter` is the adapter's pointer; no context refers to it (the
    // caller dropped the context) and it is not used again.
    unsafe {
        let raw = std::mem::transmute::<LlamaLoraAdapter, *mut llama_cpp_sys_2::llama_adapter_lora>(
            a.lora,
        );
        llama_cpp_sys_2::llama_adapter_lora_free(raw);
    }
}

/// A file in the temporary folder, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new() -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        Self(std::env::temp_dir().join(format!("mlxengine-lora-{}-{n}.gguf", std::process::id())))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
