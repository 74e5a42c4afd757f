//! An image folder holding a 1 × 3 000 000-pixel PNG (a few KB on disk) once made the reader
//! ask for 9 GB while scaling it to cover the target size, which aborted the worker. Here the
//! read must be refused quickly, and no allocation the reader makes may be large: this test
//! binary's allocator refuses (so the process aborts on) any single request over 256 MiB, and
//! records the largest one made while reading.

use freqsweep_common::dataset::{folder_classes, read_folder};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

struct Capped;

static LARGEST: AtomicUsize = AtomicUsize::new(0);
const CAP: usize = 256 << 20;

unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        if layout.size() > CAP {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Capped = Capped;

#[test]
fn a_one_pixel_wide_strip_is_refused_before_it_is_decoded() {
    let dir = tempfile::tempdir().unwrap();
    let class = dir.path().join("train/strip");
    std::fs::create_dir_all(&class).unwrap();
    let (w, h) = (1u32, 3_000_000u32);
    freqsweep_common::image::write_rgb_png(&class.join("strip.png"), w, h, &vec![128; 3 * h as usize]).unwrap();
    assert!(std::fs::metadata(class.join("strip.png")).unwrap().len() < 1 << 20, "a strip compresses well");
    let train = dir.path().join("train");
    let classes = folder_classes(&train).unwrap();

    LARGEST.store(0, Ordering::Relaxed);
    let started = Instant::now();
    let err = read_folder(&train, &classes, [32, 32]).unwrap_err().to_string();
    let (elapsed, largest) = (started.elapsed(), LARGEST.load(Ordering::Relaxed));
    assert!(err.contains("strip/strip.png: the image is 1 × 3000000 pixels (width × height)"), "{err}");
    assert!(err.contains("at most 16384 pixels a side") && !err.contains('\n'), "{err}");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert!(largest < 1 << 20, "the largest allocation while reading was {largest} bytes");
}
