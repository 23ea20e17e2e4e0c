//! Layers for testing and demonstrating other layers: fault injection and
//! live property checkers. None of them belongs in a production stack.

pub mod loss;
