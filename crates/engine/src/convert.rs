//! Model conversion (`quant` kind): the plugin that writes the requested format for this
//! source (probe score), and the host's half of "never half a model": the plugin writes
//! into a fresh folder beside the destination, renamed into place (the folder, or for a
//! `.gguf` destination the one file in it) only when it succeeded, removed when it failed
//! or was cancelled.

use crate::{plugins::PluginHandle, request::Quantize, Engine, HostError, ModelEntry, Source};
use abi_stable::{sabi_trait::TD_Opaque, sabi_types::RMut};
use plugin_api::{
    progress::{ProgressEvent, ProgressSink, ProgressSink_TO},
    quant::QuantizeReport,
    text::StreamControl,
    ErrorKind, Features, ModelKind, PluginError,
};
use std::path::{Path, PathBuf};

/// A host closure as the ABI's progress sink (conversions, image generation).
pub(crate) struct ClosureProgress<'a>(
    pub(crate) &'a mut dyn FnMut(&ProgressEvent) -> StreamControl,
);

impl ProgressSink for ClosureProgress<'_> {
    fn on_progress(&mut self, event: &ProgressEvent) -> StreamControl {
        // A panic in the host's callback must not unwind into the plugin.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.0)(event)))
            .unwrap_or(StreamControl::Stop)
    }
}

/// The architecture a source declares (GGUF `general.architecture`, `config.json`
/// `model_type`), for the plugins' tables; empty when it declares none.
fn architecture(src: &Path) -> String {
    if let Some(file) = gguf::model_file(src) {
        return gguf::Gguf::open(&file)
            .ok()
            .and_then(|g| g.architecture().ok().map(str::to_owned))
            .unwrap_or_default();
    }
    std::fs::read_to_string(src.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|c| c.get("model_type")?.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// `dir/.name.<what>-<pid>-<n>`: a sibling of `dst` on the same file system, new for each
/// conversion of this process (two conversions to one `dst` do not share it).
fn sibling(dst: &Path, what: &str, n: u64) -> PathBuf {
    let name = dst
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dst.with_file_name(format!(".{name}.{what}-{}-{n}", std::process::id()))
}

/// Numbers the conversions of this process.
static CONVERSIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Engine {
    /// The plugin that would run `req` (the highest probe score for its source and
    /// format).
    pub fn quantizer(&self, req: &Quantize) -> Result<&PluginHandle, HostError> {
        let src = Path::new(req.src.as_str());
        let mut entry = ModelEntry::new(
            req.src.as_str(),
            ModelKind::QUANT,
            &architecture(src),
            Source::Path(src.to_owned()),
        );
        entry.quantization = Some(req.format().to_owned());
        let mut spec = crate::resolve::spec(&entry, Some(src));
        spec.options = req.options.clone();
        self.choose(&entry, &spec, Features::QUANTIZATION, None)
    }

    /// Convert `req.src` into `req.dst`. `on_progress` sees each report and may cancel;
    /// nothing is left behind unless the whole model was written.
    pub fn quantize(
        &self,
        req: &Quantize,
        on_progress: &mut dyn FnMut(&ProgressEvent) -> StreamControl,
    ) -> Result<QuantizeReport, HostError> {
        let plugin = self.quantizer(req)?;
        let fail = |error: PluginError| HostError::Plugin {
            id: req.src.to_string(),
            plugin: plugin.descriptor.name.to_string(),
            error,
        };
        let Some(module) = plugin.library() else {
            return Err(fail(PluginError::unsupported(
                "conversion in an isolated plugin (run it without --isolate)",
            )));
        };
        let Some(convert) = module.convert() else {
            return Err(fail(PluginError::unsupported(
                "model conversion (built against an older plugin API)",
            )));
        };
        let dst = PathBuf::from(req.dst.as_str());
        let n = CONVERSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = sibling(&dst, "partial", n);
        let io = |p: &Path, e: std::io::Error| {
            fail(PluginError::new(
                ErrorKind::INTERNAL,
                format!("{}: {e}", p.display()),
            ))
        };
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir(&tmp).map_err(|e| io(&tmp, e))?;
        let mut inner = req.clone().into_request();
        inner.dst = tmp.display().to_string().into();
        let mut sink = ClosureProgress(on_progress);
        let result = convert(
            &inner,
            ProgressSink_TO::from_ptr(RMut::new(&mut sink), TD_Opaque),
        );
        let mut report = match result.into_result() {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                if e.kind == ErrorKind::CANCELLED {
                    return Err(HostError::Cancelled {
                        id: req.src.to_string(),
                    });
                }
                return Err(fail(e));
            }
        };
        // What goes to `dst`: the folder, or for a `.gguf` destination the one file in it.
        let made = if req.single_file() {
            match gguf::model_file(&tmp) {
                Some(f) => f,
                None => {
                    let _ = std::fs::remove_dir_all(&tmp);
                    return Err(fail(PluginError::new(
                        ErrorKind::INTERNAL,
                        "the plugin wrote no single .gguf file",
                    )));
                }
            }
        } else {
            tmp.clone()
        };
        // Replace an old `dst` (with --force) only now that the new one is whole.
        let remove = |p: &Path| {
            let _ = std::fs::remove_dir_all(p).or_else(|_| std::fs::remove_file(p));
        };
        let old = sibling(&dst, "old", n);
        let replacing = dst.exists();
        if replacing {
            std::fs::rename(&dst, &old).map_err(|e| {
                remove(&tmp);
                io(&dst, e)
            })?;
        }
        if let Err(e) = std::fs::rename(&made, &dst) {
            if replacing {
                let _ = std::fs::rename(&old, &dst);
            }
            remove(&tmp);
            return Err(io(&dst, e));
        }
        if made != tmp {
            remove(&tmp);
        }
        if replacing {
            remove(&old);
        }
        report.dst = req.dst.clone();
        Ok(report)
    }
}
