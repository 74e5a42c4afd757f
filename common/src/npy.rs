//! NumPy `.npy` files (format versions 1–3, C order, little-endian), read and written without
//! NumPy. Every problem — bad magic, truncated data, an unsupported dtype, a shape that does not fit
//! — is an [`NpyError`] that names the file and what was expected, never a panic.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Element types this project reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
}

impl DType {
    fn parse(descr: &str) -> Option<DType> {
        // '|' = not applicable (1-byte types), '<' = little-endian, '=' = native (little on our targets).
        let (order, code) = descr.split_at(1);
        if !matches!(order, "<" | "|" | "=") {
            return None;
        }
        Some(match code {
            "u1" => DType::U8,
            "i1" => DType::I8,
            "u2" => DType::U16,
            "i2" => DType::I16,
            "u4" => DType::U32,
            "i4" => DType::I32,
            "u8" => DType::U64,
            "i8" => DType::I64,
            "f4" => DType::F32,
            "f8" => DType::F64,
            "b1" => DType::U8,
            _ => return None,
        })
    }

    fn descr(self) -> &'static str {
        match self {
            DType::U8 => "|u1",
            DType::I8 => "|i1",
            DType::U16 => "<u2",
            DType::I16 => "<i2",
            DType::U32 => "<u4",
            DType::I32 => "<i4",
            DType::U64 => "<u8",
            DType::I64 => "<i8",
            DType::F32 => "<f4",
            DType::F64 => "<f8",
        }
    }

    pub fn size(self) -> usize {
        match self {
            DType::U8 | DType::I8 => 1,
            DType::U16 | DType::I16 => 2,
            DType::U32 | DType::I32 | DType::F32 => 4,
            DType::U64 | DType::I64 | DType::F64 => 8,
        }
    }

    pub fn is_integer(self) -> bool {
        !matches!(self, DType::F32 | DType::F64)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    // Not `source`: thiserror would chain it, and `{:#}` would print the cause twice.
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },
    #[error("{path}: not a .npy file ({detail})")]
    Format { path: PathBuf, detail: String },
    #[error("{path}: unsupported dtype {descr:?} (supported: u1 i1 u2 i2 u4 i4 u8 i8 f4 f8, little-endian)")]
    DType { path: PathBuf, descr: String },
    #[error("{path}: Fortran-order arrays are not supported; save with np.ascontiguousarray")]
    FortranOrder { path: PathBuf },
    #[error("{path}: truncated: header promises {expected} data bytes for shape {shape:?}, file has {actual}")]
    Truncated { path: PathBuf, expected: usize, actual: usize, shape: Vec<usize> },
    #[error("{path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
}

/// A raw array: dtype, shape and little-endian bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl NpyArray {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every element converted to `f64` (exact for all supported types except 64-bit integers > 2^53).
    pub fn to_f64(&self) -> Vec<f64> {
        let n = self.dtype.size();
        self.data.chunks_exact(n).map(|b| decode(self.dtype, b)).collect()
    }

    /// Elements as `f32`; only for float arrays (an integer image array needs a scale decision).
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        match self.dtype {
            DType::F32 => Some(self.data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()),
            DType::F64 => Some(self.to_f64().into_iter().map(|x| x as f32).collect()),
            _ => None,
        }
    }

    /// Integer elements as `i64`; `None` for float arrays.
    pub fn to_i64(&self) -> Option<Vec<i64>> {
        if !self.dtype.is_integer() {
            return None;
        }
        let n = self.dtype.size();
        Some(
            self.data
                .chunks_exact(n)
                .map(|b| match self.dtype {
                    DType::U64 => u64::from_le_bytes(b.try_into().unwrap()) as i64,
                    DType::I64 => i64::from_le_bytes(b.try_into().unwrap()),
                    _ => decode(self.dtype, b) as i64,
                })
                .collect(),
        )
    }

    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Self {
        assert_eq!(shape.iter().product::<usize>(), values.len(), "shape does not match data length");
        NpyArray { dtype: DType::F32, shape, data: values.iter().flat_map(|x| x.to_le_bytes()).collect() }
    }

    pub fn from_f64(shape: Vec<usize>, values: &[f64]) -> Self {
        assert_eq!(shape.iter().product::<usize>(), values.len(), "shape does not match data length");
        NpyArray { dtype: DType::F64, shape, data: values.iter().flat_map(|x| x.to_le_bytes()).collect() }
    }

    pub fn from_i64(shape: Vec<usize>, values: &[i64]) -> Self {
        assert_eq!(shape.iter().product::<usize>(), values.len(), "shape does not match data length");
        NpyArray { dtype: DType::I64, shape, data: values.iter().flat_map(|x| x.to_le_bytes()).collect() }
    }

    pub fn from_u8(shape: Vec<usize>, values: &[u8]) -> Self {
        assert_eq!(shape.iter().product::<usize>(), values.len(), "shape does not match data length");
        NpyArray { dtype: DType::U8, shape, data: values.to_vec() }
    }

    /// Serialise to `.npy` bytes (format 1.0; header padded so data starts 64-byte aligned).
    pub fn to_bytes(&self) -> Vec<u8> {
        let shape = match self.shape.len() {
            1 => format!("({},)", self.shape[0]),
            _ => format!("({})", self.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
        };
        let mut header = format!("{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}", self.dtype.descr());
        let unpadded = 10 + header.len() + 1;
        header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
        header.push('\n');
        let mut out = Vec::with_capacity(10 + header.len() + self.data.len());
        out.extend_from_slice(b"\x93NUMPY\x01\x00");
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&self.data);
        out
    }

    pub fn write(&self, path: &Path) -> Result<(), NpyError> {
        let io = |cause| NpyError::Io { path: path.to_path_buf(), cause };
        // Write then rename, so a crash never leaves a truncated array behind under the final name.
        let tmp = path.with_extension("npy.partial");
        let mut file = fs::File::create(&tmp).map_err(io)?;
        file.write_all(&self.to_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        fs::rename(&tmp, path).map_err(io)
    }

    pub fn read(path: &Path) -> Result<Self, NpyError> {
        let io = |cause| NpyError::Io { path: path.to_path_buf(), cause };
        // A FIFO or a device would block or never end: only regular files are arrays.
        if !fs::metadata(path).map_err(io)?.is_file() {
            return Err(NpyError::Invalid { path: path.to_path_buf(), detail: "not a regular file".into() });
        }
        let bytes = fs::read(path).map_err(io)?;
        Self::parse(path, &bytes)
    }

    /// Parse `.npy` bytes; `path` only names the source in errors.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, NpyError> {
        let format = |detail: &str| NpyError::Format { path: path.to_path_buf(), detail: detail.to_string() };
        if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
            return Err(format("missing \\x93NUMPY magic"));
        }
        let (header_len, header_start) = match bytes[6] {
            1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
            2 | 3 => {
                if bytes.len() < 12 {
                    return Err(format("header length cut off"));
                }
                (u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize, 12)
            }
            v => return Err(format(&format!("unknown format version {v}"))),
        };
        let data_start = header_start + header_len;
        let header = bytes.get(header_start..data_start).ok_or_else(|| format("header cut off"))?;
        let header = std::str::from_utf8(header).map_err(|_| format("header is not text"))?;
        let fields = header_fields(header).map_err(|e| format(&e))?;
        let field = |key: &str| fields.iter().find(|(k, _)| k == key).map(|(_, v)| *v);
        let descr = field("descr").ok_or_else(|| format("header has no 'descr'"))?;
        let descr = descr.trim().trim_matches(|c| c == '\'' || c == '"');
        let fortran = field("fortran_order").ok_or_else(|| format("header has no 'fortran_order'"))?;
        let shape_text = field("shape").ok_or_else(|| format("header has no 'shape'"))?;
        let dtype =
            DType::parse(descr).ok_or_else(|| NpyError::DType { path: path.to_path_buf(), descr: descr.into() })?;
        match fortran.trim() {
            "False" => {}
            "True" => return Err(NpyError::FortranOrder { path: path.to_path_buf() }),
            other => return Err(format(&format!("'fortran_order' is {other:?}, not True or False"))),
        }
        let shape = parse_shape(shape_text).ok_or_else(|| format(&format!("cannot read shape {shape_text:?}")))?;
        let expected = shape
            .iter()
            .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| format("shape overflows"))?;
        let actual = bytes.len() - data_start;
        if actual < expected {
            return Err(NpyError::Truncated { path: path.to_path_buf(), expected, actual, shape });
        }
        if actual > expected {
            return Err(NpyError::Invalid {
                path: path.to_path_buf(),
                detail: format!(
                    "{} bytes after the data of shape {shape:?}: corrupt or not a single array",
                    actual - expected
                ),
            });
        }
        Ok(NpyArray { dtype, shape, data: bytes[data_start..].to_vec() })
    }
}

fn decode(dtype: DType, b: &[u8]) -> f64 {
    match dtype {
        DType::U8 => f64::from(b[0]),
        DType::I8 => f64::from(b[0] as i8),
        DType::U16 => f64::from(u16::from_le_bytes([b[0], b[1]])),
        DType::I16 => f64::from(i16::from_le_bytes([b[0], b[1]])),
        DType::U32 => f64::from(u32::from_le_bytes(b.try_into().unwrap())),
        DType::I32 => f64::from(i32::from_le_bytes(b.try_into().unwrap())),
        DType::U64 => u64::from_le_bytes(b.try_into().unwrap()) as f64,
        DType::I64 => i64::from_le_bytes(b.try_into().unwrap()) as f64,
        DType::F32 => f64::from(f32::from_le_bytes(b.try_into().unwrap())),
        DType::F64 => f64::from_le_bytes(b.try_into().unwrap()),
    }
}

/// The header dict, read strictly as NumPy writes it: `{'descr': …, 'fortran_order': …,
/// 'shape': (…), }` then spaces and a newline. Each of the three keys exactly once, no other key,
/// nothing after the dict: a header NumPy would refuse (a duplicated `shape`, say) is refused.
fn header_fields(header: &str) -> Result<Vec<(String, &str)>, String> {
    let body = header.trim_end_matches([' ', '\n']).trim_start();
    let inner = body
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .ok_or("the header is not one dict followed by padding")?;
    // Split at top-level commas (tuples and quoted strings kept whole).
    let (mut entries, mut depth, mut quote, mut start) = (Vec::new(), 0i32, None, 0);
    for (i, ch) in inner.char_indices() {
        match (quote, ch) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(ch),
            (None, '(') => depth += 1,
            (None, ')') => depth -= 1,
            (None, ',') if depth == 0 => {
                entries.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quote.is_some() || depth != 0 {
        return Err("the header dict is not closed".into());
    }
    entries.push(&inner[start..]);
    let mut fields: Vec<(String, &str)> = Vec::new();
    for entry in entries.into_iter().filter(|e| !e.trim().is_empty()) {
        let (key, value) =
            entry.split_once(':').ok_or_else(|| format!("header entry {:?} has no ':'", entry.trim()))?;
        let key = key.trim();
        let name = key
            .strip_prefix('\'')
            .and_then(|k| k.strip_suffix('\''))
            .or_else(|| key.strip_prefix('"').and_then(|k| k.strip_suffix('"')))
            .ok_or_else(|| format!("header key {key} is not a quoted string"))?;
        if !["descr", "fortran_order", "shape"].contains(&name) {
            return Err(format!("header has an unknown key '{name}'"));
        }
        if fields.iter().any(|(k, _)| k == name) {
            return Err(format!("header has the key '{name}' twice"));
        }
        fields.push((name.to_string(), value));
    }
    Ok(fields)
}

fn parse_shape(text: &str) -> Option<Vec<usize>> {
    let inner = text.trim().strip_prefix('(')?.strip_suffix(')')?;
    inner.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.trim_end_matches('L').parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_read_strictly_and_only_regular_files_are_read() {
        let good = NpyArray::from_f32(vec![2], &[1.0, 2.0]).to_bytes();
        let text =
            String::from_utf8_lossy(&good[10..10 + usize::from(u16::from_le_bytes([good[8], good[9]]))]).into_owned();
        let with = |header: &str| {
            let mut padded = header.to_string();
            while !(10 + padded.len() + 1).is_multiple_of(64) {
                padded.push(' ');
            }
            padded.push('\n');
            let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
            bytes.extend_from_slice(&(padded.len() as u16).to_le_bytes());
            bytes.extend_from_slice(padded.as_bytes());
            bytes.extend_from_slice(&good[good.len() - 8..]);
            NpyArray::parse(Path::new("x.npy"), &bytes).map(|a| a.shape).map_err(|e| e.to_string())
        };
        assert_eq!(with(text.trim_end()), Ok(vec![2]), "{text:?}");
        let twice = with("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'shape': (1,), }");
        assert!(twice.as_ref().unwrap_err().contains("the key 'shape' twice"), "{twice:?}");
        let unknown = with("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra': 1, }");
        assert!(unknown.unwrap_err().contains("unknown key 'extra'"));
        let trailing = with("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), } junk");
        assert!(trailing.unwrap_err().contains("not one dict"));
        let fortran = with("{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,), }");
        assert!(fortran.unwrap_err().contains("not True or False"));

        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.npy");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let err = NpyArray::read(&fifo).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn round_trip_every_kind() {
        let dir = tempfile::tempdir().unwrap();
        let arrays = [
            NpyArray::from_f32(vec![2, 3], &[0.0, 0.5, 1.0, -1.0, 2.5, 3.0]),
            NpyArray::from_f64(vec![3], &[1.0, 2.0, 3.0]),
            NpyArray::from_i64(vec![4], &[0, 1, 2, 3]),
            NpyArray::from_u8(vec![1, 2, 2, 3], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 255]),
            NpyArray::from_f32(vec![0, 3], &[]),
        ];
        for (i, a) in arrays.iter().enumerate() {
            let path = dir.path().join(format!("{i}.npy"));
            a.write(&path).unwrap();
            let bytes = fs::read(&path).unwrap();
            assert_eq!(bytes.len() % 64, a.data.len() % 64, "data starts 64-byte aligned");
            assert_eq!(&NpyArray::read(&path).unwrap(), a);
        }
    }

    #[test]
    fn reads_numpy_written_header_forms() {
        // Headers as NumPy writes them, including a 1-tuple and version 2.0.
        let mut v1 = b"\x93NUMPY\x01\x00".to_vec();
        let header = "{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }          \n";
        v1.extend_from_slice(&(header.len() as u16).to_le_bytes());
        v1.extend_from_slice(header.as_bytes());
        for x in [7i32, -1, 9] {
            v1.extend_from_slice(&x.to_le_bytes());
        }
        let a = NpyArray::parse(Path::new("a.npy"), &v1).unwrap();
        assert_eq!(a.shape, vec![3]);
        assert_eq!(a.to_i64().unwrap(), vec![7, -1, 9]);

        let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
        let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 1), }\n";
        v2.extend_from_slice(&(header.len() as u32).to_le_bytes());
        v2.extend_from_slice(header.as_bytes());
        v2.extend_from_slice(&2.5f64.to_le_bytes());
        assert_eq!(NpyArray::parse(Path::new("b.npy"), &v2).unwrap().to_f64(), vec![2.5]);
    }

    fn replace_bytes(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
        let at = haystack.windows(from.len()).position(|w| w == from).expect("pattern present");
        [&haystack[..at], to, &haystack[at + from.len()..]].concat()
    }

    #[test]
    fn bad_files_give_named_errors() {
        let p = Path::new("x.npy");
        let err = NpyArray::parse(p, b"PK\x03\x04 not numpy").unwrap_err();
        assert!(err.to_string().starts_with("x.npy: not a .npy file"), "{err}");

        let good = NpyArray::from_f32(vec![4, 4], &[0.5; 16]).to_bytes();
        let err = NpyArray::parse(p, &good[..good.len() - 5]).unwrap_err();
        assert!(matches!(err, NpyError::Truncated { expected: 64, actual: 59, .. }), "{err}");
        assert!(err.to_string().contains("truncated"));

        let mut extra = good.clone();
        extra.push(0);
        assert!(matches!(NpyArray::parse(p, &extra), Err(NpyError::Invalid { .. })));

        let fortran = replace_bytes(&good, b"False", b"True ");
        assert!(matches!(NpyArray::parse(p, &fortran), Err(NpyError::FortranOrder { .. })));

        let big_endian = replace_bytes(&good, b"<f4", b">f4");
        assert!(matches!(NpyArray::parse(p, &big_endian), Err(NpyError::DType { .. })));

        let err = NpyArray::read(Path::new("/nonexistent/y.npy")).unwrap_err();
        assert!(err.to_string().starts_with("/nonexistent/y.npy:"));
    }
}
