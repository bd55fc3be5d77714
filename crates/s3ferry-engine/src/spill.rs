//! A list that lives on disk: jobs append items as they go (deletes to do after the copies,
//! entries to retry at the end, a planned pass to execute after a check) and read them back
//! in order, so memory stays flat however many there are.

use std::io::{BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
#[error("spill file: {0}")]
pub struct SpillError(String);

/// An append-only list of `T` in an anonymous temp file (JSON lines).
pub struct Spill<T> {
    out: BufWriter<std::fs::File>,
    len: u64,
    _t: PhantomData<T>,
}

impl<T: Serialize + DeserializeOwned> Spill<T> {
    pub fn new() -> Result<Self, SpillError> {
        let f = tempfile::tempfile().map_err(|e| SpillError(e.to_string()))?;
        Ok(Self {
            out: BufWriter::new(f),
            len: 0,
            _t: PhantomData,
        })
    }

    pub fn push(&mut self, item: &T) -> Result<(), SpillError> {
        serde_json::to_writer(&mut self.out, item).map_err(|e| SpillError(e.to_string()))?;
        self.out
            .write_all(b"\n")
            .map_err(|e| SpillError(e.to_string()))?;
        self.len += 1;
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Read everything back, in the order it was pushed.
    pub fn read_back(self) -> Result<SpillIter<T>, SpillError> {
        let mut f = self
            .out
            .into_inner()
            .map_err(|e| SpillError(e.to_string()))?;
        f.seek(SeekFrom::Start(0))
            .map_err(|e| SpillError(e.to_string()))?;
        Ok(SpillIter {
            lines: BufReader::new(f),
            buf: String::new(),
            _t: PhantomData,
        })
    }
}

pub struct SpillIter<T> {
    lines: BufReader<std::fs::File>,
    buf: String,
    _t: PhantomData<T>,
}

impl<T: DeserializeOwned> Iterator for SpillIter<T> {
    type Item = Result<T, SpillError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.buf.clear();
        match self.lines.read_line(&mut self.buf) {
            Ok(0) => None,
            Ok(_) => Some(serde_json::from_str(&self.buf).map_err(|e| SpillError(e.to_string()))),
            Err(e) => Some(Err(SpillError(e.to_string()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_come_back_in_order() {
        let mut s: Spill<(String, u64)> = Spill::new().unwrap();
        for i in 0..10_000u64 {
            s.push(&(format!("key\n{i}"), i)).unwrap();
        }
        assert_eq!(s.len(), 10_000);
        let back: Vec<(String, u64)> = s.read_back().unwrap().map(|r| r.unwrap()).collect();
        assert_eq!(back.len(), 10_000);
        assert_eq!(back[9_999], ("key\n9999".to_string(), 9_999));
    }
}
