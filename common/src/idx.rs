//! IDX files, the format of MNIST and its kin (Fashion-MNIST, KMNIST, EMNIST): two zero bytes, a
//! type code, a dimension count, one big-endian `u32` per dimension, then the values row-major.
//!
//! Files are read as users keep them: gzipped or not, told apart by the gzip magic `1f 8b` and
//! not by the name (archives are often unpacked in place under their `.gz` names, or renamed).
//! Only unsigned bytes (type `0x08`) are read: every image and label set of the family is stored
//! so, and a float IDX file is more likely a mistake than a dataset. Reading is bounded: the
//! header's claim is checked against [`MAX_IDX_BYTES`] before any value is read, the values are
//! read only as far as the file (or its decompressed stream) holds them, and a file shorter or
//! longer than its header says is refused, each with one line naming the file.

use crate::dataset::{invalid, DatasetError};
use crate::files::bytes_text;
use std::io::Read;
use std::path::Path;

/// The most bytes of values an IDX file may hold, once decompressed. The largest of the family,
/// EMNIST ByClass's training images, hold 697 932 × 28 × 28 bytes (547 MB); a header claiming
/// more than this, or a gzip stream inflating past it, is refused instead of filling memory.
pub const MAX_IDX_BYTES: u64 = 1 << 30;

/// The type code of unsigned bytes, the only one read.
const UNSIGNED_BYTE: u8 = 0x08;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// What an IDX file is read as, which fixes its dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `[N, H, W]`.
    Images,
    /// `[N]`.
    Labels,
}

impl Role {
    fn ndim(self) -> usize {
        match self {
            Role::Images => 3,
            Role::Labels => 1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Role::Images => "images",
            Role::Labels => "labels",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Role::Images => "images must be 3-D [N, H, W]",
            Role::Labels => "labels must be 1-D [N]",
        }
    }
}

/// The IDX names of the type codes, for the refusal of all but unsigned bytes.
fn type_name(code: u8) -> &'static str {
    match code {
        0x08 => "unsigned byte",
        0x09 => "signed byte",
        0x0B => "short (int16)",
        0x0C => "int (int32)",
        0x0D => "float (float32)",
        0x0E => "double (float64)",
        _ => "unknown",
    }
}

/// An IDX file opened past its header: its dimensions and its values still to be read.
struct Opened {
    dims: Vec<u64>,
    values: Box<dyn Read>,
    gzip: bool,
    /// The bytes after the header, where the file system says (a plain regular file): a file of
    /// the wrong length is refused without reading it.
    after_header: Option<u64>,
}

/// Read into `buf` until it is full or the stream ends; the count read.
fn read_up_to(reader: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The error of a failed read: a gzip stream that does not inflate is the file's fault (named
/// as such, with the decoder's reason), anything else the system's.
fn read_error(path: &Path, gzip: bool, cause: std::io::Error) -> DatasetError {
    use std::io::ErrorKind::{InvalidData, InvalidInput, UnexpectedEof};
    if gzip && matches!(cause.kind(), InvalidData | InvalidInput | UnexpectedEof) {
        return invalid(path, format!("gzip data is corrupt or truncated ({cause})"));
    }
    DatasetError::Io { path: path.to_path_buf(), cause }
}

/// `60000 × 28 × 28`.
fn dims_text(dims: &[u64]) -> String {
    dims.iter().map(u64::to_string).collect::<Vec<_>>().join(" × ")
}

/// Open `path` and read its header: magic, type code and dimensions, checked for `role`.
fn open(path: &Path, role: Role) -> Result<Opened, DatasetError> {
    let io = |cause| DatasetError::Io { path: path.to_path_buf(), cause };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let file_len = file.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
    let mut head = [0u8; 2];
    let got = read_up_to(&mut file, &mut head).map_err(io)?;
    // The two bytes already read go back in front of the rest of the file.
    let raw = std::io::Cursor::new(head[..got].to_vec()).chain(std::io::BufReader::new(file));
    let gzip = head[..got] == GZIP_MAGIC;
    let mut values: Box<dyn Read> = if gzip { Box::new(flate2::read::MultiGzDecoder::new(raw)) } else { Box::new(raw) };
    let ndim = role.ndim();
    let header_len = 4 + 4 * ndim;
    let mut header = vec![0u8; header_len];
    let got = read_up_to(&mut values, &mut header[..4]).map_err(|e| read_error(path, gzip, e))?;
    let short = |got: usize| {
        let what = if gzip { format!("decompresses to only {got} bytes") } else { format!("ends after {got} bytes") };
        invalid(
            path,
            format!("{what}, inside its {header_len}-byte IDX header of {}: truncated or not an IDX file", role.name()),
        )
    };
    if got < 4 {
        return Err(short(got));
    }
    if header[..2] != [0, 0] {
        return Err(invalid(
            path,
            format!(
                "not an IDX file: it starts with {:02x} {:02x}{}, not 00 00 (the IDX magic)",
                header[0],
                header[1],
                if gzip { " once decompressed" } else { "" }
            ),
        ));
    }
    if header[2] != UNSIGNED_BYTE {
        return Err(invalid(
            path,
            format!(
                "holds IDX type 0x{:02X} ({}); only unsigned bytes (type 0x08) are read",
                header[2],
                type_name(header[2])
            ),
        ));
    }
    if usize::from(header[3]) != ndim {
        let hint = match (role, header[3]) {
            (Role::Images, 1) | (Role::Labels, 3) => " (images and labels swapped?)",
            _ => "",
        };
        return Err(invalid(path, format!("{}, the IDX header says {}-D{hint}", role.describe(), header[3])));
    }
    let got = read_up_to(&mut values, &mut header[4..]).map_err(|e| read_error(path, gzip, e))?;
    if got < 4 * ndim {
        return Err(short(4 + got));
    }
    let dims = header[4..].chunks_exact(4).map(|b| u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))).collect();
    let after_header = file_len.filter(|_| !gzip).map(|len| len.saturating_sub(header_len as u64));
    Ok(Opened { dims, values, gzip, after_header })
}

/// The dimensions of the IDX file at `path` (`[N, H, W]` for images, `[N]` for labels) from its
/// header alone: the values are not read (a gzipped file is inflated only as far as its header).
pub fn read_dims(path: &Path, role: Role) -> Result<Vec<usize>, DatasetError> {
    let opened = open(path, role)?;
    let dims = opened.dims.iter().map(|&d| usize::try_from(d)).collect::<Result<Vec<_>, _>>();
    dims.map_err(|_| invalid(path, format!("dimensions {} do not fit this machine", dims_text(&opened.dims))))
}

/// The dimensions and unsigned-byte values of the IDX file at `path`, read as `role`.
pub fn read_u8(path: &Path, role: Role) -> Result<(Vec<usize>, Vec<u8>), DatasetError> {
    let Opened { dims, values, gzip, after_header } = open(path, role)?;
    let claimed = dims_text(&dims);
    // Checked before a byte of values is read: four u32 dimensions overflow u64.
    let expected = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).filter(|&n| n <= MAX_IDX_BYTES);
    let Some(expected) = expected else {
        return Err(invalid(
            path,
            format!(
                "its IDX header says {claimed} values, more than the {} an IDX file may hold",
                bytes_text(MAX_IDX_BYTES)
            ),
        ));
    };
    let held = if gzip { "decompresses to" } else { "holds" };
    let wrong_length = |len: u64| {
        let detail = if len < expected {
            format!("truncated: its IDX header says {claimed} ({expected} bytes of values) but it {held} {len} after the header")
        } else {
            format!("{held} more than the {expected} bytes of values its IDX header says ({claimed}): not an IDX file of that shape")
        };
        invalid(path, detail)
    };
    // A plain file's length is known: one of the wrong length is refused before it is read.
    if let Some(len) = after_header.filter(|&len| len != expected) {
        return Err(wrong_length(len));
    }
    // Grown as the bytes arrive, never to the header's claim: a 100-byte gzip stream may claim
    // 1 GiB. One byte past the claim tells whether more follows.
    let mut data = Vec::new();
    values.take(expected + 1).read_to_end(&mut data).map_err(|e| read_error(path, gzip, e))?;
    if data.len() as u64 != expected {
        return Err(wrong_length(data.len() as u64));
    }
    let dims = dims.iter().map(|&d| d as usize).collect();
    Ok((dims, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{idx_image_size, read_idx_pair};
    use std::io::Write;
    use std::path::PathBuf;

    /// An IDX file of unsigned bytes: the header for `dims`, then `values`.
    fn idx_bytes(dims: &[u32], values: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, UNSIGNED_BYTE, dims.len() as u8];
        for d in dims {
            out.extend(d.to_be_bytes());
        }
        out.extend(values);
        out
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    /// The test split of the digits fixture (scikit-learn's real 8 × 8 scans, gray PNGs): its
    /// pixels `[N, 8, 8]` and labels, in class order.
    fn digits() -> (Vec<u8>, Vec<u8>) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/digits/test");
        let (mut pixels, mut labels) = (Vec::new(), Vec::new());
        for class in 0..10u8 {
            let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(class.to_string()))
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "png"))
                .collect();
            files.sort();
            for file in files {
                let gray = image::open(&file).unwrap().to_luma8();
                assert_eq!(gray.dimensions(), (8, 8), "{}", file.display());
                pixels.extend(gray.as_raw());
                labels.push(class);
            }
        }
        (pixels, labels)
    }

    /// Write `bytes` as `name` in `dir`; its path.
    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn real_digits_round_trip_plain_and_gzipped_as_one_or_three_channels() {
        let dir = tempfile::tempdir().unwrap();
        let (pixels, labels) = digits();
        let n = labels.len();
        assert!(n >= 100 && pixels.iter().any(|&p| p > 0 && p < 255), "real gray levels");
        let x = idx_bytes(&[n as u32, 8, 8], &pixels);
        let y = idx_bytes(&[n as u32], &labels);
        // Names that lie both ways: gzip is told by its magic bytes, not by `.gz`.
        let (x_plain, y_plain) = (write(dir.path(), "x.gz", &x), write(dir.path(), "y.gz", &y));
        let (x_gz, y_gz) = (write(dir.path(), "x-idx3-ubyte", &gzip(&x)), write(dir.path(), "y-idx1-ubyte", &gzip(&y)));

        let one = read_idx_pair(&x_plain, &y_plain, 1).unwrap();
        assert_eq!(one.dims, [n, 1, 8, 8]);
        assert_eq!(one.labels, labels.iter().map(|&l| i64::from(l)).collect::<Vec<_>>());
        assert_eq!(one.classes(), 10);
        let scaled: Vec<f32> = pixels.iter().map(|&p| f32::from(p) / 255.0).collect();
        assert_eq!(one.images, scaled, "values scaled to [0, 1], row-major per image");

        let three = read_idx_pair(&x_plain, &y_plain, 3).unwrap();
        assert_eq!(three.dims, [n, 3, 8, 8]);
        for i in [0, n / 2, n - 1] {
            let (gray, rgb) = (one.image(i), three.image(i));
            assert_eq!([&rgb[..64], &rgb[64..128], &rgb[128..]], [gray; 3], "image {i}: the plane replicated");
        }
        assert_eq!(read_idx_pair(&x_gz, &y_gz, 3).unwrap(), three, "gzip reads as plain");
        assert_eq!(read_idx_pair(&x_gz, &y_plain, 1).unwrap(), one);
        assert_eq!(idx_image_size(&x_gz).unwrap(), (8, 8));
        assert_eq!(idx_image_size(&x_plain).unwrap(), (8, 8));
        let err = read_idx_pair(&x_plain, &y_plain, 2).unwrap_err().to_string();
        assert!(err.contains("x.gz") && err.contains("1 or 3 channels, not 2"), "{err}");
    }

    /// Every refusal: one line that names the file and the cause.
    fn refused(result: Result<impl std::fmt::Debug, DatasetError>, file: &Path, cause: &str) {
        let err = result.unwrap_err().to_string();
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(err.contains(name) && err.contains(cause), "want {name:?} and {cause:?}: {err}");
        assert!(!err.contains('\n') && err.len() < 400, "one short line: {err}");
    }

    #[test]
    fn bad_files_are_refused_in_one_line_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let x = idx_bytes(&[2, 4, 4], &[7; 32]);
        let y = write(d, "y", &idx_bytes(&[2], &[0, 1]));
        let read = |images: &Path| read_idx_pair(images, &y, 1);

        let truncated = write(d, "truncated", &x[..x.len() - 5]);
        refused(read(&truncated), &truncated, "truncated: its IDX header says 2 × 4 × 4 (32 bytes of values)");
        let truncated_gz = write(d, "truncated.gz", &gzip(&x[..x.len() - 5]));
        refused(read(&truncated_gz), &truncated_gz, "decompresses to 27 after the header");
        let mut cut = gzip(&x);
        cut.truncate(cut.len() - 6);
        let cut_gz = write(d, "cut.gz", &cut);
        refused(read(&cut_gz), &cut_gz, "gzip data is corrupt or truncated");
        let header_cut = write(d, "header_cut", &x[..9]);
        refused(read(&header_cut), &header_cut, "ends after 9 bytes, inside its 16-byte IDX header of images");
        let empty = write(d, "empty", &[]);
        refused(read(&empty), &empty, "ends after 0 bytes");
        let longer = write(d, "longer", &[x.as_slice(), &[1, 2]].concat());
        refused(read(&longer), &longer, "holds more than the 32 bytes of values its IDX header says");

        let png = write(d, "digit.png", b"\x89PNG\r\n\x1a\n not an idx file");
        refused(read(&png), &png, "not an IDX file: it starts with 89 50, not 00 00");
        let npy = write(d, "x.npy.gz", &gzip(b"\x93NUMPY\x01\x00"));
        refused(read(&npy), &npy, "starts with 93 4e once decompressed");
        let mut floats = x.clone();
        floats[2] = 0x0D;
        let floats = write(d, "floats", &floats);
        refused(read(&floats), &floats, "holds IDX type 0x0D (float (float32)); only unsigned bytes (type 0x08)");
        refused(idx_image_size(&floats), &floats, "IDX type 0x0D");

        // The images and labels given the wrong way round, and a count that disagrees.
        let x_ok = write(d, "x_ok", &x);
        refused(
            read_idx_pair(&y, &x_ok, 1),
            &y,
            "images must be 3-D [N, H, W], the IDX header says 1-D (images and labels swapped?)",
        );
        let y3 = write(d, "y3", &idx_bytes(&[3], &[0, 1, 2]));
        refused(read_idx_pair(&x_ok, &y3, 1), &y3, "3 labels but");
        assert!(read_idx_pair(&x_ok, &y3, 1).unwrap_err().to_string().contains("x_ok has 2 images"));
        let missing = d.join("missing");
        refused(read(&missing), &missing, "No such file");
    }

    #[test]
    fn a_header_claiming_more_than_the_bound_is_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let y = write(d, "y", &idx_bytes(&[1], &[0]));
        // 4 × 10⁹ images of 28 × 28 (3 × 10¹² bytes) in a 100-byte file, plain and gzipped.
        let claim = idx_bytes(&[4_000_000_000, 28, 28], &[0; 84]);
        for (name, bytes) in [("huge", claim.clone()), ("huge.gz", gzip(&claim))] {
            let path = write(d, name, &bytes);
            let started = std::time::Instant::now();
            refused(
                read_idx_pair(&path, &y, 3),
                &path,
                "its IDX header says 4000000000 × 28 × 28 values, more than the 1 GiB",
            );
            assert!(started.elapsed().as_millis() < 500, "refused at once");
            // The header alone is fine: the spec's probe reads only the size.
            assert_eq!(idx_image_size(&path).unwrap(), (28, 28));
        }
        // Dimensions whose product overflows u64, and a claim within the bound in a small file:
        // no allocation of the claim (the vector grows only as bytes arrive).
        let overflow = write(d, "overflow", &idx_bytes(&[u32::MAX, u32::MAX, u32::MAX], &[]));
        refused(read_idx_pair(&overflow, &y, 1), &overflow, "more than the 1 GiB");
        let lying = write(d, "lying", &idx_bytes(&[1 << 20, 32, 32], &[1; 10]));
        refused(read_idx_pair(&lying, &y, 1), &lying, "but it holds 10 after the header");
        // A plain file longer than its header says is refused from its length, unread: a sparse
        // 2 GiB file behind a header claiming the bound (1 GiB) exactly.
        let sparse = write(d, "sparse", &idx_bytes(&[1 << 20, 32, 32], &[]));
        std::fs::OpenOptions::new().write(true).open(&sparse).unwrap().set_len(16 + (2 << 30)).unwrap();
        let started = std::time::Instant::now();
        refused(read_idx_pair(&sparse, &y, 1), &sparse, "holds more than the 1073741824 bytes of values");
        assert!(started.elapsed().as_millis() < 500, "refused at once");
        // A gzip bomb: 64 MiB of zeros (64 KB gzipped) behind a header claiming 32 bytes is
        // inflated only to 33 bytes, one past the claim to see that more follows.
        let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        bomb.write_all(&idx_bytes(&[2, 4, 4], &[])).unwrap();
        for _ in 0..64 {
            bomb.write_all(&[0; 1 << 20]).unwrap();
        }
        let bomb = write(d, "bomb.gz", &bomb.finish().unwrap());
        let started = std::time::Instant::now();
        refused(read_idx_pair(&bomb, &y, 1), &bomb, "decompresses to more than the 32 bytes of values");
        assert!(started.elapsed().as_millis() < 500, "stopped at once");
    }
}
