//! Errors with lines: the parsing context and its one-line `SpecError`s.

use super::*;

// Errors with lines.

pub(crate) struct Ctx<'a> {
    pub(super) file: &'a str,
    pub(super) text: &'a str,
    pub(super) inputs: &'a Inputs<'a>,
}

impl Ctx<'_> {
    pub(crate) fn line(&self, offset: usize) -> usize {
        self.text.as_bytes()[..offset.min(self.text.len())].iter().filter(|&&b| b == b'\n').count() + 1
    }

    /// The key assigned on 1-based `line` (`key = …`), if any.
    pub(crate) fn key_on_line(&self, line: usize) -> Option<&str> {
        let text = self.text.lines().nth(line.checked_sub(1)?)?;
        let (key, _) = text.split_once('=')?;
        let key = key.trim();
        let bare = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.';
        (!key.is_empty() && key.chars().all(bare)).then_some(key)
    }

    pub(crate) fn err(&self, span: &Range<usize>, message: impl Into<String>) -> SpecError {
        SpecError { file: self.file.to_string(), line: self.line(span.start), message: message.into() }
    }

    /// An error about the whole spec rather than one key.
    pub(crate) fn err_top(&self, message: impl Into<String>) -> SpecError {
        SpecError { file: self.file.to_string(), line: 1, message: message.into() }
    }

    /// Check a scalar with `check`, placing its error on the value's line.
    pub(crate) fn scalar<T>(
        &self,
        raw: &Scalar,
        default: T,
        check: impl Fn(&Value) -> Result<T, String>,
    ) -> Result<T, SpecError> {
        match raw {
            None => Ok(default),
            Some(v) => check(v.get_ref()).map_err(|m| self.err(&v.span(), m)),
        }
    }

    /// Check every element of a one-or-many key; errors point at the element.
    pub(crate) fn list<T>(
        &self,
        key: &str,
        raw: &Spanned<Values>,
        check: impl Fn(&Value) -> Result<T, String>,
    ) -> Result<Vec<(Range<usize>, T)>, SpecError> {
        let items = &raw.get_ref().0;
        if items.is_empty() {
            return Err(self.err(&raw.span(), format!("{key} is an empty list")));
        }
        items
            .iter()
            .map(|(span, v)| {
                let span = span.clone().unwrap_or_else(|| raw.span());
                check(v).map(|t| (span.clone(), t)).map_err(|m| self.err(&span, m))
            })
            .collect()
    }

    /// A grid axis from a one-or-many key (or `default` when absent); repeated values are errors.
    pub(crate) fn axis<T>(
        &self,
        key: &str,
        raw: Option<&Spanned<Values>>,
        default: T,
        check: impl Fn(&Value) -> Result<T, String>,
        label: impl Fn(&T) -> String,
    ) -> Result<Axis<T>, SpecError> {
        let Some(raw) = raw else {
            return Ok(Axis { labels: vec![label(&default)], values: vec![default] });
        };
        let mut axis = Axis { labels: Vec::new(), values: Vec::new() };
        // A set beside the list: a million-value list is checked in linear time.
        let mut seen = HashSet::new();
        for (span, value) in self.list(key, raw, check)? {
            let l = label(&value);
            if !seen.insert(l.clone()) {
                return Err(self.err(&span, format!("{key} lists {l} twice")));
            }
            axis.labels.push(l);
            axis.values.push(value);
        }
        Ok(axis)
    }
}
