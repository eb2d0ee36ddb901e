//! Building the non-HTTP step kinds: sql, redis, tcp, dns, tls. Each turns
//! its wire type into the probe's input, validating everything that can be
//! validated before the first run (DSNs, URLs, record types, CA files).

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::Cx;
use crate::config::{self, Loc};
use crate::journey::Template;
use crate::probes::Action;
use crate::probes::{browser, dns, redis as redis_probe, sql, tcp, tls};

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_IDLE: Duration = Duration::from_secs(1);

impl Cx<'_> {
    /// The step's one action.
    pub(super) fn action(
        &mut self,
        s: &config::StepConfig,
        path: &str,
        statics: &BTreeMap<String, String>,
        extracted: &BTreeSet<String>,
    ) -> Option<Action> {
        if let Some(h) = &s.http {
            return self
                .http(h, &format!("{path}.http"), statics, extracted)
                .map(Action::Http);
        }
        if let Some(c) = &s.sql {
            return self
                .sql(c, &format!("{path}.sql"), statics, extracted)
                .map(|c| Action::Sql(Box::new(c)));
        }
        if let Some(c) = &s.redis {
            return self
                .redis(c, &format!("{path}.redis"), statics, extracted)
                .map(|c| Action::Redis(Box::new(c)));
        }
        if let Some(c) = &s.tcp {
            let reads = c.send.is_some()
                || c.read_until.is_some()
                || s.expect
                    .as_ref()
                    .is_some_and(|e| e.body.is_some() || !e.json.is_empty())
                || !s.extract.is_empty();
            return self
                .tcp(c, reads, &format!("{path}.tcp"), statics, extracted)
                .map(Action::Tcp);
        }
        if let Some(c) = &s.dns {
            return self
                .dns(c, &format!("{path}.dns"), statics)
                .map(Action::Dns);
        }
        if let Some(c) = &s.tls {
            return self
                .tls(c, &format!("{path}.tls"), statics)
                .map(Action::Tls);
        }
        if let Some(actions) = &s.browser {
            let absent = s
                .expect
                .as_ref()
                .and_then(|e| e.absent.as_ref())
                .map(|a| vec![a.value.clone()])
                .unwrap_or_default();
            let backend_ok = s
                .expect
                .as_ref()
                .and_then(|e| e.backend_requests.as_ref())
                .is_some_and(|b| b.value.trim() == "all_ok");
            return self
                .browser(
                    actions,
                    absent,
                    &format!("{path}.browser"),
                    statics,
                    extracted,
                )
                .map(|mut b| {
                    b.backend_ok = backend_ok;
                    Action::Browser(b)
                });
        }
        None
    }

    fn locate(
        &mut self,
        at: &Loc<config::BrowserActionConfig>,
        path: &str,
        css: &Option<String>,
        xpath: &Option<String>,
        text: &Option<String>,
    ) -> Option<browser::Locate> {
        match (css, xpath, text) {
            (Some(c), None, None) => Some(browser::Locate::Css(c.clone())),
            (None, Some(x), None) => Some(browser::Locate::Xpath(x.clone())),
            (None, None, Some(t)) => Some(browser::Locate::text(t)),
            _ => {
                self.err(
                    at,
                    path,
                    "locate the element by exactly one of `css`, `xpath` or `text`",
                );
                None
            }
        }
    }

    fn text_match(
        &mut self,
        at: &Loc<config::BrowserActionConfig>,
        path: &str,
        equals: &Option<String>,
        contains: &Option<String>,
        matches: &Option<String>,
    ) -> Option<browser::TextMatch> {
        if equals.is_none() && contains.is_none() && matches.is_none() {
            self.err(
                at,
                path,
                "give at least one of `equals`, `contains` or `matches`",
            );
            return None;
        }
        let matches = match matches {
            Some(re) => match regex::Regex::new(re) {
                Ok(r) => Some(r),
                Err(e) => {
                    let msg = e
                        .to_string()
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ");
                    self.err(at, path, format!("invalid regex: {msg}"));
                    return None;
                }
            },
            None => None,
        };
        Some(browser::TextMatch {
            equals: equals.clone(),
            contains: contains.clone(),
            matches,
        })
    }

    fn browser(
        &mut self,
        actions: &[Loc<config::BrowserActionConfig>],
        absent: Vec<String>,
        path: &str,
        statics: &BTreeMap<String, String>,
        extracted: &BTreeSet<String>,
    ) -> Option<browser::BrowserStep> {
        use config::BrowserActionConfig as C;
        if actions.is_empty() {
            self.err_at(0, 0, path, "a browser step needs at least one action");
            return None;
        }
        let before = self.errors.len();
        let mut out = Vec::new();
        for (i, a) in actions.iter().enumerate() {
            let p = format!("{path}[{i}]");
            let at = (a.line, a.column);
            let built = match &a.value {
                C::Goto(url) => self
                    .template(at, &format!("{p}.goto"), url, statics, extracted)
                    .and_then(|t| {
                        match crate::probes::http::parse_http_url(&t.render_with_placeholder("x")) {
                            Ok(_) => Some(browser::Action::Goto(t)),
                            Err(e) => {
                                self.err(a, &format!("{p}.goto"), format!("{e} in `{url}`"));
                                None
                            }
                        }
                    }),
                C::Fill(f) => {
                    let loc = self.locate(a, &p, &f.css, &f.xpath, &f.text);
                    let value =
                        self.template(at, &format!("{p}.fill.value"), &f.value, statics, extracted);
                    match (loc, value) {
                        (Some(at), Some(value)) => Some(browser::Action::Fill {
                            at,
                            value,
                            submit: f.submit,
                        }),
                        _ => None,
                    }
                }
                C::Click(t) => self
                    .locate(a, &p, &t.css, &t.xpath, &t.text)
                    .map(|at| browser::Action::Click { at }),
                C::Press(k) => {
                    let at = if k.css.is_none() && k.xpath.is_none() && k.text.is_none() {
                        Some(None)
                    } else {
                        self.locate(a, &p, &k.css, &k.xpath, &k.text).map(Some)
                    };
                    at.map(|at| browser::Action::Press {
                        at,
                        keys: k.keys.clone(),
                    })
                }
                C::Select(sel) => {
                    let loc = self.locate(a, &p, &sel.css, &sel.xpath, &sel.text);
                    if sel.value.is_some() == sel.label.is_some() {
                        self.err(a, &p, "give exactly one of `value` or `label`");
                        None
                    } else {
                        let value = match &sel.value {
                            Some(v) => self.template(
                                at,
                                &format!("{p}.select.value"),
                                v,
                                statics,
                                extracted,
                            ),
                            None => None,
                        };
                        let label = match &sel.label {
                            Some(v) => self.template(
                                at,
                                &format!("{p}.select.label"),
                                v,
                                statics,
                                extracted,
                            ),
                            None => None,
                        };
                        loc.map(|at| browser::Action::Select { at, value, label })
                    }
                }
                C::WaitFor(w) => {
                    let loc = self.locate(a, &p, &w.css, &w.xpath, &w.text);
                    let timeout = match &w.timeout {
                        Some(t) => match super::parse_duration(t) {
                            Ok(d) => Some(Some(d)),
                            Err(e) => {
                                self.err(a, &format!("{p}.wait_for.timeout"), e);
                                None
                            }
                        },
                        None => Some(None),
                    };
                    match (loc, timeout) {
                        (Some(at), Some(timeout)) => Some(browser::Action::WaitFor {
                            at,
                            timeout,
                            visible: w.visible.unwrap_or(true),
                            gone: w.gone,
                        }),
                        _ => None,
                    }
                }
                C::AssertText(t) => {
                    let loc = self.locate(a, &p, &t.css, &t.xpath, &t.text);
                    let m = self.text_match(a, &p, &t.equals, &t.contains, &t.matches);
                    match (loc, m) {
                        (Some(at), Some(expect)) => {
                            Some(browser::Action::AssertText { at, expect })
                        }
                        _ => None,
                    }
                }
                C::AssertAbsent(t) => self
                    .locate(a, &p, &t.css, &t.xpath, &t.text)
                    .map(|at| browser::Action::AssertAbsent { at }),
                C::AssertUrl(m) => self
                    .text_match(a, &p, &m.equals, &m.contains, &m.matches)
                    .map(browser::Action::AssertUrl),
                C::AssertTitle(m) => self
                    .text_match(a, &p, &m.equals, &m.contains, &m.matches)
                    .map(browser::Action::AssertTitle),
                C::Script(sc) => {
                    let expect = match &sc.expect {
                        Some(m) => self
                            .text_match(a, &p, &m.equals, &m.contains, &m.matches)
                            .map(Some),
                        None => Some(None),
                    };
                    expect.map(|expect| browser::Action::Script {
                        js: sc.js.clone(),
                        expect,
                        extract: sc.extract.clone(),
                    })
                }
                C::Screenshot(name) => Some(browser::Action::Screenshot { name: name.clone() }),
            };
            out.extend(built);
        }
        if self.errors.len() > before {
            return None;
        }
        Some(browser::BrowserStep {
            actions: out,
            absent,
            backend_ok: false,
        })
    }

    /// A template that must be known at build time (hosts, DSNs, URLs).
    fn fixed(
        &mut self,
        v: &Loc<String>,
        path: &str,
        statics: &BTreeMap<String, String>,
    ) -> Option<String> {
        let t = self.template(
            (v.line, v.column),
            path,
            &v.value,
            statics,
            &BTreeSet::new(),
        )?;
        match t.as_static() {
            Some(s) => Some(s.to_string()),
            None => {
                self.err(v, path, "this value cannot use extracted variables");
                None
            }
        }
    }

    fn timeout_or(
        &mut self,
        v: &Option<Loc<String>>,
        path: &str,
        default: Duration,
    ) -> Option<Duration> {
        match v {
            Some(d) => self.duration(d, path),
            None => Some(default),
        }
    }

    fn ca_pem(&mut self, ca: &Loc<String>, path: &str) -> Option<Vec<u8>> {
        let full = self.file.dir().join(&ca.value);
        match std::fs::read(&full) {
            Ok(pem) => Some(pem),
            Err(e) => {
                self.err(ca, path, format!("cannot read `{}`: {e}", full.display()));
                None
            }
        }
    }

    fn sql(
        &mut self,
        c: &config::SqlConfig,
        path: &str,
        statics: &BTreeMap<String, String>,
        extracted: &BTreeSet<String>,
    ) -> Option<sql::SqlCheck> {
        let driver = match c.driver.value.trim().to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" => Some(sql::Driver::Postgres),
            "mysql" | "mariadb" => Some(sql::Driver::Mysql),
            other => {
                self.err(
                    &c.driver,
                    &format!("{path}.driver"),
                    format!("unknown driver `{other}` (use postgres or mysql)"),
                );
                None
            }
        };
        let dsn = self.fixed(&c.dsn, &format!("{path}.dsn"), statics);
        let connect = match (driver, dsn) {
            (Some(d), Some(dsn)) => match sql::parse_dsn(d, &dsn) {
                Ok(v) => Some(v),
                Err(e) => {
                    // The message never holds the DSN itself: it may carry a password.
                    self.err(&c.dsn, &format!("{path}.dsn"), e);
                    None
                }
            },
            _ => None,
        };
        let connect = match (connect, &c.tls) {
            (Some(conn), tls) => self.sql_tls(conn, tls.as_ref(), c.ca_file.as_ref(), path),
            (None, _) => None,
        };
        if c.write && c.rollback {
            self.err(
                &c.query,
                &format!("{path}.rollback"),
                "`write` commits and `rollback` undoes: choose one",
            );
        }
        let mode = if c.rollback {
            sql::Mode::Rollback
        } else if c.write {
            sql::Mode::Write
        } else {
            sql::Mode::ReadOnly
        };
        let query = c.query.value.trim().to_string();
        if query.is_empty() {
            self.err(&c.query, &format!("{path}.query"), "query is empty");
        }
        if query.contains("${") {
            self.err(
                &c.query,
                &format!("{path}.query"),
                "put values in `params` (bound, never spliced into the SQL), not `${...}` in the query",
            );
        }
        let mut params = Vec::new();
        for (i, p) in c.params.iter().enumerate() {
            let pp = format!("{path}.params[{i}]");
            let param = match &p.value {
                Value::Null => Some(sql::Param::Null),
                Value::Bool(b) => Some(sql::Param::Bool(*b)),
                Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                    (Some(i), _) => Some(sql::Param::Int(i)),
                    (None, Some(f)) => Some(sql::Param::Float(f)),
                    _ => None,
                },
                Value::String(text) => self
                    .template((p.line, p.column), &pp, text, statics, extracted)
                    .map(sql::Param::Text),
                _ => {
                    self.err(p, &pp, "a parameter is a string, number, boolean or null");
                    None
                }
            };
            params.extend(param);
        }
        let operation = query
            .split(|c: char| !c.is_ascii_alphabetic())
            .find(|w| !w.is_empty())
            .unwrap_or("QUERY")
            .to_ascii_uppercase();
        let connect_timeout = self.timeout_or(
            &c.connect_timeout,
            &format!("{path}.connect_timeout"),
            DEFAULT_CONNECT_TIMEOUT,
        );
        let statement_timeout = self.timeout_or(
            &c.statement_timeout,
            &format!("{path}.statement_timeout"),
            DEFAULT_STATEMENT_TIMEOUT,
        );
        let (connect, server_address, server_port, database) = connect?;
        Some(sql::SqlCheck {
            driver: driver?,
            connect,
            server_address,
            server_port,
            database,
            query,
            operation,
            params,
            mode,
            connect_timeout: connect_timeout?,
            statement_timeout: statement_timeout?,
            max_rows: c.max_rows.unwrap_or(sql::DEFAULT_MAX_ROWS).max(1),
        })
    }

    #[allow(clippy::type_complexity)]
    fn sql_tls(
        &mut self,
        conn: (sql::ConnectOpts, String, u16, Option<String>),
        tls: Option<&Loc<String>>,
        ca: Option<&Loc<String>>,
        path: &str,
    ) -> Option<(sql::ConnectOpts, String, u16, Option<String>)> {
        let (opts, host, port, db) = conn;
        let Some(mode) = tls else {
            if let Some(ca) = ca {
                self.err(
                    ca,
                    &format!("{path}.ca_file"),
                    "`ca_file` needs `tls: verify_ca` or `verify_full`",
                );
                return None;
            }
            return Some((opts, host, port, db));
        };
        let m = mode.value.trim().to_ascii_lowercase();
        let ca_path = ca.map(|c| self.file.dir().join(&c.value));
        let opts = match opts {
            sql::ConnectOpts::Postgres(o) => {
                use sqlx::postgres::PgSslMode as M;
                let ssl = match m.as_str() {
                    "disable" => M::Disable,
                    "prefer" => M::Prefer,
                    "require" => M::Require,
                    "verify_ca" => M::VerifyCa,
                    "verify_full" => M::VerifyFull,
                    _ => return self.bad_tls_mode(mode, path),
                };
                let o = o.ssl_mode(ssl);
                sql::ConnectOpts::Postgres(match ca_path {
                    Some(p) => o.ssl_root_cert(p),
                    None => o,
                })
            }
            sql::ConnectOpts::Mysql(o) => {
                use sqlx::mysql::MySqlSslMode as M;
                let ssl = match m.as_str() {
                    "disable" => M::Disabled,
                    "prefer" => M::Preferred,
                    "require" => M::Required,
                    "verify_ca" => M::VerifyCa,
                    "verify_full" => M::VerifyIdentity,
                    _ => return self.bad_tls_mode(mode, path),
                };
                let o = o.ssl_mode(ssl);
                sql::ConnectOpts::Mysql(match ca_path {
                    Some(p) => o.ssl_ca(p),
                    None => o,
                })
            }
        };
        Some((opts, host, port, db))
    }

    fn bad_tls_mode<T>(&mut self, mode: &Loc<String>, path: &str) -> Option<T> {
        self.err(
            mode,
            &format!("{path}.tls"),
            format!(
                "unknown TLS mode `{}` (use disable, prefer, require, verify_ca or verify_full)",
                mode.value
            ),
        );
        None
    }

    fn redis(
        &mut self,
        c: &config::RedisConfig,
        path: &str,
        statics: &BTreeMap<String, String>,
        extracted: &BTreeSet<String>,
    ) -> Option<redis_probe::RedisCheck> {
        let url = self.fixed(&c.url, &format!("{path}.url"), statics);
        let client = url.and_then(|u| match redis::Client::open(u.as_str()) {
            Ok(client) => Some(client),
            Err(e) => {
                let msg = e.to_string().replace(u.as_str(), "***");
                self.err(
                    &c.url,
                    &format!("{path}.url"),
                    format!("invalid Redis URL: {msg}"),
                );
                None
            }
        });
        let words: Vec<String> = match &c.command.value {
            config::RedisCommand::Line(l) => l.split_whitespace().map(str::to_string).collect(),
            config::RedisCommand::Words(w) => w.clone(),
        };
        let cmd_path = format!("{path}.command");
        let Some((name, rest)) = words.split_first() else {
            self.err(&c.command, &cmd_path, "command is empty");
            return None;
        };
        let mut args = Vec::new();
        for (i, a) in rest.iter().enumerate() {
            args.extend(self.template(
                (c.command.line, c.command.column),
                &format!("{cmd_path}[{}]", i + 1),
                a,
                statics,
                extracted,
            ));
        }
        let connect_timeout = self.timeout_or(
            &c.connect_timeout,
            &format!("{path}.connect_timeout"),
            DEFAULT_CONNECT_TIMEOUT,
        )?;
        let client = client?;
        let info = client.get_connection_info();
        let (server_address, server_port) = match info.addr() {
            redis::ConnectionAddr::Tcp(h, p) => (h.clone(), *p),
            redis::ConnectionAddr::TcpTls { host, port, .. } => (host.clone(), *port),
            other => (format!("{other}"), 0),
        };
        let database = info.redis_settings().db();
        Some(redis_probe::RedisCheck {
            client,
            server_address,
            server_port,
            database,
            command: name.to_ascii_uppercase(),
            args,
            connect_timeout,
        })
    }

    fn tcp(
        &mut self,
        c: &config::TcpConfig,
        read: bool,
        path: &str,
        statics: &BTreeMap<String, String>,
        extracted: &BTreeSet<String>,
    ) -> Option<tcp::TcpCheck> {
        let host = self.fixed(&c.host, &format!("{path}.host"), statics);
        if c.port.value == 0 {
            self.err(&c.port, &format!("{path}.port"), "port 0 is not a port");
        }
        let tls = if c.tls {
            let pem = match &c.ca_file {
                Some(ca) if c.insecure => {
                    self.err(
                        ca,
                        &format!("{path}.ca_file"),
                        "`ca_file` and `insecure: true` contradict each other",
                    );
                    return None;
                }
                Some(ca) => Some(self.ca_pem(ca, &format!("{path}.ca_file"))?),
                None => None,
            };
            match crate::probes::http::tls_config(pem.as_deref(), c.insecure) {
                Ok(mut cfg) => {
                    // Plain TCP: no application protocol to negotiate.
                    cfg.alpn_protocols.clear();
                    Some(Arc::new(cfg))
                }
                Err(e) => {
                    self.err(&c.host, &format!("{path}.ca_file"), e);
                    return None;
                }
            }
        } else {
            if c.insecure || c.ca_file.is_some() {
                self.err(
                    &c.host,
                    &format!("{path}.tls"),
                    "`insecure` and `ca_file` need `tls: true`",
                );
            }
            None
        };
        let send: Option<Template> = match &c.send {
            Some(v) => Some(self.template(
                (v.line, v.column),
                &format!("{path}.send"),
                &v.value,
                statics,
                extracted,
            )?),
            None => None,
        };
        let idle = self.timeout_or(
            &c.idle_timeout,
            &format!("{path}.idle_timeout"),
            DEFAULT_IDLE,
        )?;
        Some(tcp::TcpCheck {
            host: host?,
            port: c.port.value,
            tls,
            send,
            read_until: c.read_until.clone(),
            idle,
            read,
        })
    }

    fn dns(
        &mut self,
        c: &config::DnsConfig,
        path: &str,
        statics: &BTreeMap<String, String>,
    ) -> Option<dns::DnsQuery> {
        let name = self
            .fixed(&c.name, &format!("{path}.name"), statics)
            .and_then(|n| match hickory_proto::rr::Name::from_ascii(&n) {
                Ok(name) => Some(name),
                Err(e) => {
                    self.err(
                        &c.name,
                        &format!("{path}.name"),
                        format!("invalid DNS name `{n}`: {e}"),
                    );
                    None
                }
            });
        let record_type = match &c.record_type {
            None => Some(hickory_proto::rr::RecordType::A),
            Some(t) => {
                match hickory_proto::rr::RecordType::from_str(&t.value.trim().to_ascii_uppercase())
                {
                    Ok(rt) => Some(rt),
                    Err(_) => {
                        self.err(
                            t,
                            &format!("{path}.type"),
                            format!("unknown record type `{}`", t.value),
                        );
                        None
                    }
                }
            }
        };
        let server = match &c.server {
            None => match dns::system_server() {
                Ok(s) => Some(s),
                Err(e) => {
                    self.err(&c.name, &format!("{path}.server"), e);
                    None
                }
            },
            Some(s) => {
                let text = s.value.trim();
                let parsed = text.parse::<std::net::SocketAddr>().ok().or_else(|| {
                    text.parse::<std::net::IpAddr>()
                        .ok()
                        .map(|ip| (ip, 53).into())
                });
                if parsed.is_none() {
                    self.err(
                        s,
                        &format!("{path}.server"),
                        format!("`{text}` is not an IP address or ip:port"),
                    );
                }
                parsed
            }
        };
        let transport = match c
            .transport
            .as_ref()
            .map(|t| t.value.trim().to_ascii_lowercase())
        {
            None => Some(dns::Transport::Udp),
            Some(t) if t == "udp" => Some(dns::Transport::Udp),
            Some(t) if t == "tcp" => Some(dns::Transport::Tcp),
            Some(t) => {
                if let Some(l) = &c.transport {
                    self.err(
                        l,
                        &format!("{path}.transport"),
                        format!("unknown transport `{t}` (use udp or tcp)"),
                    );
                }
                None
            }
        };
        Some(dns::DnsQuery {
            name: name?,
            record_type: record_type?,
            server: server?,
            transport: transport?,
            recursion_desired: c.recursion.unwrap_or(true),
        })
    }

    fn tls(
        &mut self,
        c: &config::TlsConfig,
        path: &str,
        statics: &BTreeMap<String, String>,
    ) -> Option<tls::TlsCheck> {
        let host = self.fixed(&c.host, &format!("{path}.host"), statics)?;
        let verifier = match (&c.ca_file, c.insecure) {
            (Some(ca), true) => {
                self.err(
                    ca,
                    &format!("{path}.ca_file"),
                    "`ca_file` and `insecure: true` contradict each other",
                );
                return None;
            }
            (_, true) => None,
            (ca, false) => {
                let pem = match ca {
                    Some(ca) => Some(self.ca_pem(ca, &format!("{path}.ca_file"))?),
                    None => None,
                };
                match tls::verifier(pem.as_deref()) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        self.err(&c.host, &format!("{path}.ca_file"), e);
                        return None;
                    }
                }
            }
        };
        Some(tls::TlsCheck {
            server_name: c.server_name.clone().unwrap_or_else(|| host.clone()),
            host,
            port: c.port.unwrap_or(443),
            verifier,
        })
    }
}

impl Cx<'_> {
    /// `fan_out`: the host is given or taken from the first step's URL.
    pub(super) fn fan_out(
        &mut self,
        f: &Loc<config::FanOutConfig>,
        cfg: &config::JourneyConfig,
        statics: &BTreeMap<String, String>,
    ) -> Option<crate::journey::FanOut> {
        let (host, addresses) = match &f.value {
            config::FanOutConfig::Mode(m) if m == "per_address" => (None, None),
            config::FanOutConfig::Mode(m) => {
                self.err(
                    f,
                    "fan_out",
                    format!("unknown fan-out `{m}` (use per_address or {{ host, addresses }})"),
                );
                return None;
            }
            config::FanOutConfig::Explicit(e) => (e.host.clone(), e.addresses.clone()),
        };
        let host = match host {
            Some(h) => h,
            None => {
                let first_url = cfg.steps.first().and_then(|s| {
                    s.http.as_ref().map(|h| h.url.value.clone()).or_else(|| {
                        s.browser.as_ref().and_then(|b| {
                            b.iter().find_map(|a| match &a.value {
                                config::BrowserActionConfig::Goto(u) => Some(u.clone()),
                                _ => None,
                            })
                        })
                    })
                });
                let scope_none = BTreeSet::new();
                let resolved = first_url.and_then(|u| {
                    let t =
                        self.template((f.line, f.column), "fan_out", &u, statics, &scope_none)?;
                    url::Url::parse(&t.render_with_placeholder("x"))
                        .ok()?
                        .host_str()
                        .map(str::to_string)
                });
                match resolved {
                    Some(h) => h,
                    None => {
                        self.err(f, "fan_out", "cannot tell the host from the first step; give `fan_out: { host: ... }`");
                        return None;
                    }
                }
            }
        };
        let addresses = match addresses {
            None => None,
            Some(list) => {
                let mut ips = Vec::new();
                for a in &list {
                    match a.trim().parse::<std::net::IpAddr>() {
                        Ok(ip) => ips.push(ip),
                        Err(_) => {
                            self.err(
                                f,
                                "fan_out.addresses",
                                format!("`{a}` is not an IP address"),
                            );
                            return None;
                        }
                    }
                }
                if ips.is_empty() {
                    self.err(f, "fan_out.addresses", "the address list is empty");
                    return None;
                }
                Some(ips)
            }
        };
        Some(crate::journey::FanOut {
            host: host.trim_matches(['[', ']']).to_string(),
            addresses,
        })
    }
}
