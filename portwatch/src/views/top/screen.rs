//! Draws the model: a title line, the listeners, the churning processes, each namespace's
//! ephemeral range, and the keys. Laid out for 80×24 and up; every text a process chose is
//! escaped before it reaches the terminal.
use std::time::Duration;

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Paragraph},
};

use crate::{
    output::text::printable,
    views::{
        table::{cut, cut_address, pad},
        top::model::{Model, RangeRow, SortBy, command_of, user_of},
    },
};

/// What the screen needs besides the model.
pub struct View<'a> {
    pub model: &'a Model,
    pub sort: SortBy,
    /// Text typed after `/`; rows whose texts do not contain it are hidden.
    pub filter: &'a str,
    /// Typing a filter now.
    pub editing: bool,
    /// Where events come from, or why there are none.
    pub log: Result<String, String>,
    pub policy: Option<String>,
    pub clock: String,
}

fn clean(s: &str) -> String {
    printable(s).into_owned()
}

fn shown(filter: &str, texts: &[&str]) -> bool {
    filter.is_empty()
        || texts
            .iter()
            .any(|t| t.to_lowercase().contains(&filter.to_lowercase()))
}

/// `1h02m`, `3m10s`, `42s`.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=359_999 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d", s / 86_400),
    }
}

fn bar(fill: f64, width: usize) -> String {
    let full = ((fill.clamp(0.0, 1.0)) * width as f64).round() as usize;
    format!("[{}{}]", "#".repeat(full), ".".repeat(width - full))
}

pub fn draw(f: &mut Frame<'_>, v: &View<'_>) {
    let [title, listeners, churn, ranges, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Fill(3),
        Constraint::Fill(2),
        Constraint::Fill(3),
        Constraint::Length(1),
    ])
    .areas(f.area());
    // File names only: the title fits 80 columns.
    let name = |p: &str| p.rsplit('/').next().unwrap_or(p).to_string();
    let events = match &v.log {
        Ok(path) => format!(
            "{:.1} ev/s in {}",
            v.model.events_per_second(),
            clean(&name(path))
        ),
        Err(why) => clean(why),
    };
    let policy = v.policy.as_deref().map_or("no policy".to_string(), |p| {
        format!("policy {}", clean(&name(p)))
    });
    f.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled("portwatch top ", Style::new().add_modifier(Modifier::BOLD)),
            Span::raw(format!("{} UTC  {events}  {policy}", v.clock)),
        ])),
        title,
    );
    draw_listeners(f, listeners, v);
    draw_churn(f, churn, v);
    draw_ranges(f, ranges, v);
    let help = if v.editing {
        format!("filter: {}_   (Enter keep, Esc clear)", clean(v.filter))
    } else if v.filter.is_empty() {
        format!("q quit  s sort ({})  / filter", v.sort.name())
    } else {
        format!(
            "q quit  s sort ({})  / filter [{}]  Esc clear",
            v.sort.name(),
            clean(v.filter)
        )
    };
    f.render_widget(
        Paragraph::new(help).style(Style::new().add_modifier(Modifier::REVERSED)),
        keys,
    );
}

fn block(title: String) -> Block<'static> {
    Block::new().borders(Borders::TOP).title(title)
}

fn draw_listeners(f: &mut Frame<'_>, area: Rect, v: &View<'_>) {
    let rows = v.model.listeners();
    let new = rows.iter().filter(|r| r.new).count();
    let unexpected = rows.iter().filter(|r| r.unexpected == Some(true)).count();
    let mut title = format!(" Listeners: {}", rows.len());
    if new > 0 {
        title.push_str(&format!(", {new} new"));
    }
    if v.policy.is_some() {
        title.push_str(&format!(", {unexpected} unexpected"));
    }
    title.push_str("  (! unexpected, + new in the last minute) ");
    let width = usize::from(area.width);
    let mut lines = vec![Line::styled(
        format!(
            "  {} {} {} {} {} COMMAND",
            pad("PROTO", 5),
            pad("LOCAL", 22),
            pad("NETNS", 10),
            pad("PID", 7),
            pad("USER", 8)
        ),
        Style::new().add_modifier(Modifier::BOLD),
    )];
    for r in rows {
        let (cmd, user) = (command_of(&r.facts), user_of(&r.facts));
        let local = r.facts.event.local.to_string();
        if !shown(v.filter, &[&cmd, &user, &local]) {
            continue;
        }
        let mark = match (r.unexpected, r.new) {
            (Some(true), _) => "!",
            (_, true) => "+",
            _ => " ",
        };
        let pid = match r.facts.process.pid {
            0 => "-".to_string(),
            p => p.to_string(),
        };
        let ns = if r.host {
            "host".to_string()
        } else {
            r.key.0.to_string()
        };
        let lead = format!(
            "{mark} {} {} {} {} {} ",
            pad(r.facts.event.transport.as_str(), 5),
            pad(&cut_address(&local, 22), 22),
            pad(&ns, 10),
            pad(&pid, 7),
            pad(&clean(&user), 8)
        );
        let rest = width.saturating_sub(lead.chars().count());
        let text = format!("{lead}{}", cut(&clean(&cmd), rest));
        let style = match (r.unexpected, r.new) {
            (Some(true), _) => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
            (_, true) => Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD),
            _ => Style::new(),
        };
        lines.push(Line::styled(text, style));
    }
    f.render_widget(Paragraph::new(lines).block(block(title)), area);
}

fn draw_churn(f: &mut Frame<'_>, area: Rect, v: &View<'_>) {
    let mut title = format!(
        " Churn: connect and bind calls per second, last 10 s, by {} ",
        v.sort.name()
    );
    if v.model.events_dropped > 0 {
        // More calls in the window than it holds: the oldest were not counted.
        title.push_str(&format!(
            "({} calls over the cap not counted) ",
            v.model.events_dropped
        ));
    }
    let width = usize::from(area.width);
    let mut lines = vec![Line::styled(
        format!(
            "{} {} {} {} {} COMMAND",
            pad("PID", 7),
            pad("CONN/s", 7),
            pad("BIND/s", 7),
            pad("FAIL/s", 7),
            pad("USER", 8)
        ),
        Style::new().add_modifier(Modifier::BOLD),
    )];
    if v.log.is_err() {
        lines.push(Line::raw("(no event log to read: see the title line)"));
    }
    let per_s = |n: u32| format!("{:.1}", f64::from(n) / 10.0);
    for c in v.model.churn(v.sort) {
        let pid = c.pid.to_string();
        if !shown(v.filter, &[&c.command, &c.user, &pid]) {
            continue;
        }
        let lead = format!(
            "{} {} {} {} {} ",
            pad(&pid, 7),
            pad(&per_s(c.connects), 7),
            pad(&per_s(c.binds), 7),
            pad(&per_s(c.failures), 7),
            pad(&clean(&c.user), 8)
        );
        let rest = width.saturating_sub(lead.chars().count());
        lines.push(Line::raw(format!(
            "{lead}{}",
            cut(&clean(&c.command), rest)
        )));
    }
    f.render_widget(Paragraph::new(lines).block(block(title)), area);
}

fn range_lines(r: &RangeRow, width: usize, filter: &str) -> Vec<Line<'static>> {
    let ns = if r.own {
        "host".to_string()
    } else {
        format!("netns {}", r.netns)
    };
    let fill = r.in_use as f64 / r.size.max(1) as f64;
    let head = format!("{} {}-{} ", pad(&ns, 16), r.low, r.high);
    let tail = format!(" {}/{} {:>3.0}%", r.in_use, r.size, fill * 100.0);
    let bar_width = width
        .saturating_sub(head.chars().count() + tail.chars().count() + 2)
        .clamp(4, 40);
    let style = if fill >= 0.9 {
        Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
    } else if fill >= 0.5 {
        Style::new().fg(Color::Yellow)
    } else {
        Style::new()
    };
    let full_in = match r.full_in {
        Some(d) => format!("full in {}", duration(d)),
        None => "not filling".to_string(),
    };
    let mut lines = vec![
        Line::styled(format!("{head}{}{tail}", bar(fill, bar_width)), style),
        Line::raw(format!(
            "{}new {:.1}/s  held {:+.1}/s  {full_in}  TIME_WAIT {}",
            " ".repeat(17),
            r.new_per_second,
            r.growth_per_second,
            r.time_wait
        )),
    ];
    for (n, pid, cmd) in &r.holders {
        let pid_s = pid.to_string();
        if !shown(filter, &[cmd, &pid_s]) {
            continue;
        }
        let lead = format!("{}{n:>5} ports  pid {} ", " ".repeat(17), pad(&pid_s, 7));
        let rest = width.saturating_sub(lead.chars().count());
        lines.push(Line::raw(format!("{lead}{}", cut(&clean(cmd), rest))));
    }
    if r.unowned > 0 {
        lines.push(Line::raw(format!(
            "{}{:>5} ports  no process (kernel, TIME_WAIT, or out of sight)",
            " ".repeat(17),
            r.unowned
        )));
    }
    lines
}

fn draw_ranges(f: &mut Frame<'_>, area: Rect, v: &View<'_>) {
    let rows = v.model.ranges(v.log.is_ok());
    let mut title = " Ephemeral ports per network namespace".to_string();
    let hidden = rows.iter().filter(|r| !r.own && r.in_use == 0).count();
    if hidden > 0 {
        title.push_str(&format!(" ({hidden} idle not shown)"));
    }
    if v.model.skipped_namespaces > 0 {
        title.push_str(&format!(
            " ({} more not scanned)",
            v.model.skipped_namespaces
        ));
    }
    if !v.model.failed_namespaces.is_empty() {
        title.push_str(&format!(
            " ({} unreadable)",
            v.model.failed_namespaces.len()
        ));
    }
    title.push(' ');
    let width = usize::from(area.width);
    let lines: Vec<Line<'static>> = rows
        .iter()
        .filter(|r| r.own || r.in_use > 0)
        .flat_map(|r| range_lines(r, width, v.filter))
        .collect();
    f.render_widget(Paragraph::new(lines).block(block(title)), area);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_bars() {
        assert_eq!(duration(Duration::from_secs(42)), "42s");
        assert_eq!(duration(Duration::from_secs(190)), "3m10s");
        assert_eq!(duration(Duration::from_secs(3720)), "1h02m");
        assert_eq!(duration(Duration::from_secs(400_000)), "4d");
        assert_eq!(bar(0.5, 4), "[##..]");
        assert_eq!(bar(2.0, 2), "[##]");
        assert!(shown("", &["x"]) && shown("NGI", &["nginx"]) && !shown("z", &["nginx"]));
    }
}
