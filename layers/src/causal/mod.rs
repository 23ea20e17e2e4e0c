//! # CAUSAL (placeholder, being written)

use strata_stack::{Layer, LayerDescriptor, Props};

struct Placeholder;
impl Layer for Placeholder {}

/// The `CAUSAL` descriptor.
pub const CAUSAL: LayerDescriptor = LayerDescriptor {
    name: "CAUSAL",
    summary: "placeholder",
    requires: Props::NONE,
    provides: Props::NONE,
    params: &[],
    max_header_len: |_| 0,
    build: |_| Ok(Box::new(Placeholder)),
};
