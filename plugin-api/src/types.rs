use abi_stable::{
    std_types::{ROption, RString, RVec},
    StableAbi,
};
use std::fmt;

/// A modality a plugin serves. An open set of codes: unknown ones are kept, not rejected.
#[repr(transparent)]
#[derive(
    StableAbi,
    serde::Serialize,
    serde::Deserialize,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
)]
pub struct ModelKind(pub u8);

impl ModelKind {
    /// Text generation.
    pub const LLM: Self = Self(1);
    /// Vision-language: text generation conditioned on images.
    pub const VLM: Self = Self(2);
    /// Text embeddings.
    pub const EMBED: Self = Self(3);
    /// Image generation.
    pub const DIFFUSION: Self = Self(4);
    /// LoRA adapters on top of a base model.
    pub const LORA: Self = Self(5);
    /// Model conversion (quantization).
    pub const QUANT: Self = Self(6);

    /// Every kind this version of the API knows.
    pub const ALL: [Self; 6] = [
        Self::LLM,
        Self::VLM,
        Self::EMBED,
        Self::DIFFUSION,
        Self::LORA,
        Self::QUANT,
    ];

    /// The registry / CLI name (`"llm"`, `"embed"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::LLM => "llm",
            Self::VLM => "vlm",
            Self::EMBED => "embed",
            Self::DIFFUSION => "diffusion",
            Self::LORA => "lora",
            Self::QUANT => "quant",
            _ => "unknown",
        }
    }

    /// Parse a registry / CLI name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            "unknown" => write!(f, "unknown({})", self.0),
            n => f.write_str(n),
        }
    }
}

impl fmt::Debug for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Feature flags a plugin declares and a request can require. Bits are append-only.
#[repr(transparent)]
#[derive(
    StableAbi, serde::Serialize, serde::Deserialize, Clone, Copy, PartialEq, Eq, Hash, Default,
)]
pub struct Features(pub u64);

impl Features {
    /// No features.
    pub const NONE: Self = Self(0);
    /// Load / apply / fuse LoRA adapters.
    pub const LORA_ADAPTERS: Self = Self(1 << 0);
    /// Quantize models, or load quantized checkpoints.
    pub const QUANTIZATION: Self = Self(1 << 1);
    /// Vision-language generation.
    pub const VISION_LANGUAGE: Self = Self(1 << 2);
    /// Text embeddings.
    pub const EMBEDDINGS: Self = Self(1 << 3);
    /// Image generation.
    pub const DIFFUSION: Self = Self(1 << 4);
    /// Raw prompts and custom chat templates / system prompts.
    pub const CUSTOM_PROMPTS: Self = Self(1 << 5);
    /// Inputs that mix text and other media.
    pub const MULTI_MODAL_INPUT: Self = Self(1 << 6);
    /// Streaming output through a callback, with cancellation.
    pub const STREAMING: Self = Self(1 << 7);
    /// Several inputs served together in one call.
    pub const BATCHING: Self = Self(1 << 8);
    /// Requests can join a running batch between decode steps (`TokenSink::poll_join`).
    pub const CONTINUOUS_BATCHING: Self = Self(1 << 9);

    /// Names used in `registry.toml`, the CLI and `plugins --json`.
    pub const NAMES: [(&'static str, Self); 10] = [
        ("lora_adapters", Self::LORA_ADAPTERS),
        ("quantization", Self::QUANTIZATION),
        ("vision_language", Self::VISION_LANGUAGE),
        ("embeddings", Self::EMBEDDINGS),
        ("diffusion", Self::DIFFUSION),
        ("custom_prompts", Self::CUSTOM_PROMPTS),
        ("multi_modal_input", Self::MULTI_MODAL_INPUT),
        ("streaming", Self::STREAMING),
        ("batching", Self::BATCHING),
        ("continuous_batching", Self::CONTINUOUS_BATCHING),
    ];

    /// Union of two sets.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Whether every flag of `other` is set in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Flags of `self` that are missing from `have`.
    pub const fn missing_from(self, have: Self) -> Self {
        Self(self.0 & !have.0)
    }

    /// The flag called `name`, if this version knows it.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| *f)
    }

    /// Names of the set flags (unknown bits as `bitN`).
    pub fn names(self) -> Vec<String> {
        (0..64)
            .filter(|b| self.0 & (1 << b) != 0)
            .map(|b| {
                Self::NAMES
                    .iter()
                    .find(|(_, f)| f.0 == 1 << b)
                    .map_or_else(|| format!("bit{b}"), |(n, _)| (*n).to_owned())
            })
            .collect()
    }
}

impl fmt::Debug for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.names().join("|"))
    }
}

/// What a plugin is. Returned by the root module's `descriptor`.
#[repr(C)]
#[derive(StableAbi, serde::Serialize, serde::Deserialize, Clone, Debug)]
pub struct PluginDescriptor {
    /// Unique plugin name, e.g. `"mlx-embed"`.
    pub name: RString,
    /// The plugin's own version.
    pub version: RString,
    /// One line for `mlxengine plugins`.
    pub description: RString,
    /// The kinds it serves.
    pub kinds: RVec<ModelKind>,
    /// The architectures (`config.json` `model_type`, lowercase) it can load.
    /// Empty means "any" (for plugins such as `quant` that work on any model).
    pub architectures: RVec<RString>,
    /// Weight formats it reads: `"safetensors"`, `"gguf"`, ...
    pub formats: RVec<RString>,
    /// Features it offers.
    pub features: Features,
}

/// Facts about the machine, measured by the host and passed to plugins.
#[repr(C)]
#[derive(StableAbi, serde::Serialize, serde::Deserialize, Clone, Debug, Default)]
pub struct DeviceInfo {
    /// `std::env::consts::OS` (`"linux"`, `"macos"`).
    pub os: RString,
    /// `std::env::consts::ARCH` (`"x86_64"`, `"aarch64"`).
    pub arch: RString,
    /// Logical CPUs available to this process.
    pub cpu_cores: u32,
    /// SIMD features detected (`"avx2"`, `"avx512f"`, `"neon"`, ...).
    pub cpu_features: RVec<RString>,
    /// Total RAM usable by this process in bytes (cgroup limit respected); 0 if unknown.
    pub total_memory: u64,
    /// RAM available now in bytes; 0 if unknown.
    pub available_memory: u64,
    /// Physical CPU cores available to this process (what compute threads should use).
    pub physical_cores: u32,
    /// GPUs and other accelerators the host found (empty on CPU-only machines).
    pub accelerators: RVec<Accelerator>,
    /// Additions without an ABI change, as a JSON object (empty = none). Keys so far:
    /// `cache_dir` (string): a folder of the host's cache where plugins may keep files
    /// they derive from models (a format conversion), each under a name of its own.
    pub options: RString,
}

/// The model a request targets, resolved by the host from the registry.
#[repr(C)]
#[derive(StableAbi, serde::Serialize, serde::Deserialize, Clone, Debug)]
pub struct ModelSpec {
    /// Registry id.
    pub id: RString,
    /// Kind the model is used as.
    pub kind: ModelKind,
    /// Architecture (`model_type`), lowercase.
    pub architecture: RString,
    /// Local directory (or single file, e.g. a `.gguf`) holding the model.
    pub path: RString,
    /// Quantization as declared in the registry (`"q4_1"`, `"4bit"`, ...), if any.
    pub quantization: ROption<RString>,
    /// Load-time dtype requested (`"float32"`, `"bfloat16"`, ...); plugin policy if none.
    pub dtype: ROption<RString>,
    /// Context length to plan for (tokens); 0 means the model's own maximum.
    pub context_length: u32,
    /// Default system prompt for chat models.
    pub system_prompt: ROption<RString>,
    /// Extra end-of-sequence tokens (as text).
    pub extra_eos: RVec<RString>,
    /// The registry's plugin-specific table for this model, as a JSON object.
    pub options: RString,
}

/// Input of the root module's `probe`.
#[repr(C)]
#[derive(StableAbi, serde::Serialize, serde::Deserialize, Clone, Debug)]
pub struct ProbeRequest {
    /// This machine.
    pub device: DeviceInfo,
    /// The model to be served, when the probe is for a specific model.
    pub model: ROption<ModelSpec>,
}

/// Output of `probe`: can the plugin run here, and how well.
#[repr(C)]
#[derive(StableAbi, serde::Serialize, serde::Deserialize, Clone, Debug)]
pub struct Probe {
    /// 0 = cannot run; higher is better. Rough scale: 10 = portable CPU fallback,
    /// 50 = optimised CPU, 100 = GPU.
    pub score: u32,
    /// The compute backend that would be used (`"mlx-cpu"`, `"mlx-cuda"`, `"ggml-cpu"`).
    pub backend: RString,
    /// Why this score, in one line.
    pub reason: RString,
}

/// Input of the root module's `load_model`.
#[repr(C)]
#[derive(StableAbi, serde::Serialize, serde::Deserialize, Clone, Debug)]
pub struct LoadRequest {
    /// The model to load.
    pub model: ModelSpec,
    /// This machine.
    pub device: DeviceInfo,
    /// The host's memory budget for all loaded models together, in bytes (0 = none).
    /// The host has already checked that this model's estimate fits in what is left;
    /// plugins use it to bound their runtime's own pools (MLX's memory and cache limits).
    pub memory_budget: u64,
}

/// Facts about a loaded model.
#[repr(C)]
#[derive(StableAbi, serde::Serialize, serde::Deserialize, Clone, Debug)]
pub struct ModelInfo {
    /// Registry id.
    pub id: RString,
    /// Kind served.
    pub kind: ModelKind,
    /// Architecture (`model_type`).
    pub architecture: RString,
    /// Compute backend in use (`"mlx-cpu"`, ...).
    pub backend: RString,
    /// dtype the weights were loaded as.
    pub dtype: RString,
    /// Output vector size (embeddings) or hidden size (others).
    pub dim: u32,
    /// Longest input in tokens.
    pub max_tokens: u32,
    /// Parameter count.
    pub parameters: u64,
    /// Bytes held by the weights.
    pub weight_bytes: u64,
}

/// A compute accelerator the host found (a GPU), passed to plugins in [`DeviceInfo`].
#[repr(C)]
#[derive(StableAbi, serde::Serialize, serde::Deserialize, Clone, Debug, Default)]
pub struct Accelerator {
    /// Index among devices of its API (CUDA ordinal, Metal registry order).
    pub index: u32,
    /// The API: `"cuda"`, `"metal"`, `"rocm"`, ...
    pub api: RString,
    /// Marketing name (`"NVIDIA H200"`).
    pub name: RString,
    /// Device memory in bytes; 0 if unknown.
    pub total_memory: u64,
    /// Device memory free now in bytes; 0 if unknown.
    pub free_memory: u64,
    /// Compute capability or family (`"9.0"` for CUDA; `"apple9"` for Metal); may be empty.
    pub compute_capability: RString,
}

/// Input of the root module's `estimate`: what would loading this model cost?
#[repr(C)]
#[derive(StableAbi, serde::Serialize, serde::Deserialize, Clone, Debug)]
pub struct EstimateRequest {
    /// The model (its files are local).
    pub model: ModelSpec,
    /// This machine.
    pub device: DeviceInfo,
    /// Tokens per sequence to plan the KV cache and activations for (0 = the plugin's
    /// working default).
    pub context: u32,
    /// Sequences decoded together (at least 1).
    pub batch: u32,
    /// Memory the host can give this model now, in bytes (0 = no limit). A plugin with a
    /// choice (a smaller load dtype) picks what fits and says so in `note`.
    pub memory_available: u64,
}

/// Output of `estimate`: the memory a load would take and how the weights would be held.
/// The host adds the parts and checks the sum against its budget; it knows no formulas.
#[repr(C)]
#[derive(StableAbi, serde::Serialize, serde::Deserialize, Clone, Debug, Default)]
pub struct MemoryEstimate {
    /// What the weights become when loaded (`"float32"`, `"Q4_1 (memory-mapped GGUF)"`).
    pub weights_as: RString,
    /// The load dtype the plugin would use; the host passes it back in
    /// [`ModelSpec::dtype`] when it loads, so estimate and load agree.
    pub dtype: ROption<RString>,
    /// Weights in memory.
    pub weights_bytes: u64,
    /// KV cache for `context` tokens × `batch` sequences.
    pub kv_cache_bytes: u64,
    /// Activations, compute buffers, allocator slack.
    pub runtime_bytes: u64,
    /// Tokens per sequence the estimate is for.
    pub context: u32,
    /// Sequences the estimate is for.
    pub batch: u32,
    /// Weight bytes per second this plugin streams while decoding one sequence on this
    /// device, where measured (so speed ≈ this / weights_bytes); 0 = not measured.
    pub decode_bytes_per_s: f64,
    /// One line on a choice the plugin made (`"float32 would need 1.2 GB; bfloat16
    /// chosen"`), may be empty.
    pub note: RString,
    /// Additions without an ABI change, as a JSON object (empty = none).
    pub options: RString,
}

impl MemoryEstimate {
    /// Weights + KV cache + runtime.
    pub fn total_bytes(&self) -> u64 {
        self.weights_bytes
            .saturating_add(self.kv_cache_bytes)
            .saturating_add(self.runtime_bytes)
    }
}
