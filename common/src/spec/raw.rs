//! The raw structure of a spec as TOML gives it: every leaf keeps its span.

use super::*;

// Raw structure. Every leaf keeps its span; values are checked by hand (not by serde) so every
// message names its key.

pub(crate) type Scalar = Option<Spanned<Value>>;
pub(crate) type List = Option<Spanned<Values>>;

/// A whole spec. Its fixed sections are fields here; the analysis sections (`[heatmap]`, …) are
/// each kind's, gathered in `task::RawAnalyses`, so a new kind's section is not added here.
pub(super) struct RawSpec {
    pub(super) name: Scalar,
    pub(super) dataset: Vec<Spanned<RawDataset>>,
    pub(super) model: RawModels,
    pub(super) train: Option<Spanned<RawTrain>>,
    pub(super) eval: RawEval,
    pub(super) analyses: RawAnalyses,
    pub(super) include: Vec<Spanned<RawPoint>>,
    pub(super) exclude: Vec<Spanned<RawPoint>>,
}

/// The spec's fixed top-level keys (the analysis sections follow them in error messages).
const FIXED_KEYS: [&str; 7] = ["name", "dataset", "model", "train", "eval", "include", "exclude"];

/// Every top-level key, for "unknown field …, expected one of …" (serde wants a `'static` list).
fn top_level_keys() -> &'static [&'static str] {
    static KEYS: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| FIXED_KEYS.iter().chain(RawAnalyses::KEYS).copied().collect())
}

// By hand rather than derived: `deny_unknown_fields` cannot be combined with a flattened
// `RawAnalyses`, and an unknown key must still be refused with the line it is on.
/// A top-level key no section has: its value is never read.
struct Unknown<'k>(&'k str);

impl<'de> serde::de::DeserializeSeed<'de> for Unknown<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, _: D) -> Result<(), D::Error> {
        Err(serde::de::Error::unknown_field(self.0, top_level_keys()))
    }
}

impl<'de> Deserialize<'de> for RawSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a spec")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RawSpec, A::Error> {
                use serde::de::Error;
                let mut model = None;
                let mut spec = RawSpec {
                    name: None,
                    dataset: Vec::new(),
                    model: RawModels::Many(Vec::new()),
                    train: None,
                    eval: RawEval::default(),
                    analyses: RawAnalyses::default(),
                    include: Vec::new(),
                    exclude: Vec::new(),
                };
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "name" => spec.name = map.next_value()?,
                        "dataset" => spec.dataset = map.next_value()?,
                        "model" => model = Some(map.next_value()?),
                        "train" => spec.train = map.next_value()?,
                        "eval" => spec.eval = map.next_value()?,
                        "include" => spec.include = map.next_value()?,
                        "exclude" => spec.exclude = map.next_value()?,
                        other => {
                            if !spec.analyses.read(other, &mut map)? {
                                // Refused while reading its value, so toml places the error on
                                // the key's line.
                                map.next_value_seed(Unknown(other))?;
                            }
                        }
                    }
                }
                spec.model = model.ok_or_else(|| A::Error::missing_field("model"))?;
                Ok(spec)
            }
        }
        d.deserialize_map(V)
    }
}

pub(super) type RawPoint = BTreeMap<String, Spanned<Value>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDataset {
    pub(super) kind: Spanned<Value>,
    pub(super) name: Scalar,
    pub(super) band: List,
    pub(super) train: Scalar,
    pub(super) test: Scalar,
    pub(super) seed: List,
    pub(super) special_energy: Scalar,
    pub(super) size: Scalar,
    pub(super) path: Scalar,
    pub(super) train_images: Scalar,
    pub(super) train_labels: Scalar,
    pub(super) test_images: Scalar,
    pub(super) test_labels: Scalar,
    pub(super) channels: Scalar,
}

/// One `[model]` table (models the sweep trains) or `[[model]]` tables (trained or given).
pub(super) enum RawModels {
    One(Box<Spanned<RawModel>>),
    Many(Vec<Spanned<RawModel>>),
}

impl<'de> Deserialize<'de> for RawModels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawModels;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a [model] table or [[model]] tables")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<RawModels, A::Error> {
                Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq)).map(RawModels::Many)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawModels, A::Error> {
                let model = RawModel::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                // The table's own span is not known here; its keys carry theirs.
                Ok(RawModels::One(Box::new(Spanned::new(0..0, model))))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModel {
    /// `builtin` (trained by the sweep, the default) or `torchscript` (given, analysed only).
    pub(super) kind: Scalar,
    pub(super) arch: List,
    pub(super) classes: Scalar,
    /// Given models: one path or a list …
    pub(super) path: List,
    /// … and/or a pattern over a directory (`models/*.pt`).
    pub(super) glob: Scalar,
    /// The given model's label in point ids (several files: `<name>_<file stem>`).
    pub(super) name: Scalar,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrain {
    pub(super) optimizer: List,
    pub(super) lr: List,
    pub(super) batch_size: List,
    pub(super) epochs: List,
    pub(super) seed: List,
    pub(super) schedule: List,
    pub(super) momentum: List,
    pub(super) nesterov: List,
    pub(super) weight_decay: List,
    pub(super) beta1: List,
    pub(super) beta2: List,
    pub(super) adam_eps: Scalar,
    pub(super) step_every: Scalar,
    pub(super) gamma: Scalar,
    pub(super) min_lr: Scalar,
    pub(super) augment_flip: Scalar,
    pub(super) augment_crop: Scalar,
    pub(super) precision: Scalar,
    pub(super) memory_format: Scalar,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEval {
    pub(super) test_sets: List,
    pub(super) every_steps: Scalar,
    pub(super) steps_epochs: Scalar,
    pub(super) test_limit: Scalar,
    pub(super) clip: Scalar,
}

/// One value or a list of them. List elements keep their own spans (`None` for a lone value,
/// which takes the key's), so an error inside a multi-line list points at the element's line.
pub(crate) struct Values(pub(crate) Vec<(Option<Range<usize>>, Value)>);

impl<'de> Deserialize<'de> for Values {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Values;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value or a list of values")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Values, E> {
                Ok(Values(vec![(None, Value::Boolean(v))]))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Values, E> {
                Ok(Values(vec![(None, Value::Integer(v))]))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Values, E> {
                let v = i64::try_from(v).map_err(|_| E::custom(format!("{v} is too large")))?;
                Ok(Values(vec![(None, Value::Integer(v))]))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Values, E> {
                Ok(Values(vec![(None, Value::Float(v))]))
            }
            fn visit_str<E>(self, v: &str) -> Result<Values, E> {
                Ok(Values(vec![(None, Value::String(v.to_string()))]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Values, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element::<Spanned<Value>>()? {
                    out.push((Some(v.span()), v.into_inner()));
                }
                Ok(Values(out))
            }
        }
        d.deserialize_any(V)
    }
}
