//! The raw structure of a spec as TOML gives it: every leaf keeps its span.

use super::*;

// Raw structure. Every leaf keeps its span; values are checked by hand (not by serde) so every
// message names its key.

pub(super) type Scalar = Option<Spanned<Value>>;
pub(super) type List = Option<Spanned<Values>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSpec {
    pub(super) name: Scalar,
    #[serde(default)]
    pub(super) dataset: Vec<Spanned<RawDataset>>,
    pub(super) model: RawModels,
    pub(super) train: Option<Spanned<RawTrain>>,
    #[serde(default)]
    pub(super) eval: RawEval,
    pub(super) heatmap: Option<Spanned<RawHeatmap>>,
    pub(super) dfm: Option<Spanned<RawDfm>>,
    pub(super) bands: Option<Spanned<RawBands>>,
    #[serde(default)]
    pub(super) include: Vec<Spanned<RawPoint>>,
    #[serde(default)]
    pub(super) exclude: Vec<Spanned<RawPoint>>,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHeatmap {
    pub(super) eps: Spanned<Values>,
    pub(super) at_epochs: List,
    pub(super) cells: Scalar,
    pub(super) layers: List,
    pub(super) images: Scalar,
    pub(super) batch: Scalar,
    pub(super) chunk_cells: Scalar,
    pub(super) chunks_per_map: Scalar,
    pub(super) seed: Scalar,
    pub(super) precision: Scalar,
    pub(super) memory_format: Scalar,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBands {
    pub(super) tolerance: Scalar,
    pub(super) images: Scalar,
    pub(super) radii: List,
    pub(super) fractions: List,
    pub(super) sufficiency: Scalar,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDfm {
    pub(super) patch: Scalar,
    pub(super) top: List,
    pub(super) images: Scalar,
    pub(super) batch: Scalar,
    pub(super) chunk_cells: Scalar,
    pub(super) chunks_per_map: Scalar,
    pub(super) classes: List,
    pub(super) shortcut_degree: Scalar,
    pub(super) precision: Scalar,
    pub(super) memory_format: Scalar,
}

/// One value or a list of them. List elements keep their own spans (`None` for a lone value,
/// which takes the key's), so an error inside a multi-line list points at the element's line.
pub(super) struct Values(pub(super) Vec<(Option<Range<usize>>, Value)>);

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
