//! Stable content hashes for policy hashes and pod-template hashes.

use std::io;

use serde::Serialize;
use sha2::{Digest, Sha256};

/// The first 16 hex digits of the SHA-256 of `value`'s JSON form. Stable
/// across processes and versions as long as the JSON form is.
pub fn stable_hash(value: &impl Serialize) -> String {
    let mut hasher = HashWriter(Sha256::new());
    serde_json::to_writer(&mut hasher, value).expect("serializing to a hasher cannot fail");
    let digest = hasher.0.finalize();
    digest[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

struct HashWriter(Sha256);

impl io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
