//! Loading a task's data on the worker: Syn_d is regenerated from its config (deterministic, so no
//! bytes travel), CIFAR-10, `.npy`, IDX files and image folders are read from paths and validated
//! by `freqsweep_common::dataset`.

use freqsweep_common::dataset::{self, Dataset, DatasetError};
use freqsweep_common::syn::{self, Split};
use freqsweep_common::task::DatasetSource;

/// The train and test splits of `source`.
pub fn load(source: &DatasetSource) -> Result<(Dataset, Dataset), DatasetError> {
    Ok((load_split(source, Split::Train)?, load_split(source, Split::Test)?))
}

/// One split of `source` (heatmaps only need the test split).
pub fn load_split(source: &DatasetSource, split: Split) -> Result<Dataset, DatasetError> {
    match (source, split) {
        (DatasetSource::Syn(config), split) => Ok(syn::generate(config, split)),
        (DatasetSource::Cifar10 { path }, split) => dataset::read_cifar10(path, split == Split::Train),
        (DatasetSource::Npy { train_images, train_labels, size, .. }, Split::Train) => {
            sized(dataset::read_npy_pair(train_images, train_labels)?, train_images, *size)
        }
        (DatasetSource::Folder { train, test, size, classes }, split) => {
            dataset::read_folder(if split == Split::Train { train } else { test }, classes, *size)
        }
        (DatasetSource::Npy { test_images, test_labels, size, .. }, Split::Test) => {
            sized(dataset::read_npy_pair(test_images, test_labels)?, test_images, *size)
        }
        (DatasetSource::Idx { train_images, train_labels, test_images, test_labels, channels, size }, split) => {
            let (images, labels) =
                if split == Split::Train { (train_images, train_labels) } else { (test_images, test_labels) };
            sized(dataset::read_idx_pair(images, labels, *channels)?, images, Some(*size))
        }
    }
}

/// `data` if its images are within the sides a spec's `size =` allows (4 to
/// [`freqsweep_common::spec::MAX_IMAGE_SIDE`]): the same bound from every source, so 1 × 1 or
/// 2 × 2 images from an npy file are refused in one line, not deep inside a model or a map.
pub fn within_size_bounds(data: Dataset, path: &std::path::Path) -> Result<Dataset, DatasetError> {
    let most = freqsweep_common::spec::MAX_IMAGE_SIDE as usize;
    let [_, _, h, w] = data.dims;
    let outside = h.min(w) < 4 || h.max(w) > most;
    if !data.is_empty() && outside {
        return Err(DatasetError::Invalid {
            path: path.to_path_buf(),
            detail: format!("images are {h}×{w}; images must be 4 to {most} pixels a side"),
        });
    }
    Ok(data)
}

/// `data` if its images are `size` (when the task says one): the coordinator planned the
/// heatmap's cells for that size, so other images would give a map of the wrong spectrum.
fn sized(data: Dataset, path: &std::path::Path, size: Option<[usize; 2]>) -> Result<Dataset, DatasetError> {
    let data = within_size_bounds(data, path)?;
    match size {
        Some([h, w]) if data.dims[2..] != [h, w] => Err(DatasetError::Invalid {
            path: path.to_path_buf(),
            detail: format!(
                "images are {}×{}, the sweep planned {h}×{w} (its size = [{h}, {w}] or the file it read then)",
                data.dims[2], data.dims[3]
            ),
        }),
        _ => Ok(data),
    }
}

/// The first `limit` images of `data` (all when `limit` is 0 or larger than the set).
pub fn truncate(data: Dataset, limit: usize) -> Dataset {
    if limit == 0 || limit >= data.len() {
        return data;
    }
    data.subset(&(0..limit).collect::<Vec<_>>())
}
