//! Where gpuaasctl finds the coordinator, its admin token and the cluster CA.
//!
//! Each setting is taken from the first layer that has it: command-line flag, then environment
//! variable, then config file.
//!
//! | setting      | flag         | environment       | config key |
//! |--------------|--------------|-------------------|------------|
//! | API endpoint | `--endpoint` | `GPUAAS_ENDPOINT` | `endpoint` |
//! | admin token  | `--token`    | `GPUAAS_TOKEN`    | `token`    |
//! | cluster CA   | `--ca-cert`  | `GPUAAS_CA_CERT`  | `ca_cert`  |
//!
//! The config file is TOML with exactly those keys (an unknown key is an error). Its path is
//! `--config`, else `GPUAAS_CONFIG` (either must exist), else `$XDG_CONFIG_HOME/gpuaas/ctl.toml`
//! or, without `XDG_CONFIG_HOME`, `~/.config/gpuaas/ctl.toml`, read only if it exists.
//!
//! # Design
//! [`load`] takes the environment as a lookup function rather than reading the process
//! environment, so the precedence rules are unit-tested without touching global state. Every
//! value, whatever layer it came from, is checked by the same functions, and an error names the
//! layer (`--endpoint`, `GPUAAS_ENDPOINT` or `` `endpoint` in <file> ``) so it can be fixed where
//! it was set. An empty environment variable counts as unset. The token is never echoed back.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use reqwest::Url;
use serde::Deserialize;

/// Environment variable of the API endpoint.
pub(crate) const ENV_ENDPOINT: &str = "GPUAAS_ENDPOINT";
/// Environment variable of the admin token.
pub(crate) const ENV_TOKEN: &str = "GPUAAS_TOKEN";
/// Environment variable of the cluster CA certificate path.
pub(crate) const ENV_CA_CERT: &str = "GPUAAS_CA_CERT";
/// Environment variable of the config file path.
pub(crate) const ENV_CONFIG: &str = "GPUAAS_CONFIG";
/// The config file's path below the user's configuration directory.
pub(crate) const CONFIG_FILE: &str = "gpuaas/ctl.toml";

/// The config file. Every key is optional; flags and environment variables override it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    /// Base URL of the coordinator's admin API (`https://coordinator:8443`).
    endpoint: Option<String>,
    /// Admin bearer token.
    token: Option<String>,
    /// PEM file of the cluster CA; relative paths are relative to the config file's directory.
    ca_cert: Option<PathBuf>,
}

/// What the command line gave (the highest layer).
#[derive(Debug, Default, Clone)]
pub(crate) struct Flags {
    /// `--endpoint`.
    pub(crate) endpoint: Option<String>,
    /// `--token`.
    pub(crate) token: Option<String>,
    /// `--ca-cert`.
    pub(crate) ca_cert: Option<PathBuf>,
    /// `--config`.
    pub(crate) config: Option<PathBuf>,
}

/// The settings a command runs with.
#[derive(Clone)]
pub(crate) struct Settings {
    /// Base URL of the admin API (https).
    pub(crate) endpoint: Url,
    /// Admin bearer token.
    pub(crate) token: String,
    /// PEM file of the cluster CA to trust exclusively; `None` trusts the platform's roots.
    pub(crate) ca_cert: Option<PathBuf>,
}

impl fmt::Debug for Settings {
    /// Never prints the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("endpoint", &self.endpoint.as_str())
            .field("ca_cert", &self.ca_cert)
            .finish_non_exhaustive()
    }
}

/// One of the settings, with the names it goes by on each layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Setting {
    /// The admin API endpoint.
    Endpoint,
    /// The admin token.
    Token,
    /// The cluster CA certificate.
    CaCert,
}

impl Setting {
    fn flag(self) -> &'static str {
        match self {
            Setting::Endpoint => "--endpoint",
            Setting::Token => "--token",
            Setting::CaCert => "--ca-cert",
        }
    }

    fn env(self) -> &'static str {
        match self {
            Setting::Endpoint => ENV_ENDPOINT,
            Setting::Token => ENV_TOKEN,
            Setting::CaCert => ENV_CA_CERT,
        }
    }

    fn key(self) -> &'static str {
        match self {
            Setting::Endpoint => "endpoint",
            Setting::Token => "token",
            Setting::CaCert => "ca_cert",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Setting::Endpoint => "coordinator endpoint",
            Setting::Token => "admin token",
            Setting::CaCert => "cluster CA certificate",
        }
    }
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A command-line flag.
    Flag(Setting),
    /// An environment variable.
    Env(Setting),
    /// A key of the config file at `path`.
    File {
        /// The setting.
        setting: Setting,
        /// The config file.
        path: PathBuf,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(s) => f.write_str(s.flag()),
            Origin::Env(s) => f.write_str(s.env()),
            Origin::File { setting, path } => {
                write!(f, "`{}` in {}", setting.key(), path.display())
            }
        }
    }
}

/// Settings that cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has an unknown key or a value of the wrong type.
    #[error("invalid config file {}: {}", path.display(), one_line(error))]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// The TOML error, which names the key (shown in this error's message, so it is not
        /// also reported as its source).
        error: toml::de::Error,
    },
    /// An environment variable holds bytes that are not UTF-8.
    #[error("{var} is not valid UTF-8")]
    NotUnicode {
        /// The variable.
        var: &'static str,
    },
    /// The endpoint is not an https URL.
    #[error("invalid coordinator endpoint {value:?} from {origin}: {problem}")]
    Endpoint {
        /// Where it was set.
        origin: Origin,
        /// The rejected value.
        value: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The token cannot be sent in an HTTP header (its value is not shown).
    #[error("invalid admin token from {origin}: {problem}")]
    Token {
        /// Where it was set.
        origin: Origin,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The CA certificate path is empty.
    #[error("invalid cluster CA certificate path from {origin}: the path is empty")]
    CaCert {
        /// Where it was set.
        origin: Origin,
    },
    /// A required setting is not set anywhere.
    #[error(
        "no {} given: pass {}, set {}, or set `{}` in {}",
        setting.description(), setting.flag(), setting.env(), setting.key(),
        config_file_hint(.config_file.as_deref())
    )]
    Missing {
        /// The setting.
        setting: Setting,
        /// The config file that was (or would have been) read.
        config_file: Option<PathBuf>,
    },
}

fn one_line(err: &toml::de::Error) -> String {
    err.to_string()
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn config_file_hint(path: Option<&Path>) -> String {
    match path {
        Some(path) => path.display().to_string(),
        None => format!("the config file (--config or {ENV_CONFIG})"),
    }
}

/// Loads the settings from the flags, the environment (`env` looks a variable up) and the
/// config file, and validates them.
pub(crate) fn load(
    flags: &Flags,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<Settings, ConfigError> {
    let env = |var: &str| env(var).filter(|v| !v.is_empty());
    let env_string = |var: &'static str| {
        env(var)
            .map(|v| v.into_string().map_err(|_| ConfigError::NotUnicode { var }))
            .transpose()
    };

    let (config_file, explicit) = match flags.config.clone() {
        Some(path) => (Some(path), true),
        None => match env(ENV_CONFIG) {
            Some(path) => (Some(PathBuf::from(path)), true),
            None => (default_config_path(&env), false),
        },
    };
    let file = match &config_file {
        Some(path) if explicit || path.exists() => read_config_file(path)?,
        _ => FileConfig::default(),
    };
    let file_origin = |setting| Origin::File {
        setting,
        path: config_file.clone().unwrap_or_default(),
    };
    let missing = |setting| ConfigError::Missing {
        setting,
        config_file: config_file.clone(),
    };

    // The environment is only consulted when the flag is absent, so that a broken variable
    // does not get in the way of a flag that overrides it.
    let env_endpoint = match flags.endpoint {
        Some(_) => None,
        None => env_string(ENV_ENDPOINT)?,
    };
    let (endpoint, origin) = pick(
        flags.endpoint.clone(),
        env_endpoint,
        file.endpoint,
        Setting::Endpoint,
        file_origin,
    )
    .ok_or_else(|| missing(Setting::Endpoint))?;
    let endpoint = parse_endpoint(&endpoint).map_err(|problem| ConfigError::Endpoint {
        origin,
        value: endpoint.clone(),
        problem,
    })?;

    let env_token = match flags.token {
        Some(_) => None,
        None => env_string(ENV_TOKEN)?,
    };
    let (token, origin) = pick(
        flags.token.clone(),
        env_token,
        file.token,
        Setting::Token,
        file_origin,
    )
    .ok_or_else(|| missing(Setting::Token))?;
    check_token(&token).map_err(|problem| ConfigError::Token { origin, problem })?;

    let file_ca = file.ca_cert.map(|path| match config_file.as_deref() {
        // A relative path in the file is relative to the file, not to the working directory.
        Some(config) if path.is_relative() && !path.as_os_str().is_empty() => config
            .parent()
            .map_or_else(|| path.clone(), |dir| dir.join(&path)),
        _ => path,
    });
    let ca_cert = match pick(
        flags.ca_cert.clone(),
        env(ENV_CA_CERT).map(PathBuf::from),
        file_ca,
        Setting::CaCert,
        file_origin,
    ) {
        Some((path, origin)) if path.as_os_str().is_empty() => {
            return Err(ConfigError::CaCert { origin });
        }
        Some((path, _)) => Some(path),
        None => None,
    };

    Ok(Settings {
        endpoint,
        token,
        ca_cert,
    })
}

/// The first value of flag, environment and file, with its origin.
fn pick<T>(
    flag: Option<T>,
    env: Option<T>,
    file: Option<T>,
    setting: Setting,
    file_origin: impl Fn(Setting) -> Origin,
) -> Option<(T, Origin)> {
    flag.map(|v| (v, Origin::Flag(setting)))
        .or_else(|| env.map(|v| (v, Origin::Env(setting))))
        .or_else(|| file.map(|v| (v, file_origin(setting))))
}

/// `$XDG_CONFIG_HOME/gpuaas/ctl.toml`, else `$HOME/.config/gpuaas/ctl.toml`. A relative
/// `XDG_CONFIG_HOME` is ignored, as the XDG base directory specification requires.
fn default_config_path(env: &impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let xdg = env("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let base = xdg.or_else(|| env("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some(base.join(CONFIG_FILE))
}

fn read_config_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    parse_config(&text).map_err(|error| ConfigError::ParseFile {
        path: path.to_owned(),
        error,
    })
}

/// Parses the TOML in two steps so that a value of the wrong type is reported with its key
/// (`... expected a string in `endpoint``) rather than only as a position.
fn parse_config(text: &str) -> Result<FileConfig, toml::de::Error> {
    let table: toml::Table = toml::from_str(text)?;
    FileConfig::deserialize(toml::Value::Table(table))
}

/// Checks that `raw` is an https URL usable as the API base.
pub(crate) fn parse_endpoint(raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw.trim()).map_err(|e| format!("not a URL ({e})"))?;
    if url.scheme() != "https" {
        return Err("the admin API is served over HTTPS only; use an https:// URL".to_owned());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".to_owned());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("the URL must not have a query or a fragment".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the URL must not carry credentials; use the admin token".to_owned());
    }
    Ok(url)
}

/// Checks that the token can be sent as `Authorization: Bearer <token>`.
fn check_token(token: &str) -> Result<(), &'static str> {
    if token.is_empty() {
        return Err("the token is empty");
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the token must be printable ASCII without spaces or line breaks");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const TOKEN: &str = "admin-secret-0123";

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> + use<> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
            .collect();
        move |var| map.get(var).cloned()
    }

    fn write_config(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("ctl.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn flags_with_config(path: &Path) -> Flags {
        Flags {
            config: Some(path.to_owned()),
            ..Flags::default()
        }
    }

    #[test]
    fn flag_beats_env_beats_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(
            dir.path(),
            "endpoint = \"https://file:1\"\ntoken = \"file-token\"\nca_cert = \"file-ca.pem\"\n",
        );
        let env = env_of(&[
            (ENV_ENDPOINT, "https://env:2"),
            (ENV_TOKEN, "env-token"),
            (ENV_CA_CERT, "/env/ca.pem"),
        ]);
        let mut flags = Flags {
            endpoint: Some("https://flag:3".into()),
            token: Some("flag-token".into()),
            ca_cert: Some("/flag/ca.pem".into()),
            config: Some(config.clone()),
        };

        let s = load(&flags, &env).unwrap();
        assert_eq!(s.endpoint.as_str(), "https://flag:3/");
        assert_eq!(s.token, "flag-token");
        assert_eq!(s.ca_cert.as_deref(), Some(Path::new("/flag/ca.pem")));

        flags = flags_with_config(&config);
        let s = load(&flags, &env).unwrap();
        assert_eq!(s.endpoint.as_str(), "https://env:2/");
        assert_eq!(s.token, "env-token");
        assert_eq!(s.ca_cert.as_deref(), Some(Path::new("/env/ca.pem")));

        let s = load(&flags, env_of(&[])).unwrap();
        assert_eq!(s.endpoint.as_str(), "https://file:1/");
        assert_eq!(s.token, "file-token");
        // Relative to the config file's directory.
        assert_eq!(s.ca_cert, Some(dir.path().join("file-ca.pem")));
    }

    #[test]
    fn layers_mix_per_setting() {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), "endpoint = \"https://file:1\"\n");
        let flags = Flags {
            token: Some(TOKEN.into()),
            ..flags_with_config(&config)
        };
        let s = load(&flags, env_of(&[(ENV_CA_CERT, "/env/ca.pem")])).unwrap();
        assert_eq!(s.endpoint.as_str(), "https://file:1/");
        assert_eq!(s.token, TOKEN);
        assert_eq!(s.ca_cert.as_deref(), Some(Path::new("/env/ca.pem")));
    }

    #[test]
    fn empty_env_counts_as_unset() {
        let flags = Flags {
            endpoint: Some("https://flag".into()),
            ..Flags::default()
        };
        let err = load(&flags, env_of(&[(ENV_TOKEN, ""), ("HOME", "/nonexistent")])).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Missing {
                setting: Setting::Token,
                ..
            }
        ));
    }

    #[test]
    fn config_path_comes_from_env_then_xdg_then_home() {
        let dir = tempfile::tempdir().unwrap();
        let explicit = write_config(dir.path(), "endpoint = \"https://explicit\"\n");
        let xdg = dir.path().join("xdg");
        std::fs::create_dir_all(xdg.join("gpuaas")).unwrap();
        std::fs::write(xdg.join(CONFIG_FILE), "endpoint = \"https://xdg\"\n").unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(home.join(".config/gpuaas")).unwrap();
        std::fs::write(
            home.join(".config").join(CONFIG_FILE),
            "endpoint = \"https://home\"\n",
        )
        .unwrap();
        let flags = Flags {
            token: Some(TOKEN.into()),
            ..Flags::default()
        };
        let endpoint = |env: &[(&str, &str)]| {
            load(&flags, env_of(env)).map(|s| s.endpoint.host_str().unwrap_or_default().to_owned())
        };
        let (explicit, xdg, home) = (
            explicit.to_str().unwrap(),
            xdg.to_str().unwrap(),
            home.to_str().unwrap(),
        );

        let all = [
            (ENV_CONFIG, explicit),
            ("XDG_CONFIG_HOME", xdg),
            ("HOME", home),
        ];
        assert_eq!(endpoint(&all).unwrap(), "explicit");
        assert_eq!(endpoint(&all[1..]).unwrap(), "xdg");
        assert_eq!(endpoint(&all[2..]).unwrap(), "home");
        // A relative XDG_CONFIG_HOME is ignored.
        assert_eq!(
            endpoint(&[("XDG_CONFIG_HOME", "relative"), ("HOME", home)]).unwrap(),
            "home"
        );
        // A default path that does not exist is not an error: the setting is just missing.
        let err = endpoint(&[("HOME", "/nonexistent")]).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Missing {
                setting: Setting::Endpoint,
                ..
            }
        ));
    }

    #[test]
    fn explicit_config_file_must_exist() {
        let flags = flags_with_config(Path::new("/nonexistent/ctl.toml"));
        let err = load(&flags, env_of(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::ReadFile { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/ctl.toml"), "{err}");
        let err = load(
            &Flags::default(),
            env_of(&[(ENV_CONFIG, "/nonexistent/other.toml")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/other.toml"), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), "endpoint = \"https://x\"\nendpont = \"typo\"\n");
        let err = load(&flags_with_config(&config), env_of(&[])).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::ParseFile { .. }), "{msg}");
        assert!(msg.contains("unknown field `endpont`"), "{msg}");
        assert!(msg.contains(config.to_str().unwrap()), "{msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
    }

    #[test]
    fn wrong_type_is_named_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        for (text, key) in [
            ("endpoint = 5\n", "`endpoint`"),
            ("token = true\n", "`token`"),
            ("ca_cert = [\"a\"]\n", "`ca_cert`"),
        ] {
            let config = write_config(dir.path(), text);
            let msg = load(&flags_with_config(&config), env_of(&[]))
                .unwrap_err()
                .to_string();
            assert!(msg.contains(key), "{text:?}: {msg}");
            assert!(msg.contains("invalid type"), "{text:?}: {msg}");
        }
    }

    #[test]
    fn syntax_error_shows_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), "endpoint = https://x\n");
        let msg = load(&flags_with_config(&config), env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("line 1"), "{msg}");
        assert!(msg.contains("endpoint = https://x"), "{msg}");
    }

    #[test]
    fn bad_endpoint_names_its_origin() {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(
            dir.path(),
            &format!("endpoint = \"http://plain\"\ntoken = \"{TOKEN}\"\n"),
        );
        let msg = load(&flags_with_config(&config), env_of(&[]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            format!(
                "invalid coordinator endpoint \"http://plain\" from `endpoint` in {}: the admin \
                 API is served over HTTPS only; use an https:// URL",
                config.display()
            )
        );

        let env = env_of(&[(ENV_ENDPOINT, "not a url"), (ENV_TOKEN, TOKEN)]);
        let msg = load(&Flags::default(), &env).unwrap_err().to_string();
        assert!(
            msg.starts_with("invalid coordinator endpoint \"not a url\" from GPUAAS_ENDPOINT"),
            "{msg}"
        );

        let flags = Flags {
            endpoint: Some("https://host/?q=1".into()),
            ..Flags::default()
        };
        let msg = load(&flags, &env).unwrap_err().to_string();
        assert!(msg.contains("from --endpoint: "), "{msg}");
    }

    #[test]
    fn endpoint_rules() {
        assert!(parse_endpoint("https://coord.example:8443").is_ok());
        assert!(parse_endpoint("https://10.0.0.1:8443/admin/").is_ok());
        assert!(parse_endpoint("http://coord").is_err());
        assert!(parse_endpoint("https://coord#x").is_err());
        assert!(parse_endpoint("https://user:pw@coord").is_err());
        assert!(parse_endpoint("coord:8443").is_err());
        assert!(parse_endpoint("").is_err());
    }

    #[test]
    fn missing_settings_say_where_to_set_them() {
        let env = env_of(&[("HOME", "/home/u")]);
        let msg = load(&Flags::default(), &env).unwrap_err().to_string();
        assert_eq!(
            msg,
            "no coordinator endpoint given: pass --endpoint, set GPUAAS_ENDPOINT, or set \
             `endpoint` in /home/u/.config/gpuaas/ctl.toml"
        );
        let flags = Flags {
            endpoint: Some("https://x".into()),
            ..Flags::default()
        };
        let msg = load(&flags, env_of(&[])).unwrap_err().to_string();
        assert_eq!(
            msg,
            "no admin token given: pass --token, set GPUAAS_TOKEN, or set `token` in the config \
             file (--config or GPUAAS_CONFIG)"
        );
    }

    #[test]
    fn bad_token_is_refused_without_echoing_it() {
        let flags = Flags {
            endpoint: Some("https://x".into()),
            token: Some("secret with space".into()),
            ..Flags::default()
        };
        let msg = load(&flags, env_of(&[])).unwrap_err().to_string();
        assert!(msg.contains("from --token"), "{msg}");
        assert!(!msg.contains("secret"), "{msg}");
    }

    #[test]
    fn empty_ca_path_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(
            dir.path(),
            &format!("endpoint = \"https://x\"\ntoken = \"{TOKEN}\"\nca_cert = \"\"\n"),
        );
        let err = load(&flags_with_config(&config), env_of(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::CaCert { .. }), "{err}");
    }

    #[test]
    fn non_unicode_env_is_named_unless_overridden() {
        use std::os::unix::ffi::OsStringExt;

        let bad = OsString::from_vec(vec![0xff, 0xfe]);
        let env = move |var: &str| (var == ENV_TOKEN).then(|| bad.clone());
        let flags = Flags {
            endpoint: Some("https://x".into()),
            ..Flags::default()
        };
        let msg = load(&flags, &env).unwrap_err().to_string();
        assert_eq!(msg, "GPUAAS_TOKEN is not valid UTF-8");
        let flags = Flags {
            token: Some(TOKEN.into()),
            ..flags
        };
        assert_eq!(load(&flags, &env).unwrap().token, TOKEN);
    }

    #[test]
    fn debug_hides_the_token() {
        let flags = Flags {
            endpoint: Some("https://x".into()),
            token: Some(TOKEN.into()),
            ..Flags::default()
        };
        let s = load(&flags, env_of(&[])).unwrap();
        assert!(!format!("{s:?}").contains(TOKEN));
    }
}
