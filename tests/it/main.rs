//! End-to-end tests: the real binary, started as the Functions host or from the command
//! line, against local fakes of ThreatFox, Graph and the managed-identity endpoint.

mod support;

mod cli;
mod host;
