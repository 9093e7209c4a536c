//! End-to-end tests: the real binary, started as the Functions host or from the command
//! line, against local fakes of ThreatFox, Graph and the managed-identity endpoint; and the
//! blob checkpoint store against Azurite.

// Test support panics on anything unexpected: that is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod blob;
mod checkpoint;
mod cli;
mod crash;
mod delivery;
mod host;
