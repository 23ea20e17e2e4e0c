//! # TOTAL (placeholder, being written)

use strata_stack::{Layer, LayerDescriptor, Props};

struct Placeholder;
impl Layer for Placeholder {}

/// The `TOTAL` descriptor.
pub const TOTAL: LayerDescriptor = LayerDescriptor {
    name: "TOTAL",
    summary: "placeholder",
    requires: Props::NONE,
    provides: Props::NONE,
    params: &[],
    max_header_len: |_| 0,
    build: |_| Ok(Box::new(Placeholder)),
};
