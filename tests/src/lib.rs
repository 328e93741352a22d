//! End-to-end tests of GPUaaS live in `tests/` of this crate: they link both the agent and
//! the coordinator, which no product crate may do (see ARCHITECTURE.md). This library is empty.
