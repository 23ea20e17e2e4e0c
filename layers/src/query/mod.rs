//! # QUERY (placeholder, being written)

use strata_stack::{Layer, LayerDescriptor, Props};

struct Placeholder;
impl Layer for Placeholder {}

/// The `QUERY` descriptor.
pub const QUERY: LayerDescriptor = LayerDescriptor {
    name: "QUERY",
    summary: "placeholder",
    requires: Props::NONE,
    provides: Props::NONE,
    params: &[],
    max_header_len: |_| 0,
    build: |_| Ok(Box::new(Placeholder)),
};
