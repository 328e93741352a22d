//! MIG model (filled below).
