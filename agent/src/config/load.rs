//! Finding and parsing journey files. A path may be a file or a directory
//! (every `*.yaml`/`*.yml` in it, recursively, in name order). A file holds
//! one journey or a list of them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::JourneyConfig;

/// A config error at a place in a file. `path` is the key path inside the
/// journey (`steps[2].http.url`), empty when the error is about the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: Arc<str>,
    pub line: u64,
    pub column: u64,
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A file's text and where it came from.
#[derive(Clone, Debug)]
pub struct SourceFile {
    pub path: PathBuf,
    pub display: Arc<str>,
    pub text: String,
}

impl SourceFile {
    /// Directory against which `${file:...}` and `ca_file` paths resolve.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }
}

/// A parsed file: its journeys in order.
#[derive(Debug)]
pub struct LoadedFile {
    pub source: SourceFile,
    pub journeys: Vec<JourneyConfig>,
}

/// Reads every journey file under `paths`. Returns what parsed and every
/// error found; one broken file does not hide errors in the others.
pub fn load_paths(paths: &[PathBuf]) -> (Vec<LoadedFile>, Vec<ConfigError>) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        match collect(path, &mut files) {
            Ok(()) => {}
            Err(e) => errors.push(file_error(path, format!("cannot read: {e}"))),
        }
    }
    if files.is_empty() && errors.is_empty() {
        let shown = paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        errors.push(ConfigError {
            file: shown.into(),
            line: 0,
            column: 0,
            path: String::new(),
            message: "no journey files (*.yaml, *.yml) found".into(),
        });
    }
    let mut loaded = Vec::new();
    for path in files {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                errors.push(file_error(&path, format!("cannot read: {e}")));
                continue;
            }
        };
        let source = SourceFile {
            display: path.display().to_string().into(),
            path,
            text,
        };
        match parse_file(&source) {
            Ok(journeys) => loaded.push(LoadedFile { source, journeys }),
            Err(e) => errors.push(e),
        }
    }
    (loaded, errors)
}

fn file_error(path: &Path, message: String) -> ConfigError {
    ConfigError {
        file: path.display().to_string().into(),
        line: 0,
        column: 0,
        path: String::new(),
        message,
    }
}

fn collect(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if meta.is_file() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for entry in entries {
        let name = entry.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // Kubernetes ConfigMap volumes hold `..data` symlinks and dot-dirs;
        // the real files appear under their plain names too.
        if name.starts_with('.') {
            continue;
        }
        if entry.is_dir() {
            collect(&entry, out)?;
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            out.push(entry);
        }
    }
    Ok(())
}

/// Parses one file: a mapping is one journey, a sequence is a list.
pub fn parse_file(source: &SourceFile) -> Result<Vec<JourneyConfig>, ConfigError> {
    // Journeys are small; the budget bounds what a hostile file can cost.
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! { max_depth: 64, max_nodes: 200_000 },
    };
    let result = if is_sequence(&source.text) {
        serde_saphyr::from_str_with_options::<Vec<JourneyConfig>>(&source.text, options)
    } else {
        serde_saphyr::from_str_with_options::<JourneyConfig>(&source.text, options).map(|j| vec![j])
    };
    result.map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        ConfigError {
            file: source.display.clone(),
            line,
            column,
            path: String::new(),
            message: first_line(&e.without_snippet().to_string()),
        }
    })
}

/// Whether the first meaningful line of a YAML document starts a sequence.
fn is_sequence(text: &str) -> bool {
    text.lines()
        .map(str::trim_start)
        .find(|l| !l.is_empty() && !l.starts_with('#') && *l != "---")
        .is_some_and(|l| l == "-" || l.starts_with("- ") || l.starts_with('['))
}

/// The parser's message without its own location prefix or snippet.
fn first_line(msg: &str) -> String {
    let line = msg.lines().next().unwrap_or(msg).trim();
    // serde-saphyr appends " at line L column C"; we print the location ourselves.
    match line.rfind(" at line ") {
        Some(i) => line[..i].to_string(),
        None => line.to_string(),
    }
}
