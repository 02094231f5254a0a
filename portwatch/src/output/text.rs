//! Text a person reads (tables, comments, journal lines) may carry bytes a process chose: its
//! name, its command line, its executable path. Control characters and escape sequences are shown
//! escaped, never passed to the terminal, so they cannot forge a row or clear a screen.
use std::borrow::Cow;

/// `s` with every control character (C0, DEL, C1) escaped as `\n`, `\t`, `\x1b`, `\u{9b}`.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
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
            c if c.is_control() => out.push_str(&c.escape_unicode().to_string()),
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
    }
}
