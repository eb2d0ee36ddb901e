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

/// YAML nodes one file may hold: a small journey is about ten, so about
/// 100,000 journeys. The budget bounds what a hostile file can cost.
pub const MAX_NODES: usize = 1_000_000;

/// Parses one file: a mapping is one journey, a sequence is a list.
pub fn parse_file(source: &SourceFile) -> Result<Vec<JourneyConfig>, ConfigError> {
    parse_with_budget(source, MAX_NODES)
}

fn parse_with_budget(
    source: &SourceFile,
    max_nodes: usize,
) -> Result<Vec<JourneyConfig>, ConfigError> {
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! { max_depth: 64, max_nodes: max_nodes },
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
            message: budget_words(first_line(&e.without_snippet().to_string()), max_nodes),
        }
    })
}

/// The parser reports a breached budget in its `Debug` form
/// (`budget breached: Nodes { nodes: 200001 }`); say what it means.
fn budget_words(message: String, max_nodes: usize) -> String {
    if !message.starts_with("budget breached") {
        return message;
    }
    if message.contains("Nodes") {
        format!(
            "file too large: more than {max_nodes} YAML nodes (about {} small journeys); split it into several files",
            max_nodes / 10
        )
    } else if message.contains("Depth") {
        "file too deeply nested: more than 64 levels".to_string()
    } else {
        format!("file refused by the YAML parser's limits ({message})")
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn journeys(n: usize) -> SourceFile {
        let mut text = String::new();
        for i in 0..n {
            text.push_str(&format!(
                "- name: j{i}\n  schedule: {{ every: 10s }}\n  steps:\n    - name: get\n      http: {{ url: \"http://127.0.0.1:1/\" }}\n"
            ));
        }
        SourceFile {
            path: PathBuf::from("many.yaml"),
            display: "many.yaml".into(),
            text,
        }
    }

    #[test]
    fn a_file_over_the_node_budget_is_refused_in_words() {
        let source = journeys(50);
        assert_eq!(
            parse_with_budget(&source, 10_000).map(|j| j.len()).ok(),
            Some(50)
        );
        let e = parse_with_budget(&source, 100).unwrap_err();
        assert_eq!(
            e.message,
            "file too large: more than 100 YAML nodes (about 10 small journeys); split it into several files"
        );
        assert!(e.line > 0, "the error points into the file");
    }

    #[test]
    fn ten_thousand_journeys_fit_in_one_file() {
        assert_eq!(
            parse_file(&journeys(10_000)).map(|j| j.len()).ok(),
            Some(10_000)
        );
    }
}
