//! NumPy `.npy` files (format versions 1–3, C order, little-endian), read and written without
//! NumPy. Every problem — bad magic, truncated data, an unsupported dtype, a shape that does not fit
//! — is an [`NpyError`] that names the file and what was expected, never a panic.

use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Headers longer than this are refused before they are read, as NumPy ≥ 1.24 does
/// (`max_header_size`): a version 2 or 3 header may claim up to 4 GiB.
pub const MAX_HEADER_LEN: usize = 10_000;
/// At most this many dimensions, as NumPy ≥ 2.0 (`NPY_MAXDIMS`).
pub const MAX_DIMS: usize = 64;
/// The most characters of a piece of header text (a key, a value, the whole header) an error
/// shows; a longer piece is cut and ends with `…`.
pub const MAX_ECHO_CHARS: usize = 64;

const MAGIC: &[u8] = b"\x93NUMPY";
/// Magic, version and a version 2/3 header length: all [`locate_header`] needs.
const PREAMBLE_LEN: usize = 12;

/// A piece of untrusted text (header text, a key, a value) as an error shows it: on one line,
/// control and other invisible characters escaped (`\n`, `\u{1b}`), and at most
/// [`MAX_ECHO_CHARS`] characters, a longer one cut and ending with `…`.
pub fn echo(text: &str) -> String {
    crate::text::one_line(text, MAX_ECHO_CHARS)
}

/// A shape as errors show it (`[2, 3]`), bounded like [`echo`].
pub fn shape_text(shape: &[usize]) -> String {
    echo(&format!("{shape:?}"))
}

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
        // By chars, not bytes: the descr may be empty or start with any character.
        let mut chars = descr.chars();
        if !matches!(chars.next(), Some('<' | '|' | '=')) {
            return None;
        }
        let code = chars.as_str();
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

    /// The name NumPy gives the type (`float32`, `int64`, `uint8`, …); also its `Display`.
    pub fn name(self) -> &'static str {
        match self {
            DType::U8 => "uint8",
            DType::I8 => "int8",
            DType::U16 => "uint16",
            DType::I16 => "int16",
            DType::U32 => "uint32",
            DType::I32 => "int32",
            DType::U64 => "uint64",
            DType::I64 => "int64",
            DType::F32 => "float32",
            DType::F64 => "float64",
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

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    // Not `source`: thiserror would chain it, and `{:#}` would print the cause twice.
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },
    #[error("{path}: not a .npy file ({detail})")]
    Format { path: PathBuf, detail: String },
    /// `descr` as the header has it, shown through [`echo`].
    #[error("{path}: unsupported dtype \"{}\" (supported: u1 i1 u2 i2 u4 i4 u8 i8 f4 f8 b1, little-endian)", echo(.descr))]
    DType { path: PathBuf, descr: String },
    #[error("{path}: Fortran-order arrays are not supported; save with np.ascontiguousarray")]
    FortranOrder { path: PathBuf },
    #[error("{path}: truncated: header promises {expected} data bytes for shape {}, file has {actual}", shape_text(.shape))]
    Truncated { path: PathBuf, expected: usize, actual: usize, shape: Vec<usize> },
    #[error("{path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
}

/// The bytes of an `.npy` file of format `major` (1, 2 or 3): the magic, the version, `header`
/// (the dict's text) padded with spaces and a newline to a 64-byte boundary, then `data`. It
/// checks nothing, so tests can build headers [`NpyArray::to_bytes`] would not write (a header
/// too long for format 1's 16-bit length gets a saturated, wrong length).
pub fn file_bytes(major: u8, header: &str, data: &[u8]) -> Vec<u8> {
    let prefix = if major == 1 { 10 } else { 12 };
    let mut padded = header.to_string();
    while !(prefix + padded.len() + 1).is_multiple_of(64) {
        padded.push(' ');
    }
    padded.push('\n');
    let mut out = Vec::with_capacity(prefix + padded.len() + data.len());
    out.extend_from_slice(b"\x93NUMPY");
    out.extend_from_slice(&[major, 0]);
    if major == 1 {
        out.extend_from_slice(&(padded.len().min(usize::from(u16::MAX)) as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(padded.len().min(u32::MAX as usize) as u32).to_le_bytes());
    }
    out.extend_from_slice(padded.as_bytes());
    out.extend_from_slice(data);
    out
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
        let header = format!("{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}", self.dtype.descr());
        file_bytes(1, &header, &self.data)
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
        let (mut file, mut bytes, len, _) = Self::open(path)?;
        let rest = usize::try_from(len).unwrap_or(usize::MAX).saturating_sub(bytes.len());
        if bytes.try_reserve_exact(rest).is_err() {
            return Err(NpyError::Invalid {
                path: path.to_path_buf(),
                detail: format!("{len} bytes do not fit in memory"),
            });
        }
        // bounded: a regular file (checked in `open`) whose whole length was reserved above.
        file.read_to_end(&mut bytes).map_err(io)?;
        Self::parse(path, &bytes)
    }

    /// The dtype and shape of a `.npy` file from its header alone (the data is not read): what a
    /// coordinator needs to plan a dataset's heatmaps without loading its images.
    pub fn read_header(path: &Path) -> Result<(DType, Vec<usize>), NpyError> {
        let io = |cause| NpyError::Io { path: path.to_path_buf(), cause };
        let (mut file, mut bytes, _, (header_start, data_start)) = Self::open(path)?;
        let more = data_start.saturating_sub(bytes.len()) as u64;
        (&mut file).take(more).read_to_end(&mut bytes).map_err(io)?;
        Self::parse_header(path, bytes.get(header_start..data_start).unwrap_or_default())
    }

    /// The open file, its preamble, its length and where its header lies. A FIFO or a device
    /// would block or never end: only regular files are arrays. A bad preamble, a cut-off or an
    /// over-long header is refused before anything else is read.
    fn open(path: &Path) -> Result<Opened, NpyError> {
        let io = |cause| NpyError::Io { path: path.to_path_buf(), cause };
        let meta = fs::metadata(path).map_err(io)?;
        if !meta.is_file() {
            return Err(NpyError::Invalid { path: path.to_path_buf(), detail: "not a regular file".into() });
        }
        let mut file = fs::File::open(path).map_err(io)?;
        let mut bytes = Vec::new();
        (&mut file).take(PREAMBLE_LEN as u64).read_to_end(&mut bytes).map_err(io)?;
        let header = locate_header(path, &bytes, meta.len())?;
        Ok((file, bytes, meta.len(), header))
    }

    fn parse_header(path: &Path, header: &[u8]) -> Result<(DType, Vec<usize>), NpyError> {
        let format = |detail: &str| NpyError::Format { path: path.to_path_buf(), detail: detail.to_string() };
        let header = std::str::from_utf8(header).map_err(|_| format("header is not text"))?;
        let fields = header_fields(header).map_err(|e| format(&e))?;
        let field = |key: &str| fields.iter().find(|(k, _)| k == key).map(|(_, v)| *v);
        let descr = field("descr").ok_or_else(|| format("header has no 'descr'"))?;
        let descr = descr.trim().trim_matches(|c| c == '\'' || c == '"');
        let fortran = field("fortran_order").ok_or_else(|| format("header has no 'fortran_order'"))?;
        let shape_field = field("shape").ok_or_else(|| format("header has no 'shape'"))?;
        let dtype =
            DType::parse(descr).ok_or_else(|| NpyError::DType { path: path.to_path_buf(), descr: descr.into() })?;
        match fortran.trim() {
            "False" => {}
            "True" => return Err(NpyError::FortranOrder { path: path.to_path_buf() }),
            other => return Err(format(&format!("'fortran_order' is \"{}\", not True or False", echo(other)))),
        }
        let shape_field = shape_field.trim();
        let shape = parse_shape(shape_field).ok_or_else(|| {
            format(&format!("cannot read shape \"{}\": not a tuple of non-negative integers", echo(shape_field)))
        })?;
        let invalid = |detail: String| NpyError::Invalid { path: path.to_path_buf(), detail };
        if shape.len() > MAX_DIMS {
            return Err(invalid(format!("shape has {} dimensions, more than NumPy's {MAX_DIMS}", shape.len())));
        }
        // The non-zero dimensions first, in any order: with a zero the array is empty, but its
        // other dimensions still reach whoever uses the shape (`C·H·W` of an empty image set).
        shape.iter().filter(|&&d| d != 0).try_fold(dtype.size(), |acc, &d| acc.checked_mul(d)).ok_or_else(|| {
            invalid(format!(
                "shape {} has too many elements: its non-zero dimensions times the {}-byte element size overflow {} bits",
                shape_text(&shape),
                dtype.size(),
                usize::BITS
            ))
        })?;
        Ok((dtype, shape))
    }

    /// Parse `.npy` bytes; `path` only names the source in errors.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, NpyError> {
        let format = |detail: &str| NpyError::Format { path: path.to_path_buf(), detail: detail.to_string() };
        let (header_start, data_start) = locate_header(path, bytes, bytes.len() as u64)?;
        let header = bytes.get(header_start..data_start).ok_or_else(|| format("header cut off"))?;
        let (dtype, shape) = Self::parse_header(path, header)?;
        let expected = shape.iter().try_fold(dtype.size(), |acc, &d| acc.checked_mul(d)).expect("checked above");
        let actual = bytes.len() - data_start;
        if actual < expected {
            return Err(NpyError::Truncated { path: path.to_path_buf(), expected, actual, shape });
        }
        if actual > expected {
            return Err(NpyError::Invalid {
                path: path.to_path_buf(),
                detail: format!(
                    "{} bytes after the data of shape {}: corrupt or not a single array",
                    actual - expected,
                    shape_text(&shape)
                ),
            });
        }
        Ok(NpyArray { dtype, shape, data: bytes[data_start..].to_vec() })
    }
}

/// An open `.npy` file: the file, its preamble bytes, its length, where its header lies.
type Opened = (fs::File, Vec<u8>, u64, (usize, usize));

/// Where the header lies, `(start, end)`, from the preamble (magic, version, header length; the
/// first [`PREAMBLE_LEN`] bytes or fewer) and the file's length: a cut-off preamble or header, or a
/// header over [`MAX_HEADER_LEN`], is refused before the header is read.
fn locate_header(path: &Path, preamble: &[u8], file_len: u64) -> Result<(usize, usize), NpyError> {
    let format = |detail: &str| NpyError::Format { path: path.to_path_buf(), detail: detail.to_string() };
    let invalid = |detail: String| NpyError::Invalid { path: path.to_path_buf(), detail };
    if !preamble.starts_with(MAGIC) {
        return Err(format("missing \\x93NUMPY magic"));
    }
    // The magic is there: a file that ends before the header length is a truncated .npy file.
    let cut =
        || invalid(format!("truncated after {} bytes: the version and header length are cut off", preamble.len()));
    let header_start = match preamble.get(MAGIC.len()) {
        None => return Err(cut()),
        Some(1) => 10,
        Some(2 | 3) => 12,
        Some(v) => return Err(format(&format!("unknown format version {v}"))),
    };
    if preamble.len() < MAGIC.len() + 2 {
        return Err(cut());
    }
    // Little-endian u16 (version 1) or u32 (versions 2 and 3).
    let length = preamble.get(MAGIC.len() + 2..header_start).ok_or_else(|| format("header length cut off"))?;
    let header_len = length.iter().rev().fold(0u64, |acc, &b| acc << 8 | u64::from(b));
    if header_start as u64 + header_len > file_len {
        return Err(format("header cut off"));
    }
    if header_len > MAX_HEADER_LEN as u64 {
        return Err(invalid(format!(
            "the header is {header_len} bytes, over the {MAX_HEADER_LEN}-byte limit (NumPy's max_header_size)"
        )));
    }
    Ok((header_start, header_start + header_len as usize))
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
        .ok_or_else(|| format!("the header is not one dict followed by padding: \"{}\"", echo(body)))?;
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
            entry.split_once(':').ok_or_else(|| format!("header entry \"{}\" has no ':'", echo(entry.trim())))?;
        let key = key.trim();
        let name = key
            .strip_prefix('\'')
            .and_then(|k| k.strip_suffix('\''))
            .or_else(|| key.strip_prefix('"').and_then(|k| k.strip_suffix('"')))
            .ok_or_else(|| format!("header key {} is not a quoted string", echo(key)))?;
        if !["descr", "fortran_order", "shape"].contains(&name) {
            return Err(format!("header has an unknown key '{}'", echo(name)));
        }
        if fields.iter().any(|(k, _)| k == name) {
            return Err(format!("header has the key '{}' twice", echo(name)));
        }
        fields.push((name.to_string(), value));
    }
    Ok(fields)
}

/// A shape tuple as Python writes it: `()`, `(3,)`, `(2, 3)`; a comma after the last element is
/// allowed, an empty element (`(1,,2)`, `(,)`) is not.
fn parse_shape(text: &str) -> Option<Vec<usize>> {
    let inner = text.trim().strip_prefix('(')?.strip_suffix(')')?;
    if inner.trim().is_empty() {
        return Some(Vec::new());
    }
    let mut elements: Vec<&str> = inner.split(',').map(str::trim).collect();
    if elements.len() > 1 && elements.last() == Some(&"") {
        elements.pop();
    }
    elements
        .into_iter()
        .map(|s| s.strip_suffix('L').unwrap_or(s))
        .map(|s| if s.bytes().all(|b| b.is_ascii_digit()) { s.parse().ok() } else { None })
        .collect()
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

    fn npy(major: u8, header: &str, data: &[u8]) -> Vec<u8> {
        file_bytes(major, header, data)
    }

    fn header(descr: &str, shape: &str) -> String {
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}")
    }

    /// The error for `bytes`, checked to be one line without control characters.
    fn error(bytes: &[u8]) -> String {
        let e = NpyArray::parse(Path::new("x.npy"), bytes).unwrap_err().to_string();
        assert!(!e.chars().any(char::is_control) && e.chars().count() < 300, "{e:?}");
        assert!(e.starts_with("x.npy: "), "{e}");
        e
    }

    #[test]
    fn echo_escapes_control_characters_and_bounds_the_text() {
        assert_eq!(echo("a\nb\r\tc\u{1b}[31m\u{7f}"), "a\\nb\\r\\tc\\u{1b}[31m\\u{7f}");
        assert_eq!(echo("line\u{2028}sep\u{202e}"), "line\\u{2028}sep\\u{202e}");
        assert_eq!(echo("ключ é 'q' \"d\""), "ключ é 'q' \"d\"");
        let long = "é".repeat(1000);
        assert_eq!(echo(&long), format!("{}…", "é".repeat(MAX_ECHO_CHARS)));
        assert_eq!(echo(&"x".repeat(MAX_ECHO_CHARS)), "x".repeat(MAX_ECHO_CHARS));
        // An escape is never cut in half.
        let escapes = "\u{1b}".repeat(100);
        let shown = echo(&escapes);
        assert!(shown.ends_with("\\u{1b}…") && shown.chars().count() <= MAX_ECHO_CHARS + 1, "{shown}");
        let dims = vec![1usize; 1000];
        assert!(shape_text(&dims).ends_with('…') && shape_text(&[2, 3]) == "[2, 3]");
    }

    #[test]
    fn any_descr_gives_an_error_naming_it() {
        let data = [0u8; 8];
        for (descr, shown) in [
            ("", "\"\""),
            ("é4", "\"é4\""),
            ("<", "\"<\""),
            ("f4", "\"f4\""),
            ("<f16", "\"<f16\""),
            ("\u{1b}[2J", "\"\\u{1b}[2J\""),
        ] {
            let e = error(&npy(1, &header(descr, "(2,)"), &data));
            assert!(e.contains(&format!("unsupported dtype {shown}")), "{descr:?}: {e}");
        }
        let e = error(&npy(1, &header(&"x".repeat(5000), "(2,)"), &data));
        assert!(e.contains(&format!("unsupported dtype \"{}…\"", "x".repeat(MAX_ECHO_CHARS))), "{e}");
        for (descr, dtype) in [("<f4", DType::F32), ("=f4", DType::F32), ("|b1", DType::U8), ("<i8", DType::I64)] {
            assert_eq!(DType::parse(descr), Some(dtype), "{descr}");
        }
    }

    #[test]
    fn header_text_in_errors_is_escaped_and_bounded() {
        let data = [0u8; 8];
        let with_key = |key: &str| {
            error(&npy(1, &format!("{{'descr': '<f4', 'fortran_order': False, 'shape': (2,), {key}: 1, }}"), &data))
        };
        assert!(with_key("'a\nb'").contains("unknown key 'a\\nb'"));
        assert!(with_key("'\r\u{1b}[2K'").contains("unknown key '\\r\\u{1b}[2K'"));
        assert!(with_key("a\nb").contains("header key a\\nb is not a quoted string"));
        let long = with_key(&format!("'{}'", "k".repeat(5_000)));
        assert!(long.contains(&format!("unknown key '{}…'", "k".repeat(MAX_ECHO_CHARS))), "{long}");
        let e = error(&npy(1, "{'descr': '<f4', 'fortran_order': Fa\u{1b}lse, 'shape': (2,), }", &data));
        assert!(e.contains("'fortran_order' is \"Fa\\u{1b}lse\""), "{e}");
        let e = error(&npy(1, &header("<f4", &format!("({}2,)", "\u{1b}".repeat(3000))), &data));
        assert!(e.contains("cannot read shape \"(\\u{1b}\\u{1b}") && e.contains("…\""), "{e}");
        let e = error(&npy(2, &format!("{}{{}}", "[".repeat(5000)), &data));
        assert!(e.contains("not one dict followed by padding: \"[[[") && e.contains("…\""), "{e}");
        let e = error(&npy(
            1,
            &format!("{{'descr': '<f4', 'fortran_order': False, 'shape': (2,), '{}' }}", "\t".repeat(99)),
            &data,
        ));
        assert!(e.contains("header entry \"'\\t\\t"), "{e}");
    }

    #[test]
    fn headers_over_numpys_limit_are_refused_before_they_are_read() {
        let data = 1.5f32.to_le_bytes();
        // Exactly at the limit: read (padding spaces before the newline, as NumPy pads).
        let at_limit = |major: u8, len: usize| {
            let mut text = header("<f4", "(1,)");
            text.push_str(&" ".repeat(len - text.len() - 1));
            text.push('\n');
            let mut b = [b"\x93NUMPY", &[major, 0][..]].concat();
            if major == 1 {
                b.extend_from_slice(&(len as u16).to_le_bytes());
            } else {
                b.extend_from_slice(&(len as u32).to_le_bytes());
            }
            b.extend_from_slice(text.as_bytes());
            b.extend_from_slice(&data);
            b
        };
        for major in 1..=3 {
            let a = NpyArray::parse(Path::new("x.npy"), &at_limit(major, MAX_HEADER_LEN)).unwrap();
            assert_eq!(a.to_f32().unwrap(), vec![1.5]);
            let e = error(&at_limit(major, MAX_HEADER_LEN + 1));
            assert!(e.contains("the header is 10001 bytes, over the 10000-byte limit"), "{e}");
        }
        // From a file, the preamble alone decides: a 1 MB header in a 2 MB file is refused
        // without reading it, and a header that claims more than the file holds is cut off.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.npy");
        let mut b = at_limit(2, 1 << 20);
        b.resize(2 << 20, 0);
        fs::write(&path, &b).unwrap();
        let e = NpyArray::read(&path).unwrap_err().to_string();
        assert!(e.contains("the header is 1048576 bytes, over the 10000-byte limit"), "{e}");
        b[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        fs::write(&path, &b).unwrap();
        assert!(NpyArray::read(&path).unwrap_err().to_string().ends_with("(header cut off)"));
    }

    #[test]
    fn a_truncated_preamble_is_named_as_such() {
        let good = npy(2, &header("<f4", "(1,)"), &1.0f32.to_le_bytes());
        assert!(error(b"").contains("missing \\x93NUMPY magic"));
        assert!(error(b"\x93NUM").contains("missing \\x93NUMPY magic"));
        for n in 6..8 {
            let e = error(&good[..n]);
            assert!(
                e.contains(&format!("truncated after {n} bytes: the version and header length are cut off")),
                "{e}"
            );
        }
        for n in 8..12 {
            assert!(error(&good[..n]).contains("header length cut off"), "{n}");
        }
        assert!(error(&good[..20]).contains("header cut off"));
        assert!(error(&[&good[..6], &[7u8][..]].concat()).contains("unknown format version 7"));
    }

    #[test]
    fn shapes_are_python_tuples_of_dimensions() {
        let shape = |text: &str| parse_shape(text);
        assert_eq!(shape("()"), Some(vec![]));
        assert_eq!(shape("(3,)"), Some(vec![3]));
        assert_eq!(shape("( 3 , )"), Some(vec![3]));
        assert_eq!(shape("(2, 3)"), Some(vec![2, 3]));
        assert_eq!(shape("(2, 3,)"), Some(vec![2, 3]));
        assert_eq!(shape("(2L, 3L)"), Some(vec![2, 3]));
        for bad in ["(1,,2)", "(,)", "(2,,)", "(,2)", "(2, , )", "(+2,)", "(-1,)", "(2.0,)", "[2]", "(2", "(2LL,)"] {
            assert_eq!(shape(bad), None, "{bad}");
        }
        let e = error(&npy(1, &header("<f4", "(1,,2)"), &[0; 8]));
        assert!(e.contains("cannot read shape \"(1,,2)\""), "{e}");
        let dims = format!("({})", vec!["1"; MAX_DIMS + 1].join(", "));
        assert!(
            error(&npy(1, &header("<f4", &dims), &[0; 4])).contains("shape has 65 dimensions, more than NumPy's 64")
        );
        let dims = format!("({})", vec!["1"; MAX_DIMS].join(", "));
        assert_eq!(NpyArray::parse(Path::new("x.npy"), &npy(1, &header("<f4", &dims), &[0; 4])).unwrap().len(), 1);
    }

    #[test]
    fn every_order_of_dimensions_is_checked_for_overflow() {
        let big = 1usize << 62;
        for dims in [
            format!("(0, 3, {big}, {big})"),
            format!("({big}, {big}, 0)"),
            format!("({big}, 0, 4)"),
            "(1099511627776, 1099511627776, 1099511627776)".to_string(),
        ] {
            let e = error(&npy(1, &header("<f4", &dims), &[]));
            assert!(e.contains("has too many elements") && e.contains("4-byte element size"), "{dims}: {e}");
        }
        // 2^61 four-byte elements are 2^63 bytes: an empty array of that shape is read.
        let a = NpyArray::parse(Path::new("x.npy"), &npy(1, &header("<f4", &format!("(0, {})", 1usize << 61)), &[]));
        let a = a.unwrap();
        assert_eq!((a.len(), a.to_f32().unwrap().len()), (0, 0));
        let e = error(&npy(1, &header("<f8", &format!("({}, 0)", 1usize << 61)), &[]));
        assert!(e.contains("has too many elements"), "{e}");
    }

    #[test]
    fn dtypes_are_named_as_numpy_names_them() {
        let names: Vec<String> = [DType::U8, DType::I16, DType::U32, DType::I64, DType::F32, DType::F64]
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert_eq!(names, ["uint8", "int16", "uint32", "int64", "float32", "float64"]);
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
