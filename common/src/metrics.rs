//! Classification metrics, exactly as SCIENCE.md §8 defines them: a confusion matrix `M[true][pred]`,
//! per-class precision / recall / F1 derived from it (F1 = 0 when precision + recall = 0; a class
//! with no predictions has precision 0, one with no examples has recall 0), macro-F1 (mean over
//! classes), accuracy, and cosine similarity with a guard for zero vectors.

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConfusionMatrix {
    classes: usize,
    /// Row-major `counts[true * classes + pred]`.
    counts: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricsError {
    #[error("label {label} is outside 0..{classes}")]
    LabelOutOfRange { label: i64, classes: usize },
    #[error("{predictions} predictions but {labels} labels")]
    LengthMismatch { predictions: usize, labels: usize },
    #[error("confusion matrices of {0} and {1} classes cannot be merged")]
    ClassMismatch(usize, usize),
}

/// Precision, recall and F1 of one class.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClassScores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Number of examples of this class (row sum).
    pub support: u64,
}

impl ConfusionMatrix {
    pub fn new(classes: usize) -> Self {
        ConfusionMatrix { classes, counts: vec![0; classes * classes] }
    }

    /// Build from parallel slices of true labels and predicted classes.
    pub fn from_predictions(classes: usize, labels: &[i64], predictions: &[i64]) -> Result<Self, MetricsError> {
        if labels.len() != predictions.len() {
            return Err(MetricsError::LengthMismatch { predictions: predictions.len(), labels: labels.len() });
        }
        let mut m = Self::new(classes);
        for (&t, &p) in labels.iter().zip(predictions) {
            m.add(t, p)?;
        }
        Ok(m)
    }

    /// Build from rows `[truth][predicted]` of a square matrix (`None` if it is not square).
    pub fn from_rows(rows: &[Vec<u64>]) -> Option<Self> {
        let classes = rows.len();
        if rows.iter().any(|r| r.len() != classes) {
            return None;
        }
        Some(ConfusionMatrix { classes, counts: rows.concat() })
    }

    pub fn add(&mut self, truth: i64, predicted: i64) -> Result<(), MetricsError> {
        let check = |label: i64| {
            usize::try_from(label)
                .ok()
                .filter(|&l| l < self.classes)
                .ok_or(MetricsError::LabelOutOfRange { label, classes: self.classes })
        };
        let (t, p) = (check(truth)?, check(predicted)?);
        self.counts[t * self.classes + p] += 1;
        Ok(())
    }

    pub fn merge(&mut self, other: &ConfusionMatrix) -> Result<(), MetricsError> {
        if other.classes != self.classes {
            return Err(MetricsError::ClassMismatch(self.classes, other.classes));
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        Ok(())
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    pub fn get(&self, truth: usize, predicted: usize) -> u64 {
        self.counts[truth * self.classes + predicted]
    }

    /// Rows of counts, `rows()[true][pred]`.
    pub fn rows(&self) -> Vec<Vec<u64>> {
        self.counts.chunks(self.classes.max(1)).map(<[u64]>::to_vec).collect()
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn accuracy(&self) -> f64 {
        let correct: u64 = (0..self.classes).map(|c| self.get(c, c)).sum();
        ratio(correct, self.total())
    }

    pub fn class_scores(&self, class: usize) -> ClassScores {
        let tp = self.get(class, class);
        let predicted: u64 = (0..self.classes).map(|t| self.get(t, class)).sum();
        let support: u64 = (0..self.classes).map(|p| self.get(class, p)).sum();
        let precision = ratio(tp, predicted);
        let recall = ratio(tp, support);
        let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
        ClassScores { precision, recall, f1, support }
    }

    pub fn per_class(&self) -> Vec<ClassScores> {
        (0..self.classes).map(|c| self.class_scores(c)).collect()
    }

    pub fn macro_f1(&self) -> f64 {
        if self.classes == 0 {
            return 0.0;
        }
        self.per_class().iter().map(|s| s.f1).sum::<f64>() / self.classes as f64
    }
}

fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

/// Cosine similarity in `f64`; 1 when both vectors are zero, 0 when exactly one is.
pub fn cosine_similarity(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "cosine_similarity: lengths differ");
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    match (na == 0.0, nb == 0.0) {
        (true, true) => 1.0,
        (true, false) | (false, true) => 0.0,
        _ => (dot / (na.sqrt() * nb.sqrt())).clamp(-1.0, 1.0),
    }
}

/// Cosine distance `1 − cos(a, b)` (the intermediate-layer heatmap value, SCIENCE.md §3).
pub fn cosine_distance(a: &[f32], b: &[f32]) -> f64 {
    1.0 - cosine_similarity(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_three_class_case() {
        // truth:      0 0 0 1 1 2 2 2 2
        // predicted:  0 0 1 1 2 2 2 2 0
        let m =
            ConfusionMatrix::from_predictions(3, &[0, 0, 0, 1, 1, 2, 2, 2, 2], &[0, 0, 1, 1, 2, 2, 2, 2, 0]).unwrap();
        assert_eq!(m.rows(), vec![vec![2, 1, 0], vec![0, 1, 1], vec![1, 0, 3]]);
        assert!((m.accuracy() - 6.0 / 9.0).abs() < 1e-12);
        let s = m.per_class();
        // class 0: tp 2, predicted 3, support 3 → p = r = 2/3, f1 = 2/3
        assert!((s[0].precision - 2.0 / 3.0).abs() < 1e-12 && (s[0].recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((s[0].f1 - 2.0 / 3.0).abs() < 1e-12);
        // class 1: tp 1, predicted 2, support 2 → 0.5, 0.5, 0.5
        assert!((s[1].f1 - 0.5).abs() < 1e-12);
        // class 2: tp 3, predicted 4, support 4 → 0.75
        assert!((s[2].f1 - 0.75).abs() < 1e-12);
        assert_eq!(s[2].support, 4);
        assert!((m.macro_f1() - (2.0 / 3.0 + 0.5 + 0.75) / 3.0).abs() < 1e-12);
    }

    #[test]
    fn f1_is_zero_when_never_right_and_unequal_precision_recall() {
        let m = ConfusionMatrix::from_predictions(2, &[0, 0, 1, 1], &[1, 1, 1, 1]).unwrap();
        let s = m.per_class();
        assert_eq!((s[0].precision, s[0].recall, s[0].f1), (0.0, 0.0, 0.0));
        // class 1: p = 2/4, r = 1 → f1 = 2·0.5·1/1.5 = 2/3
        assert!((s[1].f1 - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn bad_labels_and_merges_are_errors() {
        assert_eq!(
            ConfusionMatrix::from_predictions(2, &[0, 2], &[0, 0]),
            Err(MetricsError::LabelOutOfRange { label: 2, classes: 2 })
        );
        assert_eq!(
            ConfusionMatrix::from_predictions(2, &[-1], &[0]),
            Err(MetricsError::LabelOutOfRange { label: -1, classes: 2 })
        );
        assert!(matches!(ConfusionMatrix::from_predictions(2, &[0], &[]), Err(MetricsError::LengthMismatch { .. })));
        let mut a = ConfusionMatrix::new(2);
        assert_eq!(a.merge(&ConfusionMatrix::new(3)), Err(MetricsError::ClassMismatch(2, 3)));
        let b = ConfusionMatrix::from_predictions(2, &[0, 1], &[0, 0]).unwrap();
        a.merge(&b).unwrap();
        a.merge(&b).unwrap();
        assert_eq!(a.rows(), vec![vec![2, 0], vec![2, 0]]);
    }

    #[test]
    fn cosine_guards_and_values() {
        assert_eq!(cosine_similarity(&[0.0, 0.0], &[0.0, 0.0]), 1.0);
        assert_eq!(cosine_similarity(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
        assert!((cosine_similarity(&[1.0, 0.0], &[0.0, 2.0])).abs() < 1e-12);
        assert!((cosine_similarity(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-12);
        assert!((cosine_distance(&[1.0, 0.0], &[-3.0, 0.0]) - 2.0).abs() < 1e-12);
        assert!(cosine_distance(&[3.0, 4.0], &[3.0, 4.0]).abs() < 1e-12);
    }
}
