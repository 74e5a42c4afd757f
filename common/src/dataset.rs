//! In-memory image datasets and their readers: `.npy` pairs, IDX pairs (MNIST and kin), image
//! folders and CIFAR-10 binary batches.
//!
//! A [`Dataset`] is always `float32 [N, C, H, W]` in `[0, 1]` with `i64` labels; readers convert
//! (`uint8 NHWC` → `float32 NCHW / 255`) and validate (shape, dtype, value range, label range, equal
//! `N`), naming the file and the problem in every error.

use crate::npy::{shape_text, DType, NpyArray, NpyError};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// `[N, C, H, W]`.
    pub dims: [usize; 4],
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error(transparent)]
    Npy(#[from] NpyError),
    #[error("{path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
    // Not `source`: thiserror would chain it, and `{:#}` would print the cause twice.
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },
}

pub(crate) fn invalid(path: &Path, detail: impl Into<String>) -> DatasetError {
    DatasetError::Invalid { path: path.to_path_buf(), detail: detail.into() }
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.dims[0]
    }

    pub fn is_empty(&self) -> bool {
        self.dims[0] == 0
    }

    /// Floats per image (`C·H·W`). The readers refuse shapes whose non-zero dimensions overflow,
    /// so this cannot overflow for a dataset they read, even an empty one (`N = 0`).
    pub fn image_len(&self) -> usize {
        let chw = &self.dims[1..];
        if chw.contains(&0) {
            return 0;
        }
        chw.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).expect("C·H·W overflows usize")
    }

    pub fn image(&self, i: usize) -> &[f32] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// Number of classes implied by the labels (`max + 1`).
    pub fn classes(&self) -> usize {
        self.labels.iter().copied().max().map_or(0, |m| m as usize + 1)
    }

    /// A dataset made of the images at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let mut images = Vec::with_capacity(indices.len() * self.image_len());
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        Dataset {
            dims: [indices.len(), self.dims[1], self.dims[2], self.dims[3]],
            images,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
        }
    }

    /// Write `{prefix}_x.npy` (float32 NCHW) and `{prefix}_y.npy` (int64) into `dir`.
    pub fn write_npy(&self, dir: &Path, prefix: &str) -> Result<(), DatasetError> {
        NpyArray::from_f32(self.dims.to_vec(), &self.images).write(&dir.join(format!("{prefix}_x.npy")))?;
        NpyArray::from_i64(vec![self.labels.len()], &self.labels).write(&dir.join(format!("{prefix}_y.npy")))?;
        Ok(())
    }
}

/// Images from a `.npy` file: `float32 [N,3,H,W]` in `[0,1]` (float64 accepted) or `uint8 [N,H,W,3]`.
pub fn read_images_npy(path: &Path) -> Result<([usize; 4], Vec<f32>), DatasetError> {
    let array = NpyArray::read(path)?;
    images_from_array(path, &array)
}

/// The class names of an image-folder dataset: its sub-directories, sorted (labels are their
/// positions). Entries whose names start with `.` are not classes (`.ipynb_checkpoints`, `.git`,
/// `.Trash-1000`: a hidden directory taken as class 0 shifted every real label by one). A
/// directory without sub-directories, a class without images, and a class name that is not
/// UTF-8 (names are recorded in specs, tasks and reports as text) are named.
pub fn folder_classes(dir: &Path) -> Result<Vec<String>, DatasetError> {
    let io = |cause| DatasetError::Io { path: dir.to_path_buf(), cause };
    let mut classes: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)?.filter_map(Result::ok) {
        let name = entry.file_name();
        if name.as_encoded_bytes().starts_with(b".") || !entry.path().is_dir() {
            continue;
        }
        match name.into_string() {
            Ok(name) => classes.push(name),
            // `{:?}` escapes the bytes that are not UTF-8 (`"caf\xE9"`), on one line.
            Err(name) => {
                return Err(invalid(
                    dir,
                    format!("class directory {name:?} has a name that is not UTF-8; class names must be UTF-8"),
                ))
            }
        }
    }
    classes.sort();
    if classes.is_empty() {
        return Err(invalid(dir, "an image folder needs one sub-directory per class, and has none"));
    }
    for class in &classes {
        if folder_images(&dir.join(class))?.is_empty() {
            return Err(invalid(&dir.join(class), "class directory holds no .png/.jpg/.jpeg image"));
        }
    }
    Ok(classes)
}

/// The image files of one class directory, sorted by name (other files, and files whose names
/// start with `.` such as macOS's `._photo.jpg` resource forks, are ignored).
fn folder_images(dir: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    let io = |cause| DatasetError::Io { path: dir.to_path_buf(), cause };
    let image = |p: &Path| {
        p.extension().is_some_and(|e| matches!(e.to_ascii_lowercase().to_str(), Some("png" | "jpg" | "jpeg")))
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().as_encoded_bytes().starts_with(b"."))
        .map(|e| e.path())
        .filter(|p| p.is_file() && image(p))
        .collect();
    files.sort();
    Ok(files)
}

/// The largest side of an image read from a folder, in pixels.
pub const MAX_IMAGE_SIDE: u32 = 16_384;
/// The most pixels of an image read from a folder (64 Mpixels: a 45-Mpixel camera's photo
/// passes; decoded as 16-bit RGBA it takes 512 MiB, and the folder is decoded on every core).
pub const MAX_IMAGE_PIXELS: u64 = 64 << 20;
/// The most one side of an image read from a folder may exceed the other (32:1: a panorama
/// passes). Images are scaled to cover the target and cropped, so the scaled image is this many
/// times the target along its long side; a 1 × 3 000 000 strip scaled to cover 32 × 32 would be
/// 96 000 000 × 32 pixels (9 GB).
pub const MAX_IMAGE_ASPECT: u64 = 32;

/// Refuse an image whose header says it is larger or longer than the bounds above, before its
/// pixels are decoded.
fn check_image_size(path: &Path, (w, h): (u32, u32)) -> Result<(), DatasetError> {
    let size = format!("the image is {w} × {h} pixels (width × height)");
    let (long, short) = (u64::from(w.max(h)), u64::from(w.min(h)));
    if short == 0 {
        return Err(invalid(path, format!("{size}: it has no pixels")));
    }
    if long > u64::from(MAX_IMAGE_SIDE) {
        return Err(invalid(path, format!("{size}; images may be at most {MAX_IMAGE_SIDE} pixels a side")));
    }
    if long * short > MAX_IMAGE_PIXELS {
        return Err(invalid(path, format!("{size}; images may hold at most {MAX_IMAGE_PIXELS} pixels (64 Mpixels)")));
    }
    if long > MAX_IMAGE_ASPECT * short {
        return Err(invalid(
            path,
            format!("{size}; one side may be at most {MAX_IMAGE_ASPECT} times the other (crop or split it first)"),
        ));
    }
    Ok(())
}

/// Decode one image of a folder, its size checked from the header first (and the decoder held
/// to the same bounds, in case the header lies).
fn decode_bounded(path: &Path) -> Result<image::DynamicImage, DatasetError> {
    let unreadable = |e: &dyn std::fmt::Display| invalid(path, format!("not a readable image: {e}"));
    let open = || -> Result<image::ImageReader<std::io::BufReader<std::fs::File>>, DatasetError> {
        image::ImageReader::open(path)
            .and_then(|r| r.with_guessed_format())
            .map_err(|cause| DatasetError::Io { path: path.to_path_buf(), cause })
    };
    check_image_size(path, open()?.into_dimensions().map_err(|e| unreadable(&e))?)?;
    let mut reader = open()?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_PIXELS * 8);
    reader.limits(limits);
    reader.decode().map_err(|e| unreadable(&e))
}

/// An image-folder dataset (`DIR/<class>/<image>.png|jpg`): every image decoded, converted to
/// RGB, scaled (triangle filter) so it covers `height × width` and centre-cropped to it — the
/// usual `Resize` + `CenterCrop` — as `float32 [N, 3, height, width]` in `[0, 1]`; labels follow
/// `classes` (the training split's names, so both splits agree). An image that does not decode
/// is named, and so is one beyond [`MAX_IMAGE_SIDE`], [`MAX_IMAGE_PIXELS`] or
/// [`MAX_IMAGE_ASPECT`] (refused from its header, before its pixels are decoded). Entries whose
/// names start with `.` are skipped (see [`folder_classes`]).
pub fn read_folder(dir: &Path, classes: &[String], [height, width]: [usize; 2]) -> Result<Dataset, DatasetError> {
    use rayon::prelude::*;
    let here = folder_classes(dir)?;
    if here != classes {
        return Err(invalid(dir, format!("holds classes {here:?}, the training split {classes:?}")));
    }
    let mut files: Vec<(PathBuf, i64)> = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        files.extend(folder_images(&dir.join(class))?.into_iter().map(|f| (f, label as i64)));
    }
    let plane = height * width;
    let images: Vec<Vec<f32>> = files
        .par_iter()
        .map(|(path, _)| {
            let decoded = decode_bounded(path)?;
            let rgb = decoded.to_rgb8();
            let (w0, h0) = (rgb.width().max(1) as f64, rgb.height().max(1) as f64);
            let scale = (width as f64 / w0).max(height as f64 / h0);
            let (w1, h1) =
                (((w0 * scale).round() as u32).max(width as u32), ((h0 * scale).round() as u32).max(height as u32));
            let resized = image::imageops::resize(&rgb, w1, h1, image::imageops::FilterType::Triangle);
            let (x0, y0) = ((w1 as usize - width) / 2, (h1 as usize - height) / 2);
            let mut out = vec![0.0f32; 3 * plane];
            for y in 0..height {
                for x in 0..width {
                    let pixel = resized.get_pixel((x0 + x) as u32, (y0 + y) as u32);
                    for c in 0..3 {
                        out[c * plane + y * width + x] = f32::from(pixel[c]) / 255.0;
                    }
                }
            }
            Ok(out)
        })
        .collect::<Result<_, DatasetError>>()?;
    Ok(Dataset {
        dims: [files.len(), 3, height, width],
        images: images.concat(),
        labels: files.iter().map(|(_, l)| *l).collect(),
    })
}

/// The `(H, W)` of the images in a `.npy` file, from its header alone (`float32 [N,C,H,W]` or
/// `uint8 [N,H,W,C]`, as [`read_images_npy`] reads them).
pub fn npy_image_size(path: &Path) -> Result<(usize, usize), DatasetError> {
    let (dtype, shape) = NpyArray::read_header(path)?;
    match (dtype, shape.as_slice()) {
        (DType::F32 | DType::F64, &[_, _, h, w]) => Ok((h, w)),
        (DType::U8, &[_, h, w, _]) => Ok((h, w)),
        (DType::F32 | DType::F64 | DType::U8, _) => Err(invalid(
            path,
            format!("images must be 4-D (float32 [N,C,H,W] or uint8 [N,H,W,C]), got shape {}", shape_text(&shape)),
        )),
        (other, _) => Err(invalid(path, format!("images must be float32 or uint8, got {other}"))),
    }
}

fn images_from_array(path: &Path, array: &NpyArray) -> Result<([usize; 4], Vec<f32>), DatasetError> {
    let shape = &array.shape;
    if shape.len() != 4 {
        return Err(invalid(
            path,
            format!("images must be 4-D (float32 [N,C,H,W] or uint8 [N,H,W,C]), got shape {}", shape_text(shape)),
        ));
    }
    match array.dtype {
        DType::F32 | DType::F64 => {
            let values = array.to_f32().expect("float dtype");
            if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !(0.0..=1.0).contains(*v)) {
                return Err(invalid(
                    path,
                    format!("float images must lie in [0, 1]; element {i} is {v} (scale uint8 data by 1/255 or save it as uint8 NHWC)"),
                ));
            }
            Ok(([shape[0], shape[1], shape[2], shape[3]], values))
        }
        DType::U8 => {
            let [n, h, w, c] = [shape[0], shape[1], shape[2], shape[3]];
            if !(1..=4).contains(&c) {
                return Err(invalid(
                    path,
                    format!("uint8 images must be NHWC with 1-4 channels last, got shape {}", shape_text(shape)),
                ));
            }
            let mut out = vec![0.0f32; array.data.len()];
            for i in 0..n {
                for y in 0..h {
                    for x in 0..w {
                        for ch in 0..c {
                            let src = ((i * h + y) * w + x) * c + ch;
                            let dst = ((i * c + ch) * h + y) * w + x;
                            out[dst] = f32::from(array.data[src]) / 255.0;
                        }
                    }
                }
            }
            Ok(([n, c, h, w], out))
        }
        other => Err(invalid(path, format!("images must be float32 or uint8, got {other}"))),
    }
}

/// Labels from a `.npy` file: any integer dtype, 1-D.
pub fn read_labels_npy(path: &Path) -> Result<Vec<i64>, DatasetError> {
    let array = NpyArray::read(path)?;
    if array.shape.len() != 1 {
        return Err(invalid(path, format!("labels must be 1-D [N], got shape {}", shape_text(&array.shape))));
    }
    let labels =
        array.to_i64().ok_or_else(|| invalid(path, format!("labels must be integers, got {}", array.dtype)))?;
    // A uint64 label above i64::MAX reads as negative: name the value as stored.
    let shown = |i: usize| match array.dtype {
        DType::U64 => u64::from_le_bytes(array.data[i * 8..i * 8 + 8].try_into().expect("8 bytes")).to_string(),
        _ => labels[i].to_string(),
    };
    let max = MAX_CLASSES as i64;
    if let Some(i) = labels.iter().position(|&l| l < 0 && array.dtype != DType::U64) {
        return Err(invalid(path, format!("labels must be non-negative, found {}", shown(i))));
    }
    // The labels set the classifier's size (`max + 1` classes): bound them like `classes`.
    if let Some(i) = labels.iter().position(|&l| !(0..max).contains(&l)) {
        return Err(invalid(path, format!("labels must be below {max} (one output per class), found {}", shown(i))));
    }
    Ok(labels)
}

/// An images/labels pair of `.npy` files, checked to have the same `N`.
pub fn read_npy_pair(images: &Path, labels: &Path) -> Result<Dataset, DatasetError> {
    let (dims, images_data) = read_images_npy(images)?;
    let labels_data = read_labels_npy(labels)?;
    if labels_data.len() != dims[0] {
        return Err(invalid(
            labels,
            format!("{} labels but {} has {} images", labels_data.len(), images.display(), dims[0]),
        ));
    }
    Ok(Dataset { dims, images: images_data, labels: labels_data })
}

/// The `(H, W)` of the images in an IDX file (`[N, H, W]` unsigned bytes, gzipped or not), from
/// its header alone.
pub fn idx_image_size(path: &Path) -> Result<(usize, usize), DatasetError> {
    match crate::idx::read_dims(path, crate::idx::Role::Images)?.as_slice() {
        &[_, h, w] => Ok((h, w)),
        other => Err(invalid(path, format!("images must be 3-D [N, H, W], got shape {other:?}"))),
    }
}

/// An images/labels pair of IDX files (MNIST, Fashion-MNIST, KMNIST, EMNIST; gzipped or not):
/// `uint8 [N, H, W]` images scaled to `[0, 1]`, as `channels` = 1 plane or the gray plane
/// replicated to 3 (what models taking RGB want), and `uint8 [N]` labels, checked to number `N`.
/// Labels are bytes, so the classes they imply (`max + 1 ≤ 256`) are within [`MAX_CLASSES`].
pub fn read_idx_pair(images: &Path, labels: &Path, channels: usize) -> Result<Dataset, DatasetError> {
    use crate::idx::{read_u8, Role};
    if !matches!(channels, 1 | 3) {
        return Err(invalid(images, format!("IDX images are read as 1 or 3 channels, not {channels}")));
    }
    let (dims, pixels) = read_u8(images, Role::Images)?;
    let (label_dims, label_bytes) = read_u8(labels, Role::Labels)?;
    let [n, h, w] = [dims[0], dims[1], dims[2]];
    if label_dims[0] != n {
        return Err(invalid(labels, format!("{} labels but {} has {n} images", label_dims[0], images.display())));
    }
    let plane = h * w;
    let mut out = Vec::with_capacity(pixels.len() * channels);
    // `max(1)`: `chunks_exact(0)` panics, and images of no pixels have no planes to copy.
    for image in pixels.chunks_exact(plane.max(1)) {
        for _ in 0..channels {
            out.extend(image.iter().map(|&b| f32::from(b) / 255.0));
        }
    }
    Ok(Dataset { dims: [n, channels, h, w], images: out, labels: label_bytes.iter().map(|&l| i64::from(l)).collect() })
}

/// Classes of a classifier (ImageNet-21k has 21 841).
pub const MAX_CLASSES: u64 = 100_000;

/// CIFAR-10 binary format: records of 1 label byte + 3072 bytes (1024 R, 1024 G, 1024 B; row-major).
pub const CIFAR10_RECORD: usize = 1 + 3 * 32 * 32;

/// Read one CIFAR-10 binary batch file.
pub fn read_cifar10_batch(path: &Path) -> Result<Dataset, DatasetError> {
    // A batch file holds 10 000 records (30 MB); ten times that is surely not one.
    let bytes = crate::files::read_bounded(path, 100_000 * CIFAR10_RECORD as u64)
        .map_err(|cause| DatasetError::Io { path: path.to_path_buf(), cause })?;
    if bytes.is_empty() || bytes.len() % CIFAR10_RECORD != 0 {
        return Err(invalid(
            path,
            format!("{} bytes is not a whole number of {CIFAR10_RECORD}-byte CIFAR-10 records: truncated or not a CIFAR-10 binary batch", bytes.len()),
        ));
    }
    let n = bytes.len() / CIFAR10_RECORD;
    let mut images = Vec::with_capacity(n * 3072);
    let mut labels = Vec::with_capacity(n);
    for (i, record) in bytes.chunks_exact(CIFAR10_RECORD).enumerate() {
        if record[0] > 9 {
            return Err(invalid(
                path,
                format!("record {i} has label {} (CIFAR-10 labels are 0-9): not a CIFAR-10 binary batch", record[0]),
            ));
        }
        labels.push(i64::from(record[0]));
        images.extend(record[1..].iter().map(|&b| f32::from(b) / 255.0));
    }
    Ok(Dataset { dims: [n, 3, 32, 32], images, labels })
}

/// CIFAR-10 from the directory of the binary distribution (`cifar-10-batches-bin`): the train split
/// is `data_batch_1..5.bin`, the test split `test_batch.bin`.
pub fn read_cifar10(dir: &Path, train: bool) -> Result<Dataset, DatasetError> {
    let files: Vec<PathBuf> = if train {
        (1..=5).map(|i| dir.join(format!("data_batch_{i}.bin"))).collect()
    } else {
        vec![dir.join("test_batch.bin")]
    };
    let mut all: Option<Dataset> = None;
    for file in &files {
        if !file.exists() {
            return Err(invalid(
                file,
                "missing: point the cifar10 dataset at the extracted cifar-10-batches-bin directory",
            ));
        }
        let part = read_cifar10_batch(file)?;
        match &mut all {
            None => all = Some(part),
            Some(d) => {
                d.dims[0] += part.dims[0];
                d.images.extend(part.images);
                d.labels.extend(part.labels);
            }
        }
    }
    Ok(all.expect("at least one file"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A class directory of PNGs of one colour each, `w × h` pixels.
    fn write_class(dir: &Path, class: &str, colours: &[[u8; 3]], (w, h): (u32, u32)) {
        let class_dir = dir.join(class);
        std::fs::create_dir_all(&class_dir).unwrap();
        for (i, colour) in colours.iter().enumerate() {
            let rgb: Vec<u8> = (0..w * h).flat_map(|_| *colour).collect();
            crate::image::write_rgb_png(&class_dir.join(format!("{i}.png")), w, h, &rgb).unwrap();
        }
    }

    #[test]
    fn an_image_folder_is_resized_cropped_and_labelled_by_its_sorted_classes() {
        let dir = tempfile::tempdir().unwrap();
        let train = dir.path().join("train");
        // Classes in any order on disk; a wide image is scaled to cover 8 × 8 and cropped.
        write_class(&train, "dog", &[[255, 0, 0], [0, 255, 0]], (16, 8));
        write_class(&train, "cat", &[[0, 0, 255]], (8, 8));
        std::fs::write(train.join("cat/notes.txt"), "not an image").unwrap();
        let classes = folder_classes(&train).unwrap();
        assert_eq!(classes, ["cat", "dog"]);
        let data = read_folder(&train, &classes, [8, 8]).unwrap();
        assert_eq!((data.dims, data.labels.clone()), ([3, 3, 8, 8], vec![0, 1, 1]));
        // The blue cat: channel 2 is 1, the others 0, at every pixel (a flat colour resizes flat).
        let cat = data.image(0);
        assert!(cat[..128].iter().all(|&v| v == 0.0) && cat[128..].iter().all(|&v| v == 1.0));
        assert!(data.image(1)[..64].iter().all(|&v| v == 1.0), "the red dog's red channel");

        // An empty class, a corrupt image and a split with other classes are named.
        let empty = dir.path().join("empty");
        write_class(&empty, "a", &[[1, 2, 3]], (4, 4));
        std::fs::create_dir_all(empty.join("b")).unwrap();
        let err = folder_classes(&empty).unwrap_err().to_string();
        assert!(err.contains("empty/b") && err.contains("holds no .png/.jpg/.jpeg image"), "{err}");
        std::fs::write(train.join("dog/broken.png"), b"\x89PNG not really").unwrap();
        let err = read_folder(&train, &classes, [8, 8]).unwrap_err().to_string();
        assert!(err.contains("dog/broken.png: not a readable image"), "{err}");
        let err = read_folder(&empty.join("a"), &classes, [8, 8]).unwrap_err().to_string();
        assert!(err.contains("sub-directory per class"), "{err}");
    }

    #[test]
    fn hidden_entries_are_neither_classes_nor_images() {
        let dir = tempfile::tempdir().unwrap();
        let train = dir.path().join("train");
        write_class(&train, "cat", &[[0, 0, 255]], (8, 8));
        write_class(&train, "dog", &[[255, 0, 0]], (8, 8));
        // Jupyter's checkpoints directory sorted first and became class 0.
        write_class(&train, ".ipynb_checkpoints", &[[9, 9, 9]], (8, 8));
        // macOS's resource forks look like images and do not decode.
        std::fs::write(train.join("dog/._0.png"), b"\0\x05\x16\x07 not an image").unwrap();
        std::fs::write(train.join("cat/.hidden.png"), b"not an image either").unwrap();
        let classes = folder_classes(&train).unwrap();
        assert_eq!(classes, ["cat", "dog"]);
        let data = read_folder(&train, &classes, [8, 8]).unwrap();
        assert_eq!(data.labels, [0, 1]);
    }

    #[test]
    fn a_class_name_that_is_not_utf8_is_named_on_one_line() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let train = dir.path().join("train");
        write_class(&train, "cat", &[[0, 0, 255]], (8, 8));
        let latin1 = std::ffi::OsStr::from_bytes(b"caf\xe9");
        std::fs::create_dir(train.join(latin1)).unwrap();
        std::fs::copy(train.join("cat/0.png"), train.join(latin1).join("0.png")).unwrap();
        let err = folder_classes(&train).unwrap_err().to_string();
        assert!(err.contains("train: class directory \"caf\\xE9\"") && err.contains("must be UTF-8"), "{err}");
        assert!(!err.contains('\n') && !err.contains("No such file"), "{err}");
    }

    /// CRC-32 (ISO-HDLC, as PNG chunks use), bit by bit: for the test's edited header.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }

    #[test]
    fn images_too_large_or_too_long_are_refused_from_their_header() {
        let dir = tempfile::tempdir().unwrap();
        let train = dir.path().join("train");
        write_class(&train, "ok", &[[1, 2, 3]], (8, 8));
        let classes = ["ok".to_string()];
        let refused = |name: &str| {
            let err = read_folder(&train, &classes, [8, 8]).unwrap_err().to_string();
            std::fs::remove_file(train.join("ok").join(name)).unwrap();
            err
        };
        // 100:1, a real image.
        crate::image::write_rgb_png(&train.join("ok/strip.png"), 1000, 10, &[7; 3 * 1000 * 10]).unwrap();
        let err = refused("strip.png");
        assert!(
            err.contains("ok/strip.png: the image is 1000 × 10 pixels") && err.contains("at most 32 times"),
            "{err}"
        );
        // A 1 × 1 PNG whose header claims `w × h`: refused from the header, before the decoder
        // would find the pixel data missing.
        let header_only = |name: &str, w: u32, h: u32| {
            let mut png = crate::image::rgb_png_bytes(1, 1, &[0, 0, 0]).unwrap();
            png[16..20].copy_from_slice(&w.to_be_bytes());
            png[20..24].copy_from_slice(&h.to_be_bytes());
            let crc = crc32(&png[12..29]);
            png[29..33].copy_from_slice(&crc.to_be_bytes());
            std::fs::write(train.join("ok").join(name), png).unwrap();
        };
        header_only("huge.png", 9000, 9000);
        let err = refused("huge.png");
        assert!(
            err.contains("huge.png: the image is 9000 × 9000 pixels") && err.contains("at most 67108864 pixels"),
            "{err}"
        );
        header_only("wide.png", 20_000, 1000);
        let err = refused("wide.png");
        assert!(err.contains("at most 16384 pixels a side"), "{err}");
        assert_eq!(read_folder(&train, &classes, [8, 8]).unwrap().len(), 1);
    }

    #[test]
    fn labels_are_shown_as_stored_and_bounded_like_classes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("y.npy");
        let u64_labels = NpyArray {
            dtype: DType::U64,
            shape: vec![2],
            data: [1u64, u64::MAX].iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        u64_labels.write(&path).unwrap();
        let err = read_labels_npy(&path).unwrap_err().to_string();
        assert!(err.contains(&format!("found {}", u64::MAX)) && !err.contains("found -"), "{err}");
        NpyArray::from_i64(vec![2], &[0, 1_000_000_000]).write(&path).unwrap();
        let err = read_labels_npy(&path).unwrap_err().to_string();
        assert!(err.contains("labels must be below 100000") && err.contains("found 1000000000"), "{err}");
        NpyArray::from_i64(vec![2], &[0, -3]).write(&path).unwrap();
        assert!(read_labels_npy(&path).unwrap_err().to_string().contains("non-negative, found -3"));
    }

    #[test]
    fn npy_pair_round_trip_and_uint8_nhwc() {
        let dir = tempfile::tempdir().unwrap();
        let d = Dataset { dims: [2, 3, 2, 2], images: (0..24).map(|i| i as f32 / 24.0).collect(), labels: vec![1, 0] };
        d.write_npy(dir.path(), "train").unwrap();
        let back = read_npy_pair(&dir.path().join("train_x.npy"), &dir.path().join("train_y.npy")).unwrap();
        assert_eq!(back, d);

        // uint8 NHWC: pixel (y=0,x=1) of image 0 has channels (10, 20, 30).
        let mut raw = vec![0u8; 2 * 2 * 2 * 3];
        raw[3..6].copy_from_slice(&[10, 20, 30]);
        NpyArray::from_u8(vec![2, 2, 2, 3], &raw).write(&dir.path().join("u8.npy")).unwrap();
        let (dims, x) = read_images_npy(&dir.path().join("u8.npy")).unwrap();
        assert_eq!(dims, [2, 3, 2, 2]);
        assert_eq!([x[1], x[4 + 1], x[8 + 1]], [10.0 / 255.0, 20.0 / 255.0, 30.0 / 255.0]);
    }

    #[test]
    fn npy_validation_errors_name_file_and_problem() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        NpyArray::from_f32(vec![2, 3, 2, 2], &[0.5; 24]).write(&p("x.npy")).unwrap();
        NpyArray::from_i64(vec![3], &[0, 1, 2]).write(&p("y3.npy")).unwrap();
        let err = read_npy_pair(&p("x.npy"), &p("y3.npy")).unwrap_err().to_string();
        assert!(err.contains("y3.npy") && err.contains("3 labels but") && err.contains("2 images"), "{err}");

        NpyArray::from_f32(vec![1, 3, 1, 1], &[0.0, 1.5, 0.2]).write(&p("range.npy")).unwrap();
        let err = read_images_npy(&p("range.npy")).unwrap_err().to_string();
        assert!(err.contains("range.npy") && err.contains("[0, 1]") && err.contains("1.5"), "{err}");

        NpyArray::from_f32(vec![4, 4], &[0.0; 16]).write(&p("flat.npy")).unwrap();
        assert!(read_images_npy(&p("flat.npy")).unwrap_err().to_string().contains("4-D"));
        assert!(read_labels_npy(&p("flat.npy")).unwrap_err().to_string().contains("1-D"));
        NpyArray::from_f32(vec![2], &[0.0, 1.0]).write(&p("fl.npy")).unwrap();
        assert!(read_labels_npy(&p("fl.npy")).unwrap_err().to_string().contains("integers"));
    }

    #[test]
    fn dtypes_are_named_as_numpy_names_them_and_empty_huge_images_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        NpyArray::from_f32(vec![2], &[0.0, 1.0]).write(&p("fl.npy")).unwrap();
        let err = read_labels_npy(&p("fl.npy")).unwrap_err().to_string();
        assert!(err.ends_with("labels must be integers, got float32"), "{err}");
        NpyArray::from_i64(vec![1, 1, 1, 1], &[0]).write(&p("i.npy")).unwrap();
        let err = read_images_npy(&p("i.npy")).unwrap_err().to_string();
        assert!(err.ends_with("images must be float32 or uint8, got int64"), "{err}");

        // N = 0 with C·H·W past usize: refused by the reader, so `image_len` cannot overflow.
        let huge = NpyArray { dtype: DType::F32, shape: vec![0, 3, 1 << 62, 1 << 62], data: vec![] };
        std::fs::write(p("huge.npy"), huge.to_bytes()).unwrap();
        NpyArray::from_i64(vec![0], &[]).write(&p("y0.npy")).unwrap();
        let err = read_npy_pair(&p("huge.npy"), &p("y0.npy")).unwrap_err().to_string();
        assert!(err.contains("huge.npy") && err.contains("has too many elements"), "{err}");
        // The largest that is read: its image_len is exact.
        let wide = NpyArray { dtype: DType::F32, shape: vec![0, 1, 1 << 30, 1 << 30], data: vec![] };
        std::fs::write(p("wide.npy"), wide.to_bytes()).unwrap();
        let d = read_npy_pair(&p("wide.npy"), &p("y0.npy")).unwrap();
        assert_eq!((d.len(), d.image_len()), (0, 1 << 60));
        let d = Dataset { dims: [0, usize::MAX, usize::MAX, 0], images: vec![], labels: vec![] };
        assert_eq!(d.image_len(), 0);
    }

    #[test]
    fn cifar10_batches_read_and_reject_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        for label in [3u8, 7] {
            bytes.push(label);
            bytes.extend((0..3072).map(|i| (i % 256) as u8));
        }
        let good = dir.path().join("test_batch.bin");
        std::fs::write(&good, &bytes).unwrap();
        let d = read_cifar10(dir.path(), false).unwrap();
        assert_eq!(d.dims, [2, 3, 32, 32]);
        assert_eq!(d.labels, vec![3, 7]);
        assert_eq!(d.image(1)[1024], 0.0); // green plane starts at byte 1024 → value 1024 % 256 = 0
        assert_eq!(d.image(1)[1], 1.0 / 255.0);

        std::fs::write(&good, &bytes[..bytes.len() - 100]).unwrap();
        let err = read_cifar10(dir.path(), false).unwrap_err().to_string();
        assert!(err.contains("test_batch.bin") && err.contains("truncated"), "{err}");
        bytes[0] = 42;
        std::fs::write(&good, &bytes).unwrap();
        assert!(read_cifar10(dir.path(), false).unwrap_err().to_string().contains("label 42"));
        assert!(read_cifar10(dir.path(), true).unwrap_err().to_string().contains("data_batch_1.bin"));
    }
}
