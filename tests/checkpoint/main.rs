//! The checkpoint and the import lock, end to end: the blob store against Azurite, and the
//! binary against fake upstreams with the file store.

// clippy allows these in `#[test]` functions only; in the helpers too, a panic is how a
// test reports that its setup failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod azurite;
mod blob;
mod cli;
mod support;
