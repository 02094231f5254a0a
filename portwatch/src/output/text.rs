//! Text a person reads (tables, comments, journal lines) may carry bytes a process chose: its
//! name, its command line, its executable path. Control characters and escape sequences are shown
//! escaped, never passed to the terminal, so they cannot forge a row or clear a screen.
use std::borrow::Cow;

/// Characters that move or hide text without being control characters: bidirectional overrides
/// and isolates, zero-width characters, line and paragraph separators, the byte-order mark.
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
        | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

fn shown_escaped(c: char) -> bool {
    c.is_control() || invisible(c)
}

/// `s` with every control character (C0, DEL, C1) escaped as `\n`, `\t`, `\x1b`, `\u{9b}`, and
/// every character that reorders or hides text (bidi overrides, zero-width) as `\u{202e}`.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(shown_escaped) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x80 && c.is_control() => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if shown_escaped(c) => out.push_str(&c.escape_unicode().to_string()),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_not_interpreted() {
        assert_eq!(printable("nginx -g daemon"), "nginx -g daemon");
        assert_eq!(
            printable("a\nb\x1b[2Jc\u{9b}d\x7f"),
            "a\\nb\\x1b[2Jc\\u{9b}d\\x7f"
        );
        assert!(!printable("\r\t\x00").chars().any(char::is_control));
        assert_eq!(printable("evil\u{202e}gnp.exe"), "evil\\u{202e}gnp.exe");
        assert_eq!(printable("a\u{200b}b\u{2028}"), "a\\u{200b}b\\u{2028}");
    }
}
