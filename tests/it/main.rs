//! End-to-end tests: the real binary, started as the Functions host or from the command
//! line, against local fakes of ThreatFox, Graph and the managed-identity endpoint.

// Test support panics on anything unexpected: that is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod cli;
mod delivery;
mod host;
