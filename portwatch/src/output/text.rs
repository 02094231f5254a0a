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

/// A JSON text for a terminal: JSON escapes only C0 controls, so DEL, C1 controls (`\u{9b}`
/// starts an escape sequence on some terminals) and the characters `printable` escapes are
/// written as `\uXXXX` — the same JSON value, and nothing a terminal acts on. (They can only
/// occur inside strings: anywhere else the text would not be JSON.)
pub fn json_for_terminal(json: &str) -> Cow<'_, str> {
    let risky = |c: char| c == '\u{7f}' || ('\u{80}'..='\u{9f}').contains(&c) || invisible(c);
    if !json.chars().any(risky) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if risky(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
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

    #[test]
    fn json_for_a_terminal_is_the_same_value_without_what_a_terminal_acts_on() {
        let v = serde_json::json!({"argv": "a\u{9b}2J\u{7f}\u{202e}b\n"});
        let text = serde_json::to_string(&v).unwrap();
        let shown = json_for_terminal(&text);
        assert!(
            !shown.chars().any(|c| c.is_control() || invisible(c)),
            "{shown}"
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&shown).unwrap(),
            v
        );
        assert!(matches!(json_for_terminal("{\"a\":1}"), Cow::Borrowed(_)));
    }
}
