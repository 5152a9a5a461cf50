//! The terminal view (ratatui on crossterm): the frames the scraper sends, the keys to sort,
//! pause and quit. The terminal is restored on every exit, a panic included (ratatui's
//! `try_init` installs a hook that restores it before the panic message prints).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table};
use ratatui::DefaultTerminal;
use tokio::sync::watch;

use super::view::{self, Frame, SortKey};

/// How often keys are checked between frames (the longest a key press waits).
const KEY_POLL: Duration = Duration::from_millis(100);

/// What the view starts with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// The initial sort.
    pub(crate) sort: SortKey,
    /// The refresh interval, in seconds (shown).
    pub(crate) interval: f64,
}

struct App {
    sort: SortKey,
    paused: bool,
    per_replica: bool,
    shown: Arc<Frame>,
    interval: f64,
}

/// Runs the view until the user quits (blocking: call it off the async workers).
pub(crate) fn run(mut rx: watch::Receiver<Arc<Frame>>, settings: Settings) -> io::Result<()> {
    let mut terminal = ratatui::try_init()?;
    let result = event_loop(&mut terminal, &mut rx, settings);
    ratatui::restore();
    result
}

fn event_loop(
    terminal: &mut DefaultTerminal,
    rx: &mut watch::Receiver<Arc<Frame>>,
    settings: Settings,
) -> io::Result<()> {
    let mut app = App {
        sort: settings.sort,
        paused: false,
        per_replica: false,
        shown: rx.borrow().clone(),
        interval: settings.interval,
    };
    let mut dirty = true;
    loop {
        if rx.has_changed().unwrap_or(false) {
            let frame = rx.borrow_and_update().clone();
            if !app.paused {
                app.shown = frame;
                dirty = true;
            }
        }
        if dirty {
            terminal.draw(|f| draw(f, &app))?;
            dirty = false;
        }
        if !event::poll(KEY_POLL)? {
            continue;
        }
        match event::read()? {
            Event::Key(k) if k.kind == KeyEventKind::Press => {
                let ctrl_c =
                    k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                match k.code {
                    _ if ctrl_c => return Ok(()),
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                    KeyCode::Char('s') => app.sort = app.sort.next(),
                    KeyCode::Char('c') => app.sort = SortKey::Calls,
                    KeyCode::Char('e') => app.sort = SortKey::Errors,
                    KeyCode::Char('p') => app.sort = SortKey::P99,
                    KeyCode::Char('n') => app.sort = SortKey::Name,
                    KeyCode::Char('r') => app.per_replica = !app.per_replica,
                    KeyCode::Char(' ') => {
                        app.paused = !app.paused;
                        if !app.paused {
                            app.shown = rx.borrow_and_update().clone();
                        }
                    }
                    _ => continue,
                }
                dirty = true;
            }
            Event::Resize(..) => dirty = true,
            _ => {}
        }
    }
}

fn table_widget<'a>(t: &'a view::Table, title: String) -> Table<'a> {
    let widths: Vec<Constraint> = (0..t.header.len())
        .map(|i| {
            let w = t
                .rows
                .iter()
                .filter_map(|r| r.cells.get(i))
                .map(|c| c.chars().count())
                .chain([t.header[i].chars().count()])
                .max()
                .unwrap_or(1);
            Constraint::Length(u16::try_from(w).unwrap_or(u16::MAX))
        })
        .collect();
    let header = Row::new(t.header.iter().map(|h| Cell::from(*h)))
        .style(Style::default().add_modifier(Modifier::BOLD | Modifier::REVERSED));
    let rows = t.rows.iter().map(|r| {
        let style = if r.down {
            Style::default().fg(Color::Red)
        } else if r.total {
            Style::default().add_modifier(Modifier::BOLD)
        } else {
            Style::default()
        };
        Row::new(r.cells.iter().map(|c| Cell::from(c.as_str()))).style(style)
    });
    Table::new(rows, widths)
        .header(header)
        .column_spacing(2)
        .block(Block::bordered().title(title))
}

fn draw(f: &mut ratatui::Frame<'_>, app: &App) {
    let frame = &app.shown;
    let reps = view::replicas(frame, app.sort);
    let methods = view::methods(frame, app.sort, app.per_replica);
    let ups = view::upstreams(frame);
    let rep_height = u16::try_from(reps.rows.len() + 3).unwrap_or(u16::MAX);
    let up_height = ups
        .as_ref()
        .map(|u| u16::try_from(u.rows.len() + 3).unwrap_or(u16::MAX))
        .unwrap_or(0);
    let areas = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(rep_height),
        Constraint::Min(3),
        Constraint::Length(up_height),
        Constraint::Length(1),
    ])
    .split(f.area());
    let status = if frame.round == 0 {
        "waiting for the first scrape".to_string()
    } else if !frame.total.rates {
        "rates after the next scrape".to_string()
    } else {
        format!("rates over {:.1} s", app.interval)
    };
    let title = format!(
        "spillway top  {} replica(s)  {status}  sort: {}{}",
        frame.replicas.len(),
        app.sort.title(),
        if app.paused { "  PAUSED" } else { "" }
    );
    f.render_widget(
        Paragraph::new(Line::from(title)).style(Style::default().add_modifier(Modifier::BOLD)),
        areas[0],
    );
    f.render_widget(table_widget(&reps, " replicas ".into()), areas[1]);
    let mtitle = if frame.total.per_rpc || frame.round == 0 {
        " methods ".to_string()
    } else {
        " HTTP routes (no per-RPC metrics on these replicas) ".to_string()
    };
    f.render_widget(table_widget(&methods, mtitle), areas[2]);
    if let Some(u) = &ups {
        f.render_widget(table_widget(u, " upstreams ".into()), areas[3]);
    }
    f.render_widget(
        Paragraph::new(
            "q/Esc quit  s cycle sort  c calls  e errors  p p99  n name  r per replica  space pause",
        ),
        areas[4],
    );
}
