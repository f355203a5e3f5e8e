//! Model conversion (`quant`) requests.

use abi_stable::{std_types::RString, StableAbi};

/// Quantize the model in `src` into a new directory `dst`.
#[repr(C)]
#[derive(StableAbi, serde::Serialize, serde::Deserialize, Clone, Debug, Default)]
pub struct QuantizeRequest {
    /// Source model directory.
    pub src: RString,
    /// Destination directory (must not exist).
    pub dst: RString,
    /// Bits per weight (2, 3, 4, 6, 8).
    pub bits: u32,
    /// Weights per scale/bias group (32, 64, 128).
    pub group_size: u32,
    /// Quantization mode (`"affine"`, `"mxfp4"`).
    pub mode: RString,
    /// Additions without an ABI change, as a JSON object (empty = none).
    pub options: RString,
}

/// What was written.
#[repr(C)]
#[derive(StableAbi, serde::Serialize, serde::Deserialize, Clone, Debug, Default)]
pub struct QuantizeReport {
    /// Destination directory.
    pub dst: RString,
    /// Tensors that were quantized.
    pub tensors_quantized: u32,
    /// Size of the source weights in bytes.
    pub bytes_in: u64,
    /// Size of the written weights in bytes.
    pub bytes_out: u64,
}
