//! Aligned text tables for a person. Every cell passes through `printable` (a process chose much
//! of what they show); the last column may be cut to the terminal's width, marked with `…`.
use std::io::IsTerminal as _;

use crate::output::text::printable;

/// How wide a table may be: `$COLUMNS` when set (as `ps` and `ls` honour it), else the
/// terminal's width when stdout is one, else unlimited (a pipe gets whole lines).
pub fn output_width() -> Option<usize> {
    if let Some(c) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|c| *c > 0)
    {
        return Some(c);
    }
    if std::io::stdout().is_terminal() {
        return crossterm::terminal::size()
            .ok()
            .map(|(w, _)| usize::from(w));
    }
    None
}

/// `s` in at most `width` characters, `…` marking a cut.
pub fn cut(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(width - 1).collect();
    out.push('…');
    out
}

/// `s` cut or padded with spaces to exactly `width` characters.
pub fn pad(s: &str, width: usize) -> String {
    let s = cut(s, width);
    let n = s.chars().count();
    format!("{s}{}", " ".repeat(width.saturating_sub(n)))
}

/// `127.0.0.1:80`, `[::1]:80`: an address and port as a person writes them.
pub fn address_port(address: &str, port: impl std::fmt::Display) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

/// An `address:port` in at most `width` characters: the address is cut, the port kept.
pub fn cut_address(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    match s.rfind(':') {
        Some(i) if s[i..].chars().count() < width => {
            let port = &s[i..];
            let room = width - port.chars().count();
            format!("{}{port}", cut(&s[..i], room))
        }
        _ => cut(s, width),
    }
}

pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// A row of cells, each escaped.
    pub fn push<S: AsRef<str>>(&mut self, cells: &[S]) {
        self.rows.push(
            cells
                .iter()
                .map(|c| printable(c.as_ref()).into_owned())
                .collect(),
        );
    }

    /// The table; with `width`, the last column is cut so each line fits (but keeps at least 12
    /// characters: a line may then wrap, rather than show nothing of the command).
    pub fn render(&self, width: Option<usize>) -> String {
        let n = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n.saturating_sub(1)) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let lead: usize = widths[..n.saturating_sub(1)].iter().map(|w| w + 2).sum();
        let last = width.map(|w| w.saturating_sub(lead).max(12));
        let mut out = String::new();
        for r in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate() {
                if i + 1 == n {
                    line.push_str(&match last {
                        Some(w) => cut(c, w),
                        None => c.clone(),
                    });
                } else {
                    line.push_str(c);
                    let pad = widths[i] - c.chars().count() + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_cells_are_escaped_and_the_last_is_cut() {
        let mut t = Table::new(&["PID", "COMMAND"]);
        t.push(&["1", "/sbin/init splash"]);
        t.push(&["12345", "evil\n\x1b[2Jrow"]);
        let text = t.render(None);
        assert_eq!(
            text,
            "PID    COMMAND\n1      /sbin/init splash\n12345  evil\\n\\x1b[2Jrow\n"
        );
        let cut_text = t.render(Some(7 + 12));
        assert!(cut_text.contains("1      /sbin/init …\n"), "{cut_text}");
        assert!(
            cut_text.lines().all(|l| l.chars().count() <= 19),
            "{cut_text}"
        );
        assert_eq!(cut("abc", 3), "abc");
        assert_eq!(cut("abcd", 3), "ab…");
        assert_eq!(
            cut_address("[2001:db8::1234:5678]:65535", 16),
            "[2001:db8…:65535"
        );
        assert_eq!(cut_address("127.0.0.1:80", 16), "127.0.0.1:80");
    }
}
