//! String templates (`${var}`, `${env:NAME}`, `${file:PATH}`), run-time
//! variables, and the redactor that keeps secret values out of everything
//! the agent emits.
//!
//! Templates are parsed from already-deserialized string values, never from
//! raw YAML text, so a secret can never inject YAML structure. Secret
//! references and journey `vars` are resolved once at build time; only
//! variables extracted by earlier steps remain for run time. Every resolved
//! secret value is registered with the journey's [`Redactor`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

/// One piece of a parsed template.
#[derive(Clone, Debug, PartialEq)]
enum Segment {
    Lit(String),
    /// A variable set by an earlier step's `extract` at run time.
    Var(String),
}

/// A string with run-time variable references. Static parts (literals,
/// secrets, journey vars) are already folded in.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    segments: Vec<Segment>,
}

/// Variables carried between the steps of one run.
pub type Vars = BTreeMap<String, String>;

impl Template {
    pub fn literal(s: impl Into<String>) -> Self {
        Template {
            segments: vec![Segment::Lit(s.into())],
        }
    }

    /// The text when the template has no run-time variables.
    pub fn as_static(&self) -> Option<&str> {
        match self.segments.as_slice() {
            [] => Some(""),
            [Segment::Lit(s)] => Some(s),
            _ => None,
        }
    }

    pub fn runtime_vars(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Var(v) => Some(v.as_str()),
            Segment::Lit(_) => None,
        })
    }

    /// Renders with run-time variables; a missing one is named in the error.
    pub fn render(&self, vars: &Vars) -> Result<String, String> {
        let mut out = String::new();
        for seg in &self.segments {
            match seg {
                Segment::Lit(s) => out.push_str(s),
                Segment::Var(name) => match vars.get(name) {
                    Some(v) => out.push_str(v),
                    None => {
                        return Err(format!(
                            "variable `{name}` has no value (the step that extracts it did not succeed)"
                        ));
                    }
                },
            }
        }
        Ok(out)
    }

    /// Renders with every run-time variable replaced by `placeholder`, for
    /// build-time validation of values such as URLs.
    pub fn render_with_placeholder(&self, placeholder: &str) -> String {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Lit(s) => s.as_str(),
                Segment::Var(_) => placeholder,
            })
            .collect()
    }
}

/// What a template may reference while it is being resolved at build time.
pub struct Scope<'a> {
    /// Journey `vars`, already resolved.
    pub statics: &'a BTreeMap<String, String>,
    /// Variables extracted by earlier steps.
    pub extracted: &'a BTreeSet<String>,
    /// Vars whose own definition failed: uses of them are not reported again.
    pub poisoned: &'a BTreeSet<String>,
    /// Directory that relative `${file:...}` paths are resolved against.
    pub base_dir: &'a Path,
    /// Looks up an environment variable (a function so tests need no real env).
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

/// Why a template did not resolve.
#[derive(Debug, PartialEq)]
pub enum ResolveError {
    /// A message for the user; never contains a secret's value.
    Invalid(String),
    /// It uses a var whose definition already failed (and was reported).
    Poisoned,
}

impl From<String> for ResolveError {
    fn from(s: String) -> Self {
        ResolveError::Invalid(s)
    }
}

/// Parses and resolves a template. Secret values found are added to `secrets`.
/// Errors never contain a secret's value, only its reference.
pub fn resolve(
    text: &str,
    scope: &Scope<'_>,
    secrets: &mut BTreeSet<String>,
) -> Result<Template, ResolveError> {
    let mut segments: Vec<Segment> = Vec::new();
    let mut lit = String::new();
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        lit.push_str(&rest[..pos]);
        rest = &rest[pos..];
        if let Some(after) = rest.strip_prefix("$${") {
            lit.push_str("${");
            rest = after;
            continue;
        }
        let Some(after) = rest.strip_prefix("${") else {
            lit.push('$');
            rest = &rest[1..];
            continue;
        };
        let Some(end) = after.find('}') else {
            return Err(ResolveError::Invalid(format!(
                "unterminated reference `{}` (write `$${{` for a literal `${{`)",
                truncate(rest, 40)
            )));
        };
        let reference = &after[..end];
        rest = &after[end + 1..];
        if let Some(spec) = reference.strip_prefix("env:") {
            // `${env:NAME:-default}` falls back when NAME is unset or empty.
            let (name, default) = match spec.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (spec, None),
            };
            let value = match ((scope.env)(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => v,
                (None, Some(d)) => d.to_string(),
                (None, None) => {
                    return Err(ResolveError::Invalid(format!(
                        "environment variable `{name}` is not set"
                    )));
                }
            };
            register_secret(secrets, &value);
            lit.push_str(&value);
        } else if let Some(path) = reference.strip_prefix("file:") {
            let full = scope.base_dir.join(path);
            let value = std::fs::read_to_string(&full)
                .map_err(|e| format!("cannot read secret file `{}`: {e}", full.display()))?;
            // Files mounted from Kubernetes secrets often end in a newline
            // that is not part of the secret.
            let value = value.trim_end_matches(['\n', '\r']).to_string();
            register_secret(secrets, &value);
            lit.push_str(&value);
        } else if let Some((kind, _)) = reference.split_once(':') {
            return Err(ResolveError::Invalid(format!(
                "unknown reference kind `{kind}:` in `${{{reference}}}` (use `env:` or `file:`)"
            )));
        } else if !is_var_name(reference) {
            return Err(ResolveError::Invalid(format!(
                "invalid variable name `{reference}` (letters, digits, `_` and `-`, not starting with a digit)"
            )));
        } else if let Some(value) = scope.statics.get(reference) {
            lit.push_str(value);
        } else if scope.extracted.contains(reference) {
            if !lit.is_empty() {
                segments.push(Segment::Lit(std::mem::take(&mut lit)));
            }
            segments.push(Segment::Var(reference.to_string()));
        } else if scope.poisoned.contains(reference) {
            return Err(ResolveError::Poisoned);
        } else {
            return Err(ResolveError::Invalid(format!(
                "undefined variable `{reference}` (not in `vars` and not extracted by an earlier step)"
            )));
        }
    }
    lit.push_str(rest);
    if !lit.is_empty() || segments.is_empty() {
        segments.push(Segment::Lit(lit));
    }
    Ok(Template { segments })
}

fn register_secret(secrets: &mut BTreeSet<String>, value: &str) {
    if !value.is_empty() {
        secrets.insert(value.to_string());
    }
}

pub fn is_var_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Replaces every secret value with `***`. Shared by all runs of a journey;
/// applied to every string that leaves the runner.
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    /// Longest first, so a secret that contains another is replaced whole.
    secrets: Arc<[String]>,
}

pub const REDACTED: &str = "***";

impl Redactor {
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        let mut v: Vec<String> = secrets.into_iter().filter(|s| !s.is_empty()).collect();
        v.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        v.dedup();
        Redactor { secrets: v.into() }
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    pub fn redact(&self, s: &str) -> String {
        let mut out = s.to_string();
        for secret in self.secrets.iter() {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), REDACTED);
            }
        }
        out
    }

    pub fn redact_in_place(&self, s: &mut String) {
        if self.secrets.iter().any(|x| s.contains(x.as_str())) {
            *s = self.redact(s);
        }
    }
}

/// Headers whose values are never exported, whatever they contain.
pub fn is_sensitive_header(name: &str) -> bool {
    [
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, env: &[(&str, &str)]) -> Result<(Template, BTreeSet<String>), String> {
        let poisoned: BTreeSet<String> = ["broken".to_string()].into();
        let statics: BTreeMap<String, String> =
            [("app".to_string(), "http://a".to_string())].into();
        let extracted: BTreeSet<String> = ["token".to_string()].into();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let scope = Scope {
            statics: &statics,
            extracted: &extracted,
            poisoned: &poisoned,
            base_dir: Path::new("/nonexistent"),
            env: &lookup,
        };
        let mut secrets = BTreeSet::new();
        resolve(text, &scope, &mut secrets)
            .map(|t| (t, secrets))
            .map_err(|e| match e {
                ResolveError::Invalid(m) => m,
                ResolveError::Poisoned => "<poisoned>".into(),
            })
    }

    #[test]
    fn statics_and_secrets_fold_into_literals() {
        let (t, secrets) = check("${app}/x?k=${env:KEY}", &[("KEY", "s3cret")]).unwrap();
        assert_eq!(t.as_static(), Some("http://a/x?k=s3cret"));
        assert!(secrets.contains("s3cret"));
    }

    #[test]
    fn env_defaults_apply_only_when_unset() {
        let (t, secrets) = check("${env:DSN:-postgres://localhost/db}", &[]).unwrap();
        assert_eq!(t.as_static(), Some("postgres://localhost/db"));
        assert!(secrets.contains("postgres://localhost/db"));
        let (t, _) = check("${env:DSN:-fallback}", &[("DSN", "real")]).unwrap();
        assert_eq!(t.as_static(), Some("real"));
    }

    #[test]
    fn runtime_vars_stay_and_render() {
        let (t, _) = check("Bearer ${token}!", &[]).unwrap();
        assert_eq!(t.as_static(), None);
        let vars: Vars = [("token".to_string(), "abc".to_string())].into();
        assert_eq!(t.render(&vars).unwrap(), "Bearer abc!");
        assert!(t.render(&Vars::new()).unwrap_err().contains("`token`"));
    }

    #[test]
    fn escapes_and_plain_dollars() {
        let (t, _) = check("cost $5 and $${literal}", &[]).unwrap();
        assert_eq!(t.as_static(), Some("cost $5 and ${literal}"));
    }

    #[test]
    fn errors_name_the_reference_not_the_value() {
        assert_eq!(
            check("${env:MISSING}", &[]).unwrap_err(),
            "environment variable `MISSING` is not set"
        );
        assert!(
            check("${nope}", &[])
                .unwrap_err()
                .starts_with("undefined variable `nope`")
        );
        assert!(
            check("${vault:x}", &[])
                .unwrap_err()
                .contains("unknown reference kind `vault:`")
        );
        assert!(
            check("a ${app", &[])
                .unwrap_err()
                .starts_with("unterminated reference")
        );
        assert_eq!(check("${broken}/x", &[]).unwrap_err(), "<poisoned>");
    }

    #[test]
    fn redactor_replaces_longest_first() {
        let r = Redactor::new(["abc".to_string(), "abcdef".to_string()]);
        assert_eq!(r.redact("x abcdef y abc"), "x *** y ***");
    }
}
