//! A sink that sends nothing: it writes each request body it would have sent, one JSON
//! document a line, so an import can be inspected before it touches a tenant.

use std::io::Write;
use std::sync::Mutex;

use async_trait::async_trait;
use serde_json::Value;

use super::{Delivery, SendError, Sink};
use crate::feed::{Ioc, SkipReason};

/// Wraps a real sink, keeping its mapping and request shape, and writes instead of sending.
pub struct DryRunSink {
    inner: Box<dyn Sink>,
    out: Mutex<Box<dyn Write + Send>>,
}

impl DryRunSink {
    /// Writes the bodies `inner` would send to `out`.
    pub fn new(inner: Box<dyn Sink>, out: Box<dyn Write + Send>) -> Self {
        Self {
            inner,
            out: Mutex::new(out),
        }
    }
}

#[async_trait]
impl Sink for DryRunSink {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    /// Nothing is sent, so nothing needs pacing.
    fn requests_per_minute(&self) -> u32 {
        u32::MAX
    }

    fn map(&self, ioc: &Ioc) -> Result<Value, SkipReason> {
        self.inner.map(ioc)
    }

    fn request_body(&self, items: &[Value]) -> Result<Vec<u8>, SendError> {
        self.inner.request_body(items)
    }

    async fn send(&self, items: &[Value]) -> Result<Delivery, SendError> {
        let body = self.inner.request_body(items)?;
        let mut out = self.out.lock().map_err(|_| SendError::Fatal {
            message: "the dry-run output was poisoned by an earlier failure".to_owned(),
        })?;
        let written = out
            .write_all(&body)
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush());
        written.map_err(|err| SendError::Fatal {
            message: format!("could not write the dry-run output: {err}"),
        })?;
        Ok(Delivery::default())
    }

    async fn probe(&self) -> Result<String, SendError> {
        Ok("dry run: nothing is sent".to_owned())
    }
}
