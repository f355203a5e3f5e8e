//! Vision towers, one file each: SigLIP and CLIP over one shared encoder, and the
//! Qwen2-VL / Qwen2.5-VL ViT.

pub mod clip;
pub mod encoder;
pub mod qwen_vit;
pub mod siglip;
