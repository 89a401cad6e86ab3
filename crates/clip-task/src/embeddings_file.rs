//! Writing embedding matrices for other tools: safetensors (key `embeddings`) or NumPy `.npy`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use clip_core::weights::{Checkpoint, RawTensor, write_atomically};

/// Writes a `[rows, dim]` f32 matrix to `path`; the extension picks the format
/// (`.safetensors` or `.npy`).
pub fn write_embeddings(path: &Path, values: Vec<f32>, shape: [usize; 2]) -> anyhow::Result<()> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => {
            let tensors = BTreeMap::from([("embeddings".to_string(), RawTensor { shape: shape.to_vec(), values })]);
            Checkpoint::write_safetensors(&tensors, path)?;
        }
        Some("npy") => write_atomically(path, &npy_bytes(&values, shape))?,
        _ => bail!("{}: use a .safetensors or .npy file name", path.display()),
    }
    Ok(())
}

/// NumPy's format 1.0: magic, header length, a Python dict literal padded with spaces to a
/// multiple of 64 bytes and ended by a newline, then little-endian f32 values.
fn npy_bytes(values: &[f32], [rows, cols]: [usize; 2]) -> Vec<u8> {
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    bytes
}

/// Reads a text file of one item per line, ignoring blank lines.
pub fn read_lines(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
}

#[cfg(test)]
mod tests {
    use super::npy_bytes;

    #[test]
    fn npy_header_is_aligned_and_describes_the_matrix() {
        let bytes = npy_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3]);
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
        assert!(header.contains("'shape': (2, 3)") && header.ends_with('\n'), "{header}");
        assert_eq!(&bytes[10 + header_len..10 + header_len + 4], &1.0f32.to_le_bytes());
        assert_eq!(bytes.len(), 10 + header_len + 24);
    }
}
