//! Helpers for tests and benchmarks that play a worker against a real coordinator on loopback
//! (the race test, the throughput benchmark): register and open a session the way
//! `freqsweep-worker` does, and write results that fit their task. Not used by the binary.

use freqsweep_common::task::{
    AnalysisTarget, Augment, DatasetSource, HeatmapTask, LrSchedule, Optimizer, TaskKind, TaskSpec, TrainConfig,
    TrainTask,
};
use freqsweep_proto::v1::coordinator_client::CoordinatorClient;
use freqsweep_proto::v1::{self as pb};
use tokio::sync::mpsc;
use tonic::transport::Channel;

/// A registered worker's open session: its id, where to send messages and what comes back.
pub struct SimSession {
    pub worker_id: String,
    pub session_key: String,
    pub tx: mpsc::Sender<pb::WorkerMessage>,
    pub inbound: tonic::Streaming<pb::CoordinatorMessage>,
}

/// Register on `client` and open the session with the id and key the coordinator gave; `token`
/// is sent as `authorization: Bearer <token>` when the coordinator wants one.
pub async fn open_session(
    client: &mut CoordinatorClient<Channel>,
    hostname: &str,
    token: Option<&str>,
) -> Result<SimSession, tonic::Status> {
    let mut request = tonic::Request::new(pb::RegisterRequest {
        protocol_version: freqsweep_proto::PROTOCOL_VERSION,
        hostname: hostname.to_string(),
        ..Default::default()
    });
    authorize(&mut request, token)?;
    let reply = client.register(request).await?.into_inner();
    let (tx, inbound) = attach(client, &reply.worker_id, &reply.session_key, token).await?;
    Ok(SimSession { worker_id: reply.worker_id, session_key: reply.session_key, tx, inbound })
}

/// Open a session naming `worker_id` with `session_key` (right or wrong: tests probe both).
pub async fn attach(
    client: &mut CoordinatorClient<Channel>,
    worker_id: &str,
    session_key: &str,
    token: Option<&str>,
) -> Result<(mpsc::Sender<pb::WorkerMessage>, tonic::Streaming<pb::CoordinatorMessage>), tonic::Status> {
    let (tx, rx) = mpsc::channel(64);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    authorize(&mut request, token)?;
    let metadata = request.metadata_mut();
    let value = |v: &str| v.parse().map_err(|_| tonic::Status::invalid_argument("not ASCII"));
    metadata.insert(freqsweep_proto::SESSION_WORKER_METADATA, value(worker_id)?);
    metadata.insert(freqsweep_proto::SESSION_KEY_METADATA, value(session_key)?);
    let inbound = client.session(request).await?.into_inner();
    Ok((tx, inbound))
}

fn authorize<T>(request: &mut tonic::Request<T>, token: Option<&str>) -> Result<(), tonic::Status> {
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().map_err(|_| tonic::Status::invalid_argument("not ASCII"))?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(())
}

impl SimSession {
    pub fn message(&self, body: pb::worker_message::Body) -> pb::WorkerMessage {
        pb::WorkerMessage { worker_id: self.worker_id.clone(), body: Some(body) }
    }
}

/// A heatmap chunk of no cells and no real data: a task for tests of the scheduling path only.
pub fn empty_chunk() -> HeatmapTask {
    HeatmapTask {
        target: AnalysisTarget::new(
            freqsweep_common::task::DatasetSource::Cifar10 { path: "/none".into() },
            freqsweep_common::task::ModelSource::TorchScript { path: "/none".into(), digest: None },
            0,
            0,
        ),
        eps: 4.0,
        cells: vec![],
        chunk: 0,
        layers: vec![],
        seed: 0,
        batch: 1,
        epoch: None,
    }
}

/// The JSON of a heatmap chunk's outcome that fits `task`: every cell once, `images` images,
/// `errors` wrong per cell, the clean error 0; `device` names who computed it.
pub fn heatmap_result_json(task: &HeatmapTask, images: usize, errors: usize, device: &str) -> String {
    let outcome = crate::kinds::heatmap::simulated(task, images, errors, device);
    serde_json::to_string(&outcome).expect("outcomes serialise")
}

/// The JSON of a DFM chunk result that fits `task`, for `images` images (all of class 0, every
/// one classified right, nothing flipped).
pub fn dfm_result_json(task: &freqsweep_common::task::DfmTask, images: usize, device: &str) -> String {
    let outcome = crate::kinds::dfm::simulated(task, images, device);
    serde_json::to_string(&outcome).expect("outcomes serialise")
}

/// The JSON of a band-sufficiency result that fits `task`, for `images` images (all of class 0,
/// every one classified right).
pub fn bands_result_json(task: &freqsweep_common::task::BandsTask, images: usize, device: &str) -> String {
    let outcome = crate::kinds::bands::simulated(task, images, device);
    serde_json::to_string(&outcome).expect("outcomes serialise")
}

/// The JSON of a result that fits `task`, whatever its kind (each room says what one looks
/// like): what the load and durability tests' simulated workers report.
pub fn simulated_result_json(task: &TaskSpec, device: &str) -> String {
    serde_json::to_string(&crate::kinds::simulated_result(task, device)).expect("outcomes serialise")
}

/// Of `uploaded` (every kind's outputs, [`upload_simulated_outputs`]), those a result of `kind`
/// names.
pub fn outputs_of(kind: TaskKind, uploaded: &[pb::ArtifactRef]) -> Vec<pb::ArtifactRef> {
    uploaded.iter().filter(|o| kind.outputs().contains(&o.name.as_str())).cloned().collect()
}

/// A one-epoch train task of the tiny CNN on Syn_1, evaluated on `B1234` (4 classes): a task for
/// tests of the scheduling and metric path (nothing trains it).
pub fn sim_train_task() -> TrainTask {
    TrainTask {
        dataset: DatasetSource::Syn(freqsweep_common::syn::SynConfig::new(
            freqsweep_common::bands::Band::new(1).expect("band 1"),
            0,
        )),
        train: TrainConfig {
            model: "tiny".into(),
            classes: 4,
            optimizer: Optimizer::adam(),
            lr: 1e-3,
            schedule: LrSchedule::Constant,
            batch_size: 32,
            epochs: 1,
            seed: 0,
            augment: Augment::default(),
            test_sets: vec!["B1234".parse().expect("a band set")],
            band_layout: Default::default(),
            clip_filtered: false,
            eval_every_steps: 0,
            eval_steps_epochs: 0,
            test_limit: 0,
            precision: Default::default(),
            memory_format: Default::default(),
            keep_epochs: Vec::new(),
        },
    }
}

/// The JSON of a finished run of `task` that fits it (`device` names who ran it).
pub fn train_result_json(task: &TrainTask, device: &str) -> String {
    serde_json::to_string(&crate::kinds::train::simulated(task, device)).expect("outcomes serialise")
}

/// An F1 point of class 0 on `B1234` after epoch 1, one that [`sim_train_task`] produces.
pub fn f1_point(value: f64) -> pb::MetricPoint {
    pb::MetricPoint { name: "f1".into(), epoch: 1.0, step: 1, test_set: "B1234".into(), class_index: 0, value }
}

/// Upload the outputs every kind's results name (a train task's `checkpoint` and `model`; a few
/// bytes each) once, so simulated results can name them ([`outputs_of`]; `token` as for
/// [`open_session`]).
pub async fn upload_simulated_outputs(
    client: &mut CoordinatorClient<Channel>,
    token: Option<&str>,
) -> Result<Vec<pb::ArtifactRef>, tonic::Status> {
    let mut refs = Vec::new();
    for name in TaskKind::ALL.iter().flat_map(|kind| kind.outputs()) {
        let data = format!("simulated {name}").into_bytes();
        let mut hasher = freqsweep_common::digest::Hasher::default();
        hasher.update(&data);
        let reference = pb::ArtifactRef { name: name.to_string(), digest: hasher.finish(), size: data.len() as u64 };
        let chunk = pb::ArtifactChunk { artifact: Some(reference.clone()), offset: 0, data };
        let mut request = tonic::Request::new(tokio_stream::iter(vec![chunk]));
        authorize(&mut request, token)?;
        client.upload_artifact(request).await?;
        refs.push(reference);
    }
    Ok(refs)
}
