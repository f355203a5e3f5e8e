//! Vision towers, one file each.

pub mod siglip;
