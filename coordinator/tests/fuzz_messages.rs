//! Fuzzing what a peer sends the coordinator, with proptest generators (cargo-fuzz needs a
//! nightly toolchain): random bytes, and valid `WorkerMessage`, `RegisterRequest` and
//! `ArtifactChunk` messages with hostile strings whose encoding is then flipped, cut or extended,
//! decoded with prost and converted as the service does (`grpc::from_proto`, `grpc::peer_text`,
//! the artifact file name).
//!
//! Asserted: nothing panics; the strings the coordinator bounds (`peer_text`: errors and release
//! reasons, hostname, device, version) are bounded, free of control characters and unchanged when
//! already short and plain; an artifact digest always maps to one plain file name inside the
//! artifact directory; and the generator is not trivial (some edited messages decode, some do
//! not). Strings `from_proto` passes through as they are (metric names, result JSON, artifact
//! names and digests; checked later by `kinds` and the artifact store) are measured and printed.
//!
//! `FREQSWEEP_FUZZ_CASES` sets the cases per test (default [`DEFAULT_CASES`], at least 1000):
//! `FREQSWEEP_FUZZ_CASES=200000 cargo test -p freqsweep-coordinator --test fuzz_messages -- --nocapture`.

use freqsweep_coordinator::driver::FromWorker;
use freqsweep_coordinator::grpc::{from_proto, peer_text};
use freqsweep_proto::v1::{self as pb, worker_message};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use prost::Message;
use std::cell::RefCell;
use std::path::Path;

const DEFAULT_CASES: u32 = 50_000;
/// The bounds `grpc.rs` applies (its private `NAME_BYTES` and `MESSAGE_BYTES`).
const NAME_BYTES: usize = 256;
const MESSAGE_BYTES: usize = 4096;

fn runner() -> TestRunner {
    // At least 1000: the checks on how many inputs decode need a sample.
    let cases =
        std::env::var("FREQSWEEP_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_CASES).max(1000);
    TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() })
}

/// Strings a hostile peer sends: short random Unicode, control characters and escapes, and long
/// repeats of multi-byte characters (cuts must land on character boundaries).
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec(any::<char>(), 0..24).prop_map(String::from_iter),
        2 => prop::collection::vec(prop::sample::select(&["a", "\n", "\r", "\u{1b}[31m", "\t", "\0", "é", "😀", "\u{202e}", "…", "\\n"][..]), 0..40)
            .prop_map(|parts| parts.concat()),
        1 => (prop::sample::select(&["a", "é", "😀", "\n", "ab\u{7}"][..]), 0..6000usize).prop_map(|(s, n)| s.repeat(n)),
        1 => Just(String::new()),
    ]
}

fn artifact() -> impl Strategy<Value = pb::ArtifactRef> {
    let digest = prop_oneof![
        hostile(),
        Just("sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".to_string()),
        Just("../../etc/passwd".to_string()),
        Just("sha256:/abs/path".to_string()),
        Just("..".to_string()),
    ];
    (hostile(), digest, any::<u64>()).prop_map(|(name, digest, size)| pb::ArtifactRef { name, digest, size })
}

fn point() -> impl Strategy<Value = pb::MetricPoint> {
    (hostile(), any::<f64>(), any::<u64>(), hostile(), any::<i32>(), any::<f64>()).prop_map(
        |(name, epoch, step, test_set, class_index, value)| pb::MetricPoint {
            name,
            epoch,
            step,
            test_set,
            class_index,
            value,
        },
    )
}

fn body() -> impl Strategy<Value = worker_message::Body> {
    use worker_message::Body;
    prop_oneof![
        (prop::collection::vec(any::<u64>(), 0..8), any::<f64>(), any::<f64>(), any::<u64>()).prop_map(
            |(running_attempts, progress, throughput, newest_lease)| Body::Heartbeat(pb::Heartbeat {
                running_attempts,
                progress,
                throughput,
                newest_lease
            })
        ),
        any::<u32>().prop_map(|slots| Body::LeaseRequest(pb::LeaseRequest { slots })),
        (any::<u64>(), any::<u64>(), prop::collection::vec(point(), 0..4))
            .prop_map(|(attempt_id, seq, points)| Body::Metrics(pb::MetricBatch { attempt_id, seq, points })),
        (any::<u64>(), hostile(), prop::collection::vec(artifact(), 0..3), any::<f64>()).prop_map(
            |(attempt_id, result_json, outputs, seconds)| Body::Result(pb::TaskResult {
                attempt_id,
                result_json,
                outputs,
                seconds
            })
        ),
        (any::<u64>(), hostile(), any::<bool>())
            .prop_map(|(attempt_id, error, retryable)| Body::Failure(pb::TaskFailure { attempt_id, error, retryable })),
        (any::<u64>(), hostile()).prop_map(|(attempt_id, reason)| Body::Release(pb::Release { attempt_id, reason })),
        (any::<u64>(), prop::option::of(artifact()), any::<u32>()).prop_map(|(attempt_id, artifact, epochs_done)| {
            Body::Checkpoint(pb::CheckpointSaved { attempt_id, artifact, epochs_done })
        }),
    ]
}

fn worker_message() -> impl Strategy<Value = pb::WorkerMessage> {
    (hostile(), prop::option::of(body())).prop_map(|(worker_id, body)| pb::WorkerMessage { worker_id, body })
}

fn register_request() -> impl Strategy<Value = pb::RegisterRequest> {
    let capabilities = (hostile(), any::<u64>(), any::<u32>(), hostile()).prop_map(
        |(device, device_memory_bytes, cpu_threads, libtorch_version)| pb::Capabilities {
            device,
            device_memory_bytes,
            cpu_threads,
            libtorch_version,
        },
    );
    (
        any::<u32>(),
        hostile(),
        hostile(),
        prop::option::of(capabilities),
        prop::collection::vec(hostile(), 0..4),
        prop::collection::vec(hostile(), 0..3),
    )
        .prop_map(|(protocol_version, worker_version, hostname, capabilities, cached_artifacts, features)| {
            pb::RegisterRequest { protocol_version, worker_version, hostname, capabilities, cached_artifacts, features }
        })
}

fn artifact_chunk() -> impl Strategy<Value = pb::ArtifactChunk> {
    (prop::option::of(artifact()), any::<u64>(), prop::collection::vec(any::<u8>(), 0..64))
        .prop_map(|(artifact, offset, data)| pb::ArtifactChunk { artifact, offset, data })
}

/// One edit of encoded bytes.
#[derive(Clone, Debug)]
enum Edit {
    Flip { at: u32, mask: u8 },
    Truncate { at: u32 },
    Insert { at: u32, bytes: Vec<u8> },
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        (any::<u32>(), 1..=255u8).prop_map(|(at, mask)| Edit::Flip { at, mask }),
        any::<u32>().prop_map(|at| Edit::Truncate { at }),
        (any::<u32>(), prop::collection::vec(any::<u8>(), 1..6)).prop_map(|(at, bytes)| Edit::Insert { at, bytes }),
    ];
    prop::collection::vec(edit, 0..3)
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let at = |at: u32, len: usize| at as usize % (len + 1);
        match e {
            Edit::Flip { at: i, mask } => {
                if !bytes.is_empty() {
                    let i = *i as usize % bytes.len();
                    bytes[i] ^= mask;
                }
            }
            Edit::Truncate { at: i } => bytes.truncate(at(*i, bytes.len())),
            Edit::Insert { at: i, bytes: b } => {
                let i = at(*i, bytes.len());
                bytes.splice(i..i, b.iter().copied());
            }
        }
    }
    bytes
}

/// Run `f`; a panic becomes a test failure with its message.
fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let text = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
        TestCaseError::fail(format!("{what} panicked: {}", text.unwrap_or_default()))
    })
}

/// `out` is `peer_text(input, max)`: bounded, no control characters, and `input` itself when it
/// was already short and plain.
fn check_peer_text(what: &str, input: &str, out: &str, max: usize) -> Result<(), TestCaseError> {
    if out.len() > max + '…'.len_utf8() {
        return Err(TestCaseError::fail(format!("{what}: {} bytes kept (bound {max})", out.len())));
    }
    if out.chars().any(char::is_control) {
        return Err(TestCaseError::fail(format!("{what}: a control character kept: {out:?}")));
    }
    let plain = input.len() <= max && !input.chars().any(char::is_control);
    if plain && out != input {
        return Err(TestCaseError::fail(format!("{what}: a short plain string changed: {input:?} → {out:?}")));
    }
    Ok(())
}

#[derive(Default, Debug)]
struct Tally {
    cases: usize,
    decoded: usize,
    refused: usize,
    /// Longest string `from_proto` passed through as it is, and where.
    longest_passed: (usize, &'static str),
    control_passed: usize,
}

impl Tally {
    fn passed(&mut self, what: &'static str, s: &str) {
        if s.len() > self.longest_passed.0 {
            self.longest_passed = (s.len(), what);
        }
        if s.chars().any(char::is_control) {
            self.control_passed += 1;
        }
    }
}

/// Decode `bytes` as a `WorkerMessage` and convert it as the session does.
fn judge_worker_message(bytes: &[u8], tally: &mut Tally) -> Result<(), TestCaseError> {
    let decoded = no_panic("decode", || pb::WorkerMessage::decode(bytes))?;
    let Ok(message) = decoded else {
        tally.refused += 1;
        return Ok(());
    };
    tally.decoded += 1;
    let body = message.body.clone();
    let converted = no_panic("from_proto", || from_proto(message))?;
    use worker_message::Body;
    match (body, converted) {
        (None, None) => {}
        (Some(Body::Failure(f)), Some(FromWorker::Failure { error, .. })) => {
            check_peer_text("failure error", &f.error, &error, MESSAGE_BYTES)?
        }
        (Some(Body::Release(r)), Some(FromWorker::Release { reason, .. })) => {
            check_peer_text("release reason", &r.reason, &reason, MESSAGE_BYTES)?
        }
        (Some(Body::Metrics(_)), Some(FromWorker::Metrics { points, .. })) => {
            for p in &points {
                tally.passed("metric name", &p.name);
                tally.passed("metric test set", &p.test_set);
            }
        }
        (Some(Body::Result(_)), Some(FromWorker::Result { result_json, outputs, .. })) => {
            tally.passed("result_json", &result_json);
            for o in &outputs {
                tally.passed("output name", &o.name);
                tally.passed("output digest", &o.digest);
                check_file_name(&o.digest)?;
            }
        }
        (Some(Body::Checkpoint(_)), Some(FromWorker::Checkpoint { artifact, .. })) => {
            if let Some(a) = artifact {
                tally.passed("checkpoint name", &a.name);
                check_file_name(&a.digest)?;
            }
        }
        (Some(Body::Heartbeat(_)), Some(FromWorker::Heartbeat { .. }))
        | (Some(Body::LeaseRequest(_)), Some(FromWorker::LeaseRequest { .. })) => {}
        (body, converted) => {
            return Err(TestCaseError::fail(format!("{body:?} converted to {converted:?}")));
        }
    }
    Ok(())
}

/// The artifact store keeps `digest` at `root/file_name(digest)`: one plain component inside root.
fn check_file_name(digest: &str) -> Result<(), TestCaseError> {
    let name = no_panic("file_name", || freqsweep_common::digest::file_name(digest))?;
    let root = Path::new("/artifacts");
    let plain = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !plain || (!name.is_empty() && root.join(&name).parent() != Some(root)) {
        return Err(TestCaseError::fail(format!("digest {digest:?} is stored as {name:?}")));
    }
    Ok(())
}

fn print(what: &str, t: &Tally) {
    eprintln!(
        "{what}: {} cases, {} decoded, {} refused by prost; longest string passed through unbounded: {} bytes ({}), {} with control characters",
        t.cases, t.decoded, t.refused, t.longest_passed.0, t.longest_passed.1, t.control_passed
    );
}

#[test]
fn worker_messages_from_random_or_edited_bytes_convert_without_panics_and_bounded() {
    let tally = RefCell::new(Tally::default());
    let edited = (worker_message(), edits()).prop_map(|(m, e)| apply(m.encode_to_vec(), &e));
    let random = prop::collection::vec(any::<u8>(), 0..200);
    let result = runner().run(&prop_oneof![3 => edited, 1 => random], |bytes| {
        let mut t = tally.borrow_mut();
        t.cases += 1;
        judge_worker_message(&bytes, &mut t)
    });
    let t = tally.borrow();
    print("worker messages", &t);
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(t.decoded * 10 > t.cases && t.refused * 10 > t.cases, "{t:?}");
}

#[test]
fn register_requests_keep_bounded_plain_names() {
    let tally = RefCell::new(Tally::default());
    let edited = (register_request(), edits()).prop_map(|(m, e)| apply(m.encode_to_vec(), &e));
    let random = prop::collection::vec(any::<u8>(), 0..200);
    let result = runner().run(&prop_oneof![3 => edited, 1 => random], |bytes| {
        let mut t = tally.borrow_mut();
        t.cases += 1;
        let Ok(r) = no_panic("decode", || pb::RegisterRequest::decode(&bytes[..]))? else {
            t.refused += 1;
            return Ok(());
        };
        t.decoded += 1;
        // As `register` keeps them.
        let device = r.capabilities.as_ref().map(|c| c.device.clone()).unwrap_or_default();
        for (what, s) in [("hostname", &r.hostname), ("device", &device), ("version", &r.worker_version)] {
            let kept = no_panic("peer_text", || peer_text(s, NAME_BYTES))?;
            check_peer_text(what, s, &kept, NAME_BYTES)?;
        }
        // Passed on as they are: digests looked up in the store's index, features compared.
        for d in &r.cached_artifacts {
            t.passed("cached artifact", d);
            check_file_name(d)?;
        }
        for f in &r.features {
            t.passed("feature", f);
        }
        Ok(())
    });
    let t = tally.borrow();
    print("register requests", &t);
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(t.decoded * 10 > t.cases && t.refused * 10 > t.cases, "{t:?}");
}

#[test]
fn artifact_chunks_name_one_file_inside_the_store() {
    let tally = RefCell::new(Tally::default());
    let edited = (artifact_chunk(), edits()).prop_map(|(m, e)| apply(m.encode_to_vec(), &e));
    let random = prop::collection::vec(any::<u8>(), 0..200);
    let result = runner().run(&prop_oneof![3 => edited, 1 => random], |bytes| {
        let mut t = tally.borrow_mut();
        t.cases += 1;
        let Ok(chunk) = no_panic("decode", || pb::ArtifactChunk::decode(&bytes[..]))? else {
            t.refused += 1;
            return Ok(());
        };
        t.decoded += 1;
        if let Some(a) = &chunk.artifact {
            t.passed("upload name", &a.name);
            check_file_name(&a.digest)?;
        }
        Ok(())
    });
    let t = tally.borrow();
    print("artifact chunks", &t);
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(t.decoded * 10 > t.cases && t.refused * 10 > t.cases, "{t:?}");
}

/// `peer_text` itself, on any string and bound.
#[test]
fn peer_text_is_bounded_plain_and_a_prefix() {
    let cases = std::cell::Cell::new(0usize);
    let result = runner().run(&(hostile(), 0..5000usize), |(s, max)| {
        cases.set(cases.get() + 1);
        let out = no_panic("peer_text", || peer_text(&s, max))?;
        check_peer_text("peer_text", &s, &out, max)?;
        // Without control characters it keeps a prefix of the input (plus `…` when cut).
        if !s.chars().any(char::is_control) && !s.starts_with(out.trim_end_matches('…')) {
            return Err(TestCaseError::fail(format!("{out:?} is not a prefix of {s:?}")));
        }
        Ok(())
    });
    eprintln!("peer_text: {} cases", cases.get());
    if let Err(e) = result {
        panic!("{e}");
    }
}
