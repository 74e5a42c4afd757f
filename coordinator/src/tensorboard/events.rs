//! TensorBoard's event file format, written over prost: a file is a sequence of records, each
//! `length (u64 LE) · masked CRC-32C of the length (u32 LE) · data · masked CRC-32C of the data`,
//! and each record's data is one protobuf `tensorflow.Event`. The messages below carry only the
//! fields freqsweep writes, with the field numbers of `tensorflow/core/util/event.proto` and
//! `tensorflow/core/framework/summary.proto` (a reader ignores nothing it needs).

use prost::Message;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// `tensorflow.Event`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(oneof = "What", tags = "3, 5, 7")]
    pub what: Option<What>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum What {
    /// The first event of every file: `brain.Event:2`.
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
    /// `START` at step s tells readers that events at steps ≥ s before it are orphaned (a
    /// restarted run) and to drop them.
    #[prost(message, tag = "7")]
    SessionLog(SessionLog),
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<Value>,
}

/// `tensorflow.Summary.Value`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Value {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(oneof = "Kind", tags = "2, 4")]
    pub kind: Option<Kind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Kind {
    #[prost(float, tag = "2")]
    SimpleValue(f32),
    #[prost(message, tag = "4")]
    Image(Image),
}

/// `tensorflow.Summary.Image`: an encoded PNG.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Image {
    #[prost(int32, tag = "1")]
    pub height: i32,
    #[prost(int32, tag = "2")]
    pub width: i32,
    /// 3 = RGB.
    #[prost(int32, tag = "3")]
    pub colorspace: i32,
    #[prost(bytes = "vec", tag = "4")]
    pub encoded_image_string: Vec<u8>,
}

/// `tensorflow.SessionLog`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionLog {
    /// 1 = START.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

pub const SESSION_START: i32 = 1;

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as TFRecord uses.
pub fn crc32c(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 == 1 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

/// The masked CRC of TFRecord: rotated right by 15 and offset, so that a CRC of data holding
/// CRCs stays well distributed.
pub fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    (crc.rotate_right(15)).wrapping_add(0xA282_EAD8)
}

/// One record framing `data`.
pub fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// Split a file's bytes back into events (for tests and `freqsweep` itself): a truncated last
/// record (a writer killed mid-record) ends the list; a corrupt one is an error.
pub fn read_records(bytes: &[u8]) -> Result<Vec<Event>, String> {
    let mut events = Vec::new();
    let mut at = 0usize;
    while bytes.len() - at >= 12 {
        let len_bytes: [u8; 8] = bytes[at..at + 8].try_into().expect("8 bytes");
        let len_crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().expect("4 bytes"));
        if masked_crc(&len_bytes) != len_crc {
            return Err(format!("record at byte {at}: the length's CRC does not match"));
        }
        let len = u64::from_le_bytes(len_bytes) as usize;
        let Some(end) = (at + 12).checked_add(len).and_then(|e| e.checked_add(4)).filter(|&e| e <= bytes.len()) else {
            break;
        };
        let data = &bytes[at + 12..at + 12 + len];
        let crc = u32::from_le_bytes(bytes[end - 4..end].try_into().expect("4 bytes"));
        if masked_crc(data) != crc {
            return Err(format!("record at byte {at}: the data's CRC does not match"));
        }
        events.push(Event::decode(data).map_err(|e| format!("record at byte {at}: {e}"))?);
        at = end;
    }
    Ok(events)
}

/// An event file being appended to: `<dir>/events.out.tfevents.<unix seconds>.<host>.<pid>.<n>`,
/// a new one per writer (TensorBoard reads every file of a run directory in name order).
pub struct EventFile {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventFile {
    /// A new file in `dir`; `<n>` counts up past names taken (a second writer in the same
    /// second and process, e.g. a run reopened).
    pub fn create(dir: &Path, host: &str) -> std::io::Result<EventFile> {
        std::fs::create_dir_all(dir)?;
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut serial = 0u32;
        let (path, file) = loop {
            let name = format!("events.out.tfevents.{secs}.{host}.{}.{serial}", std::process::id());
            let path = dir.join(name);
            match std::fs::OpenOptions::new().create_new(true).append(true).open(&path) {
                Ok(file) => break (path, file),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && serial < 1000 => serial += 1,
                Err(e) => return Err(e),
            }
        };
        let mut writer = EventFile { path, out: BufWriter::new(file) };
        writer.write(&Event { wall_time: now(), step: 0, what: Some(What::FileVersion("brain.Event:2".into())) })?;
        Ok(writer)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&mut self, event: &Event) -> std::io::Result<()> {
        self.out.write_all(&record(&event.encode_to_vec()))
    }

    pub fn scalar(&mut self, tag: &str, step: u64, value: f64) -> std::io::Result<()> {
        self.summary(step, Value { tag: tag.into(), kind: Some(Kind::SimpleValue(value as f32)) })
    }

    pub fn image(&mut self, tag: &str, step: u64, width: u32, height: u32, png: Vec<u8>) -> std::io::Result<()> {
        let image = Image { height: height as i32, width: width as i32, colorspace: 3, encoded_image_string: png };
        self.summary(step, Value { tag: tag.into(), kind: Some(Kind::Image(image)) })
    }

    /// Events at steps ≥ `step` written before this are orphaned: readers drop them.
    pub fn restart_at(&mut self, step: u64) -> std::io::Result<()> {
        let log = SessionLog { status: SESSION_START };
        self.write(&Event { wall_time: now(), step: step as i64, what: Some(What::SessionLog(log)) })
    }

    /// Written through to the disk.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_data()
    }

    fn summary(&mut self, step: u64, value: Value) -> std::io::Result<()> {
        let event =
            Event { wall_time: now(), step: step as i64, what: Some(What::Summary(Summary { value: vec![value] })) };
        self.write(&event)
    }
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check value of CRC-32C (RFC 3720 appendix B.4 and every CRC catalogue).
    #[test]
    fn crc32c_matches_the_published_check_values() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
        assert_eq!(crc32c(b""), 0);
    }

    /// Records read back as written; the CRCs catch a flipped byte.
    #[test]
    fn records_round_trip_and_a_flipped_byte_is_caught() {
        let event = Event { wall_time: 1.5, step: 7, what: Some(What::FileVersion("brain.Event:2".into())) };
        let mut bytes = record(&event.encode_to_vec());
        let scalar = Event {
            wall_time: 2.0,
            step: 9,
            what: Some(What::Summary(Summary {
                value: vec![Value { tag: "train/loss".into(), kind: Some(Kind::SimpleValue(0.25)) }],
            })),
        };
        bytes.extend(record(&scalar.encode_to_vec()));
        assert_eq!(read_records(&bytes).unwrap(), vec![event.clone(), scalar]);
        // A writer killed mid-record leaves a truncated tail: the complete records still read.
        assert_eq!(read_records(&bytes[..bytes.len() - 3]).unwrap(), vec![event]);
        let mut corrupt = bytes.clone();
        corrupt[14] ^= 1;
        assert!(read_records(&corrupt).unwrap_err().contains("CRC"));
    }

    /// Field numbers from event.proto: file_version = 3, summary = 5, session_log = 7.
    #[test]
    fn the_wire_bytes_use_tensorflows_field_numbers() {
        let start = Event { wall_time: 0.0, step: 3, what: Some(What::SessionLog(SessionLog { status: 1 })) };
        // step (field 2, varint) = 3; session_log (field 7, length-delimited) {status (1) = 1}
        assert_eq!(start.encode_to_vec(), vec![0x10, 3, 0x3A, 2, 0x08, 1]);
        let version = Event { wall_time: 0.0, step: 0, what: Some(What::FileVersion("v".into())) };
        assert_eq!(version.encode_to_vec(), vec![0x1A, 1, b'v']);
    }
}
