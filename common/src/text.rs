//! Untrusted text (spec values, npy headers) as one-line messages quote it.

/// `text` on one line: control and other invisible characters written as escapes (`\n`,
/// `\u{1b}`, `\u{202e}`), at most `max` characters shown, a longer text cut (never inside an
/// escape) and ending with `…`.
pub fn one_line(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut shown = 0;
    for c in text.chars() {
        let invisible = c.is_control()
            || (c.is_whitespace() && c != ' ')
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}');
        let piece: String = if invisible { c.escape_default().collect() } else { c.to_string() };
        let len = piece.chars().count();
        if shown + len > max {
            out.push('…');
            break;
        }
        out.push_str(&piece);
        shown += len;
    }
    out
}

/// A number as written in ids and `results.csv` (shortest round-trip form).
/// A number as it appears in point ids, task keys and file names: as written (`0.001`, `4`), or
/// in exponent form when that is longer than 16 characters (`1e300`, not 301 digits that make
/// file names too long for the filesystem).
pub fn format_number(v: f64) -> String {
    let plain = format!("{v}");
    if plain.len() > 16 {
        format!("{v:e}")
    } else {
        plain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_escapes_invisible_characters_and_cuts_between_them() {
        assert_eq!(one_line("a\nb\u{1b}[2J", 64), "a\\nb\\u{1b}[2J");
        assert_eq!(one_line("right\u{202e}left", 64), "right\\u{202e}left");
        assert_eq!(one_line(&"x".repeat(100), 10), format!("{}…", "x".repeat(10)));
        // An escape is never cut in half: `\n` (2 characters) does not fit after 9.
        assert_eq!(one_line(&format!("{}\n", "x".repeat(9)), 10), format!("{}…", "x".repeat(9)));
        assert_eq!(one_line("", 5), "");
    }
}
