//! The GPUaaS control plane as a library.

pub mod store;
