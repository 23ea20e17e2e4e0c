//! SAFE's durable log (being written).
