//! The operator's read-only commands (`who`, `tail`, `top`): their flags and config turned into
//! the views' options, and the answer printed.
use std::{
    io::{IsTerminal as _, Write as _},
    path::PathBuf,
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    history::who,
    judgement::policy::{DEFAULT_PATH, Policy},
    ops::{
        cli::{ColourArg, TailArgs, TailFormat, TopArgs, TransportArg, WhoArgs, WhoFormat},
        config::Config,
    },
    views::{
        ports::{self, PortSpec},
        table,
        tail::{self, Colour, EventFilter, Input, TailOptions},
        top,
    },
};

/// `PORTS` with `--transport` on top: `80 --transport udp` is `80/udp`.
fn port_spec(text: &str, transport: Option<TransportArg>) -> anyhow::Result<PortSpec> {
    let mut spec = PortSpec::parse(text, std::path::Path::new(ports::SERVICES))?;
    if let Some(t) = transport {
        let want = match t {
            TransportArg::Tcp => crate::facts::Transport::Tcp,
            TransportArg::Udp => crate::facts::Transport::Udp,
        };
        spec.ranges
            .retain(|r| r.transport.is_none_or(|have| have == want));
        if spec.ranges.is_empty() {
            anyhow::bail!("`{text}` names no {} port", want.as_str());
        }
        for r in &mut spec.ranges {
            r.transport = Some(want);
        }
    }
    Ok(spec)
}

pub fn who(args: WhoArgs) -> anyhow::Result<()> {
    let spec = port_spec(&args.ports, args.transport)?;
    let now = chrono::Utc::now();
    let ns = crate::clock::unix_ns;
    let window = match (&args.at, &args.since) {
        (Some(at), _) => {
            let t = ns(who::parse_time(at, now)?);
            Some((t, t))
        }
        (None, Some(since)) => Some((ns(who::parse_time(since, now)?), ns(now))),
        (None, None) => None,
    };
    let state_dir = match args.state_dir {
        Some(d) => d,
        None => Config::load(args.config.as_deref())?.store.state_dir,
    };
    let q = who::Query {
        ports: spec.clone(),
        window,
        include_now: args.at.is_none(),
        filter: args.process.filter(),
        listening: args.listening,
        limit: args.limit as usize,
    };
    let answer = who::holdings(&q, &state_dir)?;
    let format = if args.json {
        WhoFormat::Json
    } else {
        args.output
    };
    let mut out = std::io::stdout().lock();
    let written = match format {
        WhoFormat::Json => {
            let terminal = std::io::stdout().is_terminal();
            answer.rows.iter().try_for_each(|r| {
                let line = serde_json::to_string(r).map_err(std::io::Error::other)?;
                if terminal {
                    writeln!(out, "{}", crate::output::text::json_for_terminal(&line))
                } else {
                    writeln!(out, "{line}")
                }
            })
        }
        _ => {
            let layout = match format {
                WhoFormat::Wide => who::Layout::Wide,
                _ => who::Layout::Table {
                    width: table::output_width(),
                },
            };
            let mut text = format!("{}\n", who::describe(&spec));
            if answer.rows.is_empty() {
                text.push_str(&format!(
                    "nobody holds {} now{}, and the history knows no holder\n",
                    spec.text,
                    if q.filter.is_empty() && !q.listening {
                        ""
                    } else {
                        " (among those the filters allow)"
                    }
                ));
            } else {
                text.push_str(&who::render(&answer.rows, layout, now));
            }
            out.write_all(text.as_bytes())
        }
    };
    // A reader that went away (`| head`) is not an error.
    if let Err(e) = written.and_then(|_| out.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Err(e).context("writing to stdout");
    }
    for w in answer.warnings {
        eprintln!("portwatch: {w}");
    }
    Ok(())
}

/// The daemon's log file, from the config, or why there is none.
fn daemon_log(config: Option<&std::path::Path>) -> anyhow::Result<Result<PathBuf, String>> {
    let c = Config::load(config)?;
    Ok(c.log.file.ok_or_else(|| {
        format!(
            "the daemon's config ({}) sets no `[log] file`: name a file, or set one",
            config.map_or_else(
                || crate::ops::config::DEFAULT_PATH.to_string(),
                |p| p.display().to_string()
            )
        )
    }))
}

pub fn tail(args: TailArgs) -> anyhow::Result<()> {
    let input = match &args.file {
        Some(p) if p.as_os_str() == "-" => Input::Stdin,
        Some(p) => Input::File(p.clone()),
        None => Input::File(daemon_log(args.config.as_deref())?.map_err(anyhow::Error::msg)?),
    };
    let ports = args
        .port
        .as_deref()
        .map(|p| port_spec(p, None))
        .transpose()?;
    let colour = match args.color {
        ColourArg::Always => Colour::On,
        ColourArg::Never => Colour::Off,
        ColourArg::Auto => {
            if std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
                Colour::On
            } else {
                Colour::Off
            }
        }
    };
    let opts = TailOptions {
        input,
        filter: EventFilter {
            events: args.event,
            outcomes: args.outcome,
            ports,
            process: args.process.filter(),
            judge: Default::default(),
        },
        format: match args.output {
            TailFormat::Table => tail::Format::Table,
            TailFormat::Json => tail::Format::Json,
        },
        colour,
        width: table::output_width(),
        terminal: std::io::stdout().is_terminal(),
        lines: args.lines as usize,
        follow: !args.no_follow,
    };
    let counts = tail::run(&opts, std::io::stdout().lock())?;
    if counts.not_json > 0 || counts.oversized > 0 {
        eprintln!(
            "portwatch: skipped {} line(s) that are not portwatch events (tail reads the `portwatch` format, not `ecs`) and {} longer than 1 MiB",
            counts.not_json, counts.oversized
        );
    }
    Ok(())
}

pub fn top(args: TopArgs) -> anyhow::Result<()> {
    if !std::io::stdout().is_terminal() {
        anyhow::bail!(
            "`portwatch top` draws on a terminal; for a stream to a pipe or a file use `portwatch tail`"
        );
    }
    let log = match args.log {
        Some(p) => Ok(p),
        None => daemon_log(args.config.as_deref())?,
    };
    let policy_path = match args.policy {
        Some(p) => Some(p),
        None => {
            let c = Config::load(args.config.as_deref())?;
            c.policy.file.or_else(|| {
                let d = std::path::Path::new(DEFAULT_PATH);
                d.exists().then(|| d.to_path_buf())
            })
        }
    };
    let policy = policy_path.as_deref().map(Policy::load).transpose()?;
    top::run(top::TopOptions {
        log,
        policy,
        refresh: Duration::from_secs(args.interval),
    })
    .context("drawing on the terminal")
}
