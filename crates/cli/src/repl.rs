//! `kiln repl`: an interactive, stateful session in the terminal.
//!
//! One sandbox for the whole run: variables and `/work` persist between
//! cells. Ctrl-C interrupts the running cell (the session keeps its state);
//! SIGTERM or SIGHUP kill the session and leave nothing behind; `exit`,
//! `quit` or end of input close it.
//!
//! A cell is one line, or — when a line ends with `:` — a block ended by a
//! blank line, or as many lines as it takes to close open brackets.
//! With `--json`, every input line is one cell written as a JSON string
//! (a line that is not a JSON string is taken as it is), and every result
//! is printed as one JSON object per line. A line that is one of these JSON
//! objects is a file command on the session's `/work` instead of a cell,
//! answered by one JSON line (`{"ok":true,...}` or
//! `{"ok":false,"error":{"kind":...,"message":...}}`):
//!
//! - `{"write_file":{"path":"in/a.csv","data_b64":"..."}}` → `{"ok":true}`
//! - `{"read_file":{"path":"out/b.png","max_bytes":N}}` (`max_bytes`
//!   optional) → `{"ok":true,"path":..,"size":..,"data_b64":..}`
//! - `{"list_files":{"path":"out"}}` (`path` optional: `/work`) →
//!   `{"ok":true,"path":..,"entries":[{"name","kind","size"}]}`

use crate::print::Printer;
use crate::run::read_inputs;
use anyhow::Result;
use kiln_core::{
    Backend, ExecRequest, ExecutionResult, FileError, Interrupt, Outcome, Session, SessionError,
    SessionManager, SessionOptions, FILE_MAX_BYTES,
};
use kiln_native::signals::{self, Signal};
use kiln_policy::{Config, LimitRequest};
use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct ReplArgs {
    /// Read one cell per line as a JSON string; print one JSON result per line.
    /// A line `{"write_file":{"path":P,"data_b64":B}}`,
    /// `{"read_file":{"path":P,"max_bytes":N}}` or `{"list_files":{"path":P}}`
    /// is a file command on /work instead, answered by one JSON line.
    #[arg(long)]
    pub json: bool,
    /// A configured dataset (`[sandbox.datasets]`) to mount read-only at
    /// `/data/NAME` (repeatable).
    #[arg(long = "dataset", value_name = "NAME")]
    pub datasets: Vec<String>,
    /// A fresh process for the sandbox instead of a fork of the warm zygote
    /// (`sandbox.zygote` in kiln.toml sets the default).
    #[arg(long)]
    pub no_zygote: bool,
    /// Wall-clock limit of each cell in seconds (within the policy's ceiling).
    #[arg(long)]
    pub timeout: Option<f64>,
    /// Memory limit of the session in MiB (within the policy's ceiling).
    #[arg(long)]
    pub memory: Option<u64>,
    /// An environment variable for the session (repeatable): `NAME=VALUE`.
    #[arg(long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// A host file to place into /work at the start (repeatable);
    /// `PATH` keeps its file name, `PATH:NAME` renames it.
    #[arg(long = "file", value_name = "PATH[:NAME]")]
    pub files: Vec<String>,
    /// Close the session after this many seconds without a cell.
    #[arg(long)]
    pub idle_timeout: Option<u64>,
    /// The policy environment (`[environments]` in kiln.toml).
    #[arg(long, value_name = "NAME")]
    pub environment: Option<String>,
    /// Where charts and files are written.
    #[arg(long, default_value = "kiln-out")]
    pub out_dir: PathBuf,
    #[command(flatten)]
    pub backend: crate::backends::BackendArgs,
}

pub fn repl(config: &Config, args: &ReplArgs) -> Result<ExitCode> {
    let gate = match kiln_check::Gate::new(config, args.environment.as_deref()) {
        Ok(gate) => gate,
        Err(why) => return refuse(args, Outcome::Rejected, why),
    };
    let options = match options(config, args, &gate) {
        Ok(o) => o,
        Err(why) => return refuse(args, Outcome::Rejected, why),
    };
    let zygote = config.sandbox.zygote && !args.no_zygote;
    let backend = match crate::backends::open_with_fallback(config, &args.backend, zygote)? {
        Ok(b) => b,
        Err(e) => return refuse(args, Outcome::Unavailable, e.to_string()),
    };
    let sharing = Arc::new(Sharing {
        backend,
        last: Mutex::new(None),
    });
    let manager = Arc::new(SessionManager::new(
        sharing.clone(),
        config.sessions.max_sessions as usize,
    ));
    // The sandbox is forked while this process has one thread; the signal
    // watcher starts after.
    let id = match manager.create(&options) {
        Ok(id) => id,
        Err(SessionError::Options(e))
        | Err(SessionError::Backend(kiln_core::BackendError::InvalidOptions(e))) => {
            return refuse(args, Outcome::Rejected, e.to_string())
        }
        Err(e) => return refuse(args, Outcome::Unavailable, e.to_string()),
    };
    let shared = sharing
        .last
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let shared = shared.expect("the session was made through `sharing`");
    watch_signals(&manager, sharing.clone(), &id, args.json)?;
    let code = serve(&manager, &id, &shared, &gate, args);
    let _ = manager.close(&id);
    // The signal watcher keeps a reference to the manager (and so to the
    // backend) until the process exits: stop the zygote now.
    sharing.shutdown();
    code
}

fn options(
    config: &Config,
    args: &ReplArgs,
    gate: &kiln_check::Gate,
) -> Result<SessionOptions, String> {
    let request = LimitRequest {
        wall_ms: args.timeout.map(|s| (s * 1000.0).round().max(1.0) as u64),
        memory_mib: args.memory,
        ..Default::default()
    };
    let limits = config.resolve(&request).map_err(|e| e.to_string())?;
    let (idle, lifetime) = config
        .sessions
        .resolve(args.idle_timeout, None)
        .map_err(|e| e.to_string())?;
    let mut env = BTreeMap::new();
    for pair in &args.env {
        let Some((name, value)) = pair.split_once('=') else {
            return Err(format!("--env {pair:?}: expected NAME=VALUE"));
        };
        env.insert(name.to_string(), value.to_string());
    }
    let options = SessionOptions {
        limits,
        env,
        files: read_inputs(&args.files).map_err(|e| format!("{e:#}"))?,
        datasets: args.datasets.clone(),
        deny_imports: gate.deny_imports(),
        egress: gate.egress(),
        library_tree: None,
        idle_timeout: Duration::from_secs(idle),
        max_lifetime: Duration::from_secs(lifetime),
    };
    options.validate().map_err(|e| e.to_string())?;
    Ok(options)
}

/// No session: say why, as a JSON result or on stderr.
fn refuse(args: &ReplArgs, outcome: Outcome, why: String) -> Result<ExitCode> {
    if args.json {
        let result = ExecutionResult::without_sandbox(outcome, why);
        println!("{}", serde_json::to_string(&result)?);
    } else {
        eprintln!("kiln: {}: {why}", outcome.as_str());
    }
    Ok(ExitCode::from(outcome.exit_code() as u8))
}

/// Set once SIGTERM or SIGHUP arrived: the session is being killed.
static TERMINATING: AtomicBool = AtomicBool::new(false);
const TERMINATED: u8 = 143;

/// Ctrl-C interrupts the running cell; SIGTERM / SIGHUP end the session
/// (killed if it is executing) and kiln.
fn watch_signals(
    manager: &Arc<SessionManager>,
    backend: Arc<dyn Backend + Send + Sync>,
    id: &str,
    json: bool,
) -> Result<()> {
    let (manager, id) = (manager.clone(), id.to_string());
    signals::watch(move |signal| match signal {
        Signal::Interrupt => {
            if !matches!(manager.interrupt(&id), Ok(true)) && !json {
                eprint!("\n(KeyboardInterrupt: type exit or press Ctrl-D to leave)\n>>> ");
            }
        }
        Signal::Terminate => {
            TERMINATING.store(true, Ordering::SeqCst);
            manager.close_all();
            // This thread's copy of the manager is never dropped: stop the
            // zygote (and remove its cgroup) before exiting.
            backend.shutdown();
            std::process::exit(TERMINATED.into());
        }
    })?;
    Ok(())
}

fn serve(
    manager: &SessionManager,
    id: &str,
    shared: &Shared,
    gate: &kiln_check::Gate,
    args: &ReplArgs,
) -> Result<ExitCode> {
    let interactive = !args.json && std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "kiln repl: a sandboxed Python session. Ctrl-C interrupts, exit or Ctrl-D leaves."
        );
    }
    let mut printer = Printer::new(&args.out_dir);
    let mut input = std::io::stdin().lock();
    let mut editor = if interactive {
        Some(Editor::new()?)
    } else {
        None
    };
    loop {
        let cell = if args.json {
            read_json_line(&mut input)?
        } else {
            let source: &mut dyn LineSource = match editor.as_mut() {
                Some(editor) => editor,
                None => &mut Plain(&mut input),
            };
            read_cell(source)?.map(Line::Cell)
        };
        let code = match cell {
            None => return Ok(ExitCode::SUCCESS),
            Some(Line::Cell(code)) => code,
            Some(Line::File(command)) => {
                let answer = file_command(shared, command);
                let mut stdout = std::io::stdout().lock();
                writeln!(stdout, "{answer}")?;
                stdout.flush()?;
                if lock(shared).as_ref().is_none_or(|s| !s.is_alive()) {
                    return Ok(ExitCode::from(Outcome::Killed.exit_code() as u8));
                }
                continue;
            }
        };
        if matches!(code.trim(), "exit" | "exit()" | "quit" | "quit()") {
            return Ok(ExitCode::SUCCESS);
        }
        if let Some((_, expiry)) = manager.reap_expired(Instant::now()).into_iter().next() {
            eprintln!("kiln: the session was closed ({expiry:?} timeout)");
            return Ok(ExitCode::from(Outcome::Killed.exit_code() as u8));
        }
        let request = ExecRequest {
            code,
            files: Vec::new(),
        };
        let mut failed = None;
        // The import check refuses the cell before the sandbox sees it;
        // the session and its variables stay as they were.
        let outcome = match gate.code(&request.code) {
            Err(why) => Ok(ExecutionResult::without_sandbox(Outcome::Rejected, why)),
            Ok(()) => manager.execute(id, &request, &mut |event| {
                if !args.json {
                    if let Err(e) = printer.event(event) {
                        failed.get_or_insert(e);
                    }
                }
            }),
        };
        let result = match outcome {
            Ok(result) => result,
            Err(SessionError::NotFound(_)) => return Ok(ExitCode::from(TERMINATED)),
            Err(e) => return Err(e.into()),
        };
        if let Some(e) = failed {
            return Err(e);
        }
        if args.json {
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{}", serde_json::to_string(&result)?)?;
            stdout.flush()?;
        } else {
            printer.end(&result)?;
        }
        if TERMINATING.load(Ordering::SeqCst) {
            return Ok(ExitCode::from(TERMINATED));
        }
        if result.session_ended {
            if !args.json {
                eprintln!("kiln: the session has ended");
            }
            return Ok(ExitCode::from(result.outcome.exit_code() as u8));
        }
    }
}

/// What one `--json` input line asks for.
#[derive(Debug, PartialEq)]
enum Line {
    Cell(String),
    File(FileCommand),
}

/// A file command of `--json` mode (see the module documentation).
#[derive(Debug, PartialEq, serde::Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum FileCommand {
    WriteFile {
        path: String,
        data_b64: String,
    },
    ReadFile {
        path: String,
        #[serde(default)]
        max_bytes: Option<u64>,
    },
    ListFiles {
        #[serde(default)]
        path: String,
    },
}

/// One line = one cell, as a JSON string (or taken literally), or a file
/// command.
fn read_json_line(input: &mut impl BufRead) -> Result<Option<Line>> {
    loop {
        let mut line = String::new();
        if input.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            continue;
        }
        if let Ok(command) = serde_json::from_str::<FileCommand>(line) {
            return Ok(Some(Line::File(command)));
        }
        return Ok(Some(Line::Cell(
            serde_json::from_str::<String>(line).unwrap_or_else(|_| line.to_string()),
        )));
    }
}

/// Runs a file command on the session; the JSON answer line.
fn file_command(shared: &Shared, command: FileCommand) -> serde_json::Value {
    use base64::Engine;
    use serde_json::json;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut guard = lock(shared);
    let Some(session) = guard.as_mut() else {
        return json!({"ok": false, "error": {"kind": "session_ended", "message": "the session has ended"}});
    };
    let answer = match command {
        FileCommand::WriteFile { path, data_b64 } => match b64.decode(&data_b64) {
            Ok(data) => session.write_file(&path, &data).map(|()| json!({"ok": true})),
            Err(e) => Err(FileError::Io(format!("data_b64 is not valid base64: {e}"))),
        },
        FileCommand::ReadFile { path, max_bytes } => session
            .read_file(&path, max_bytes.unwrap_or(FILE_MAX_BYTES))
            .map(|data| {
                json!({"ok": true, "path": path, "size": data.len(), "data_b64": b64.encode(&data)})
            }),
        FileCommand::ListFiles { path } => session
            .list_files(&path)
            .map(|entries| json!({"ok": true, "path": path, "entries": entries})),
    };
    answer.unwrap_or_else(
        |e| json!({"ok": false, "error": {"kind": e.kind(), "message": e.to_string()}}),
    )
}

/// The repl's one session, reachable for file commands while the manager
/// holds it (the manager has no file operations of its own).
type Shared = Arc<Mutex<Option<Box<dyn Session>>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A backend that hands the manager a [`SharedSession`] and keeps the
/// shared handle of the last session it made.
struct Sharing {
    backend: Arc<dyn Backend + Send + Sync>,
    last: Mutex<Option<Shared>>,
}

impl Backend for Sharing {
    fn name(&self) -> &'static str {
        self.backend.name()
    }

    fn shutdown(&self) {
        self.backend.shutdown();
    }

    fn create_session(
        &self,
        options: &SessionOptions,
    ) -> Result<Box<dyn Session>, kiln_core::BackendError> {
        let session = self.backend.create_session(options)?;
        let id = session.id().to_string();
        let interrupter = session.interrupter();
        let shared: Shared = Arc::new(Mutex::new(Some(session)));
        *lock(&self.last) = Some(shared.clone());
        Ok(Box::new(SharedSession {
            id,
            interrupter,
            shared,
        }))
    }
}

/// The manager's side of a shared session: each call locks it (executions
/// and file commands come from the one repl thread, one at a time).
struct SharedSession {
    id: String,
    interrupter: Arc<dyn Interrupt>,
    shared: Shared,
}

impl Session for SharedSession {
    fn id(&self) -> &str {
        &self.id
    }

    fn execute(
        &mut self,
        request: &ExecRequest,
        on_event: &mut dyn FnMut(&kiln_core::Event),
    ) -> ExecutionResult {
        match lock(&self.shared).as_mut() {
            Some(session) => session.execute(request, on_event),
            None => ExecutionResult::without_sandbox(
                Outcome::Killed,
                "the session has ended".to_string(),
            ),
        }
    }

    fn interrupter(&self) -> Arc<dyn Interrupt> {
        self.interrupter.clone()
    }

    fn is_alive(&self) -> bool {
        lock(&self.shared).as_ref().is_some_and(|s| s.is_alive())
    }

    fn close(self: Box<Self>) {
        // A file command in progress is cut short rather than waited for.
        let taken = match self.shared.try_lock() {
            Ok(mut idle) => idle.take(),
            Err(TryLockError::Poisoned(p)) => p.into_inner().take(),
            Err(TryLockError::WouldBlock) => {
                self.interrupter.kill();
                lock(&self.shared).take()
            }
        };
        if let Some(session) = taken {
            session.close();
        }
    }
}

/// Where cells come from: a terminal line editor with history, or plain
/// lines from a pipe.
trait LineSource {
    /// The next line (prompting on a terminal), `None` at the end.
    fn line(&mut self, prompt: &str) -> Result<Option<String>>;
}

/// Lines from a pipe or file, no prompt.
struct Plain<R>(R);

impl<R: BufRead> LineSource for Plain<R> {
    fn line(&mut self, _prompt: &str) -> Result<Option<String>> {
        let mut line = String::new();
        Ok((self.0.read_line(&mut line)? > 0).then_some(line))
    }
}

/// A terminal: line editing and a history kept across runs.
struct Editor {
    editor: rustyline::DefaultEditor,
    history: Option<std::path::PathBuf>,
}

impl Editor {
    fn new() -> Result<Self> {
        let mut editor = rustyline::DefaultEditor::new()?;
        let history =
            std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".kiln_history"));
        if let Some(path) = &history {
            let _ = editor.load_history(path);
        }
        Ok(Self { editor, history })
    }
}

impl LineSource for Editor {
    fn line(&mut self, prompt: &str) -> Result<Option<String>> {
        use rustyline::error::ReadlineError;
        match self.editor.readline(prompt) {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = self.editor.add_history_entry(line.as_str());
                }
                Ok(Some(line))
            }
            // Ctrl-C at the prompt drops the line being typed.
            Err(ReadlineError::Interrupted) => Ok(Some(String::new())),
            Err(ReadlineError::Eof) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

impl Drop for Editor {
    fn drop(&mut self) {
        if let Some(path) = &self.history {
            let _ = self.editor.save_history(path);
        }
    }
}

/// A line; a block after a line ending in `:` (up to a blank line); or as
/// many lines as it takes to close the brackets opened.
fn read_cell(input: &mut dyn LineSource) -> Result<Option<String>> {
    let mut lines: Vec<String> = Vec::new();
    let mut block = false;
    loop {
        let prompt = if lines.is_empty() { ">>> " } else { "... " };
        let Some(line) = input.line(prompt)? else {
            return Ok((!lines.is_empty()).then(|| lines.join("\n")));
        };
        let line = line.trim_end_matches(['\n', '\r']).to_string();
        if line.trim().is_empty() {
            if lines.is_empty() {
                continue;
            }
            if block {
                break;
            }
        }
        block |= line.trim_end().ends_with(':');
        lines.push(line);
        let text = lines.join("\n");
        if !block && bracket_depth(&text) <= 0 && !text.ends_with('\\') {
            break;
        }
    }
    Ok(Some(lines.join("\n")))
}

/// Open brackets minus closed ones, outside string literals and comments
/// (a rough count: enough to know whether a cell continues).
fn bracket_depth(text: &str) -> i32 {
    let mut depth = 0;
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(_), '\\') => {
                chars.next();
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '#') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            (None, '(' | '[' | '{') => depth += 1,
            (None, ')' | ']' | '}') => depth -= 1,
            _ => {}
        }
    }
    depth
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cells(input: &str) -> Vec<String> {
        let mut r = input.as_bytes();
        let mut source = Plain(&mut r);
        std::iter::from_fn(|| read_cell(&mut source).unwrap()).collect()
    }

    #[test]
    fn lines_blocks_and_brackets() {
        assert_eq!(cells("x = 1\nprint(x)\n"), ["x = 1", "print(x)"]);
        assert_eq!(
            cells("for i in range(2):\n    print(i)\n\nx\n"),
            ["for i in range(2):\n    print(i)", "x"]
        );
        assert_eq!(
            cells("d = {\n 'a': '(',\n}\n# c (\nx = [1,\n2]\n"),
            ["d = {\n 'a': '(',\n}", "# c (", "x = [1,\n2]"]
        );
        assert_eq!(cells("\n\ndef f():\n  return 1"), ["def f():\n  return 1"]);
    }

    #[test]
    fn json_cells() {
        let mut r: &[u8] = b"\"a = 1\\nprint(a)\"\nprint(2)\n\n";
        let cell = |s: &str| Some(Line::Cell(s.to_string()));
        assert_eq!(read_json_line(&mut r).unwrap(), cell("a = 1\nprint(a)"));
        assert_eq!(read_json_line(&mut r).unwrap(), cell("print(2)"));
        assert_eq!(read_json_line(&mut r).unwrap(), None);
    }

    #[test]
    fn json_file_commands() {
        let mut r: &[u8] = br#"{"write_file":{"path":"a","data_b64":"YQ=="}}
{"read_file":{"path":"a"}}
{"list_files":{}}
{"read_file":{"path":"a","max_bytes":3,"follow":true}}
{"x": 1}
"#;
        let file = |c| Some(Line::File(c));
        assert_eq!(
            read_json_line(&mut r).unwrap(),
            file(FileCommand::WriteFile {
                path: "a".into(),
                data_b64: "YQ==".into()
            })
        );
        assert_eq!(
            read_json_line(&mut r).unwrap(),
            file(FileCommand::ReadFile {
                path: "a".into(),
                max_bytes: None
            })
        );
        assert_eq!(
            read_json_line(&mut r).unwrap(),
            file(FileCommand::ListFiles { path: "".into() })
        );
        // Not a file command: taken as code, as before.
        assert!(matches!(
            read_json_line(&mut r).unwrap(),
            Some(Line::Cell(_))
        ));
        assert_eq!(
            read_json_line(&mut r).unwrap(),
            Some(Line::Cell(r#"{"x": 1}"#.into()))
        );
    }
}
