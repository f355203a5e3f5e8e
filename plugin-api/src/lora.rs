//! LoRA adapter (`lora`) requests, sent to a loaded base model.

use abi_stable::{
    std_types::{RString, RVec},
    StableAbi,
};

/// What to do with an adapter. An open set of codes.
#[repr(transparent)]
#[derive(
    StableAbi, serde::Serialize, serde::Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default,
)]
pub struct AdapterOp(pub u8);

impl AdapterOp {
    /// List loaded adapters.
    pub const LIST: Self = Self(0);
    /// Load an adapter from `path` under `name` (requests then select it by name).
    pub const LOAD: Self = Self(1);
    /// Unload adapter `name`.
    pub const UNLOAD: Self = Self(2);
    /// Merge adapter `name` into the base weights permanently (for this loaded model).
    pub const FUSE: Self = Self(3);
}

/// An adapter operation.
#[repr(C)]
#[derive(StableAbi, serde::Serialize, serde::Deserialize, Clone, Debug, Default)]
pub struct AdapterRequest {
    /// Operation.
    pub op: AdapterOp,
    /// Adapter name.
    pub name: RString,
    /// Adapter directory (`adapter_config.json` + `adapters.safetensors` or PEFT layout).
    pub path: RString,
    /// Scale applied to the low-rank update.
    pub scale: f32,
    /// Additions without an ABI change, as a JSON object (empty = none).
    pub options: RString,
}

/// State after the operation.
#[repr(C)]
#[derive(StableAbi, serde::Serialize, serde::Deserialize, Clone, Debug, Default)]
pub struct AdapterResponse {
    /// Adapters loaded now.
    pub loaded: RVec<RString>,
    /// Adapters fused into the weights.
    pub fused: RVec<RString>,
}
