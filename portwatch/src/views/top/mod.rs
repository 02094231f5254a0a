//! `portwatch top`: a full-screen view refreshed each second — listeners (new ones highlighted,
//! unexpected ones marked when a policy is loaded), the processes with the most connect and bind
//! calls, and each network namespace's ephemeral range filling up. Listeners and ranges come
//! from the kernel's socket tables (no daemon needed); churn from the daemon's event log.
pub mod model;
pub mod scan;
pub mod screen;

use std::{
    io,
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant},
};

use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

use crate::{judgement::policy::Policy, views::follow::Follower};

use self::{
    model::{Model, SortBy},
    screen::View,
};

pub struct TopOptions {
    /// The event log, or why there is none to read.
    pub log: Result<PathBuf, String>,
    pub policy: Option<Policy>,
    pub refresh: Duration,
}

/// A typed filter is at most this long.
const MAX_FILTER: usize = 64;

struct Keys {
    sort: SortBy,
    filter: String,
    editing: bool,
}

enum Step {
    Quit,
    Redraw,
    Nothing,
}

impl Keys {
    fn press(&mut self, code: KeyCode, mods: KeyModifiers) -> Step {
        if mods.contains(KeyModifiers::CONTROL) && code == KeyCode::Char('c') {
            return Step::Quit;
        }
        if self.editing {
            match code {
                KeyCode::Enter => self.editing = false,
                KeyCode::Esc => {
                    self.editing = false;
                    self.filter.clear();
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) if !c.is_control() && self.filter.chars().count() < MAX_FILTER => {
                    self.filter.push(c)
                }
                _ => return Step::Nothing,
            }
            return Step::Redraw;
        }
        match code {
            KeyCode::Char('q') => Step::Quit,
            KeyCode::Char('s') => {
                self.sort = self.sort.next();
                Step::Redraw
            }
            KeyCode::Char('/') => {
                self.editing = true;
                Step::Redraw
            }
            KeyCode::Esc => {
                self.filter.clear();
                Step::Redraw
            }
            _ => Step::Nothing,
        }
    }
}

/// Scans every `refresh` on a thread of its own, so keys are answered while a scan runs.
fn scanner(refresh: Duration) -> mpsc::Receiver<scan::Round> {
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::spawn(move || {
        for n in 0.. {
            let started = Instant::now();
            if tx.send(scan::round(Path::new("/proc"), n)).is_err() {
                return;
            }
            std::thread::sleep(refresh.saturating_sub(started.elapsed()));
        }
    });
    rx
}

type Screen = ratatui::Terminal<ratatui::backend::CrosstermBackend<io::Stdout>>;

/// The terminal in raw mode on the alternate screen, given back as it was when dropped: on `q`,
/// on an error, and while a panic unwinds.
struct Raw;

impl Raw {
    fn enter() -> io::Result<(Raw, Screen)> {
        // A panic's message must reach the normal screen: the terminal is given back first.
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            Raw::restore();
            previous(info);
        }));
        crossterm::terminal::enable_raw_mode()?;
        let raw = Raw;
        crossterm::execute!(io::stdout(), crossterm::terminal::EnterAlternateScreen)?;
        let screen = ratatui::Terminal::new(ratatui::backend::CrosstermBackend::new(io::stdout()))?;
        Ok((raw, screen))
    }
}

impl Raw {
    fn restore() {
        let _ = crossterm::execute!(
            io::stdout(),
            crossterm::terminal::LeaveAlternateScreen,
            crossterm::cursor::Show
        );
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        Raw::restore();
    }
}

/// Runs until `q`. The terminal is restored on the way out, also on an error.
pub fn run(opts: TopOptions) -> io::Result<()> {
    let (_raw, mut screen) = Raw::enter()?;
    run_on(&mut screen, opts)
}

fn run_on(terminal: &mut Screen, opts: TopOptions) -> io::Result<()> {
    let rounds = scanner(opts.refresh);
    let mut model = Model::default();
    let mut keys = Keys {
        sort: SortBy::default(),
        filter: String::new(),
        editing: false,
    };
    let mut follower: Option<Follower> = None;
    let mut log_state: Result<String, String> = opts.log.clone().map(|p| p.display().to_string());
    let policy_name = opts.policy.as_ref().map(|p| p.path.display().to_string());
    let mut last_draw: Option<Instant> = None;
    let mut dirty = true;
    loop {
        let now = Instant::now();
        // The log: opened when it exists, followed across rotations.
        if let Ok(path) = &opts.log {
            if follower.is_none() {
                match Follower::open(path, 0) {
                    Ok(f) => {
                        follower = Some(f);
                        log_state = Ok(path.display().to_string());
                    }
                    Err(e) => log_state = Err(format!("no events: {e}")),
                }
            }
            if let Some(f) = follower.as_mut() {
                match f.poll() {
                    Ok(lines) => {
                        for l in lines {
                            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&l) {
                                model.event(&v, now);
                            }
                        }
                    }
                    Err(e) => {
                        log_state = Err(format!("reading {}: {e}", path.display()));
                        follower = None;
                    }
                }
            }
        }
        loop {
            match rounds.try_recv() {
                Ok(round) => {
                    model.scan(round, opts.policy.as_ref(), now);
                    dirty = true;
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    return Err(io::Error::other(
                        "the socket scanner stopped; the screen would go stale",
                    ));
                }
            }
        }
        model.expire(now);
        if dirty || last_draw.is_none_or(|t| now.duration_since(t) >= opts.refresh) {
            let clock = chrono::Utc::now().format("%H:%M:%S").to_string();
            let view = View {
                model: &model,
                sort: keys.sort,
                filter: &keys.filter,
                editing: keys.editing,
                log: log_state.clone(),
                policy: policy_name.clone(),
                clock,
            };
            terminal.draw(|f| screen::draw(f, &view))?;
            last_draw = Some(now);
            dirty = false;
        }
        if event::poll(Duration::from_millis(200))? {
            match event::read()? {
                Event::Key(k) if k.kind == KeyEventKind::Press => {
                    match keys.press(k.code, k.modifiers) {
                        Step::Quit => return Ok(()),
                        Step::Redraw => dirty = true,
                        Step::Nothing => {}
                    }
                }
                Event::Resize(..) => dirty = true,
                _ => {}
            }
        }
    }
}
