//! Vision towers, one file each, over one shared encoder.

pub mod clip;
pub mod encoder;
pub mod siglip;
