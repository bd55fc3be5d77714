//! Writing the output stream in order, on a blocking thread (no copy of the parts).

use std::io::Write;

use bytes::Bytes;

use super::PipeError;

/// Where `down` writes. A reader that goes away (`EPIPE`, e.g. `| head -c 10`) is not an
/// error: [`Output::write`] then returns `Ok(false)` and the caller stops quietly.
pub struct Output {
    w: Option<Box<dyn Write + Send>>,
    pub written: u64,
}

impl Output {
    pub fn new(w: Box<dyn Write + Send>) -> Self {
        Self {
            w: Some(w),
            written: 0,
        }
    }

    /// Write all of `data`; `Ok(false)` when the reader has gone away.
    pub async fn write(&mut self, data: Bytes) -> Result<bool, PipeError> {
        let Some(mut w) = self.w.take() else {
            return Ok(false);
        };
        let n = data.len() as u64;
        let (w, r) = tokio::task::spawn_blocking(move || {
            let r = w.write_all(&data).and_then(|_| w.flush());
            (w, r)
        })
        .await
        .map_err(|e| PipeError::Failed(format!("output writer: {e}")))?;
        match r {
            Ok(()) => {
                self.w = Some(w);
                self.written += n;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(PipeError::Failed(format!("writing the output: {e}"))),
        }
    }
}
