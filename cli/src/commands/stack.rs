//! `shoal stack deploy|ls|services|ps|rm`: a compose file (version 3, the keys `docker stack
//! deploy` takes) deployed as a stack without the docker CLI.
//!
//! The file is read as YAML (serde_norway) into Shoal's own model of the compose keys it
//! supports. A key it does not know is refused by its path, never dropped (`x-` extensions
//! aside). `${VAR}`, `${VAR:-default}` and `$VAR` are taken from the environment, and `$$` is a
//! `$`. Each service is turned into the `service create` flags it means and read by the same code
//! as `shoal service create`, so a compose file and the command line check and build alike.
//!
//! As in Docker, every object is named `<stack>_<name>` and labelled
//! `com.docker.stack.namespace=<stack>`. A service without networks gets `<stack>_default`. A
//! secret's target defaults to its key in the file, a config's to `/<key>`.

use shoal_api::call::{DataCall, NetworkCall, ServiceCall};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use clap::Parser as _;
use serde::Deserialize;
use serde_json::Value;
use shoal_api::{
    DaemonHost,
    secret::{DataKind, DataObject, DataSpec},
    service::{Driver, Ipam, IpamConfig, Network, NetworkSpec, Service, ServiceSpec, TaskFilter},
};

use crate::{Failure, commands::swarm::call, output::Format};

/// The label that names a stack.
pub(crate) const NAMESPACE: &str = "com.docker.stack.namespace";

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Deploy a new stack or update an existing one
    #[command(alias = "up")]
    Deploy {
        /// Path to a Compose file
        #[arg(short = 'c', long = "compose-file", required = true)]
        compose_file: PathBuf,
        /// Prune services that are no longer referenced
        #[arg(long)]
        prune: bool,
        /// The stack's name
        stack: String,
    },
    /// List stacks
    #[command(alias = "list")]
    Ls {
        /// Format the output: json (one object per line), or a Go template
        #[arg(long)]
        format: Option<Format>,
    },
    /// List the services in the stack
    Services {
        /// Only display IDs
        #[arg(short, long)]
        quiet: bool,
        /// Format the output: json (one object per line), or a Go template
        #[arg(long)]
        format: Option<Format>,
        /// The stack
        stack: String,
    },
    /// List the tasks in the stack
    Ps {
        /// Only display task IDs
        #[arg(short, long)]
        quiet: bool,
        /// Format the output: json (one object per line), or a Go template
        #[arg(long)]
        format: Option<Format>,
        /// Do not truncate output
        #[arg(long)]
        no_trunc: bool,
        /// The stack
        stack: String,
    },
    /// Remove one or more stacks
    #[command(aliases = ["remove", "down"])]
    Rm {
        /// The stacks
        #[arg(required = true)]
        stacks: Vec<String>,
    },
}

// ---------------------------------------------------------------------------------------------
// The compose model: the keys Shoal takes, each read as compose writes it. `rest` collects what
// is not one of them, refused by `refuse_unknown`.

#[derive(Debug, Deserialize)]
struct Compose {
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    services: BTreeMap<String, ComposeService>,
    #[serde(default)]
    networks: BTreeMap<String, Option<ComposeNetwork>>,
    #[serde(default)]
    secrets: BTreeMap<String, ComposeData>,
    #[serde(default)]
    configs: BTreeMap<String, ComposeData>,
    #[serde(default)]
    volumes: BTreeMap<String, Option<Value>>,
    #[serde(flatten)]
    rest: BTreeMap<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StringOrList {
    String(String),
    List(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum MapOrList {
    Map(BTreeMap<String, Option<Scalar>>),
    List(Vec<String>),
}

/// A YAML scalar where compose takes text (`replicas: 2` or `cpus: '0.5'`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Scalar {
    String(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::String(s) => f.write_str(s),
            Self::Int(n) => write!(f, "{n}"),
            Self::Float(n) => write!(f, "{n}"),
            Self::Bool(b) => write!(f, "{b}"),
        }
    }
}

#[derive(Debug, Deserialize)]
struct ComposeService {
    image: Option<String>,
    command: Option<StringOrList>,
    environment: Option<MapOrList>,
    labels: Option<MapOrList>,
    #[serde(default)]
    ports: Vec<PortSpec>,
    networks: Option<ServiceNetworks>,
    #[serde(default)]
    secrets: Vec<DataRef>,
    #[serde(default)]
    configs: Vec<DataRef>,
    #[serde(default)]
    volumes: Vec<VolumeSpec>,
    user: Option<Scalar>,
    working_dir: Option<String>,
    hostname: Option<String>,
    stop_signal: Option<String>,
    stop_grace_period: Option<String>,
    read_only: Option<bool>,
    init: Option<bool>,
    healthcheck: Option<Healthcheck>,
    deploy: Option<Deploy>,
    #[serde(flatten)]
    rest: BTreeMap<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PortSpec {
    Short(Scalar),
    Long {
        target: u16,
        published: Option<Scalar>,
        protocol: Option<String>,
        mode: Option<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ServiceNetworks {
    List(Vec<String>),
    Map(BTreeMap<String, Option<NetworkOptions>>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkOptions {
    #[serde(default)]
    aliases: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum DataRef {
    Short(String),
    Long {
        source: String,
        target: Option<String>,
        uid: Option<Scalar>,
        gid: Option<Scalar>,
        mode: Option<Scalar>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum VolumeSpec {
    Short(String),
    Long {
        #[serde(rename = "type")]
        kind: String,
        source: Option<String>,
        target: String,
        #[serde(default)]
        read_only: bool,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Healthcheck {
    test: Option<StringOrList>,
    interval: Option<String>,
    timeout: Option<String>,
    retries: Option<u64>,
    start_period: Option<String>,
    #[serde(default)]
    disable: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Deploy {
    mode: Option<String>,
    replicas: Option<u64>,
    labels: Option<MapOrList>,
    endpoint_mode: Option<String>,
    placement: Option<Placement>,
    resources: Option<Resources>,
    restart_policy: Option<RestartPolicy>,
    update_config: Option<Rolling>,
    rollback_config: Option<Rolling>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Placement {
    #[serde(default)]
    constraints: Vec<String>,
    #[serde(default)]
    preferences: Vec<BTreeMap<String, String>>,
    max_replicas_per_node: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Resources {
    limits: Option<Resource>,
    reservations: Option<Resource>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Resource {
    cpus: Option<Scalar>,
    memory: Option<Scalar>,
    pids: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestartPolicy {
    condition: Option<String>,
    delay: Option<String>,
    max_attempts: Option<u64>,
    window: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rolling {
    parallelism: Option<u64>,
    delay: Option<String>,
    failure_action: Option<String>,
    monitor: Option<String>,
    max_failure_ratio: Option<Scalar>,
    order: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ComposeNetwork {
    driver: Option<String>,
    #[serde(default)]
    driver_opts: BTreeMap<String, Option<Scalar>>,
    #[serde(default)]
    attachable: bool,
    #[serde(default)]
    internal: bool,
    labels: Option<MapOrList>,
    #[serde(default)]
    external: bool,
    name: Option<String>,
    ipam: Option<ComposeIpam>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ComposeIpam {
    driver: Option<String>,
    #[serde(default)]
    config: Vec<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ComposeData {
    file: Option<String>,
    #[serde(default)]
    external: bool,
    name: Option<String>,
    labels: Option<MapOrList>,
}

// ---------------------------------------------------------------------------------------------

/// `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `$VAR` from `env`; `$$` is `$`.
fn interpolate(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some('$') => {
                chars.next();
                out.push('$');
            }
            Some('{') => {
                chars.next();
                let mut inner = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => inner.push(c),
                        None => return Err(format!("invalid interpolation format for {text:?}")),
                    }
                }
                let (name, default) = match inner.split_once(":-") {
                    Some((n, d)) => (n, Some((d, true))),
                    None => match inner.split_once('-') {
                        Some((n, d)) => (n, Some((d, false))),
                        None => (inner.as_str(), None),
                    },
                };
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!("invalid interpolation format for {text:?}"));
                }
                let value = env(name);
                out.push_str(&match (value, default) {
                    (Some(v), Some((d, true))) if v.is_empty() => d.to_owned(),
                    (Some(v), _) => v,
                    (None, Some((d, _))) => d.to_owned(),
                    (None, None) => String::new(),
                });
            }
            Some(c) if c.is_ascii_alphabetic() || *c == '_' => {
                let mut name = String::new();
                while let Some(c) = chars
                    .peek()
                    .filter(|c| c.is_ascii_alphanumeric() || **c == '_')
                {
                    name.push(*c);
                    chars.next();
                }
                out.push_str(&env(&name).unwrap_or_default());
            }
            _ => out.push('$'),
        }
    }
    Ok(out)
}

/// Every string of `value` interpolated.
fn interpolate_all(value: &mut Value, env: &dyn Fn(&str) -> Option<String>) -> Result<(), String> {
    match value {
        Value::String(s) => *s = interpolate(s, env)?,
        Value::Array(items) => {
            for item in items {
                interpolate_all(item, env)?;
            }
        }
        Value::Object(map) => {
            for item in map.values_mut() {
                interpolate_all(item, env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Keys of `rest` that are not `x-` extensions: refused by their path.
fn refuse_unknown(rest: &BTreeMap<String, Value>, at: &str) -> Result<(), String> {
    let unknown: Vec<&str> = rest
        .keys()
        .filter(|k| !k.starts_with("x-"))
        .map(String::as_str)
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{at}: Shoal does not support {} (yet)",
            unknown
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

fn pairs(values: &Option<MapOrList>) -> Vec<String> {
    match values {
        None => Vec::new(),
        Some(MapOrList::List(list)) => list.clone(),
        Some(MapOrList::Map(map)) => map
            .iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{k}={v}"),
                None => k.clone(),
            })
            .collect(),
    }
}

/// A command as compose writes it: a list, or a string split as a shell would (quotes kept
/// together).
fn words(command: &StringOrList) -> Result<Vec<String>, String> {
    match command {
        StringOrList::List(list) => Ok(list.clone()),
        StringOrList::String(text) => {
            let mut out = Vec::new();
            let mut word = String::new();
            let mut in_word = false;
            let mut quote = None;
            let mut chars = text.chars();
            while let Some(c) = chars.next() {
                match (quote, c) {
                    (Some(q), c) if c == q => quote = None,
                    (Some('"'), '\\') => word.extend(chars.next()),
                    (Some(_), c) => word.push(c),
                    (None, '\'' | '"') => {
                        quote = Some(c);
                        in_word = true;
                    }
                    (None, '\\') => {
                        word.extend(chars.next());
                        in_word = true;
                    }
                    (None, c) if c.is_whitespace() => {
                        if in_word {
                            out.push(std::mem::take(&mut word));
                            in_word = false;
                        }
                    }
                    (None, c) => {
                        word.push(c);
                        in_word = true;
                    }
                }
            }
            if quote.is_some() {
                return Err(format!("unbalanced quotes in {text:?}"));
            }
            if in_word {
                out.push(word);
            }
            Ok(out)
        }
    }
}

/// A file mode as compose writes it: `0440` (octal, as Docker reads it) or a number.
fn mode(value: &Scalar) -> Result<String, String> {
    let text = value.to_string();
    let digits = text.trim_start_matches("0o");
    if !digits.is_empty() && digits.chars().all(|c| ('0'..='7').contains(&c)) {
        Ok(format!("0{}", digits.trim_start_matches('0')))
    } else {
        Err(format!("invalid mode {text:?}: want octal, e.g. 0440"))
    }
}

/// What a stack deploy does: networks, secrets and configs to create, services to create or
/// update, all checked before anything is changed.
#[derive(Debug)]
struct Plan {
    networks: Vec<NetworkSpec>,
    data: Vec<(DataKind, DataSpec)>,
    services: Vec<ServiceSpec>,
}

/// `service create`'s flags, parsed as `shoal service create` parses them.
#[derive(Debug, clap::Parser)]
#[command(no_binary_name = true)]
struct AsCreate {
    #[command(flatten)]
    args: crate::commands::service::CreateArgs,
}

/// The plan for deploying `text`, a compose file in `dir`, as `stack` (variables from `env`),
/// or what is wrong with the file.
fn plan(
    stack: &str,
    text: &str,
    dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Plan, String> {
    check_stack_name(stack)?;
    let compose = read_compose(text, env)?;
    let mut network_names = BTreeMap::new();
    let networks = plan_networks(stack, &compose, &mut network_names)?;
    let mut data_names = BTreeMap::new();
    let data = plan_data(stack, &compose, dir, &mut data_names)?;
    let declared = Declared {
        stack,
        dir,
        volumes: &compose.volumes,
        networks: &network_names,
        data: &data_names,
    };
    let services = compose
        .services
        .iter()
        .map(|(key, service)| service_spec(&declared, key, service))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Plan {
        networks,
        data,
        services,
    })
}

/// Refuses a stack name Docker would refuse.
fn check_stack_name(stack: &str) -> Result<(), String> {
    let name_ok = stack
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && stack
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !name_ok {
        return Err(format!(
            "invalid stack name {stack:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        ));
    }
    Ok(())
}

/// The compose file `text` read with its variables from `env`, its top level checked: no
/// unknown keys, version 3, volumes declared without options.
fn read_compose(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Compose, String> {
    let mut raw: Value =
        serde_norway::from_str(text).map_err(|e| format!("reading the compose file: {e}"))?;
    interpolate_all(&mut raw, env)?;
    let compose: Compose =
        serde_json::from_value(raw).map_err(|e| format!("reading the compose file: {e}"))?;
    refuse_unknown(&compose.rest, "compose file")?;
    if let Some(version) = &compose.version
        && !version.starts_with('3')
    {
        return Err(format!(
            "compose file version {version}: stack deploy takes version 3 files"
        ));
    }
    for (name, volume) in &compose.volumes {
        if volume
            .as_ref()
            .is_some_and(|v| !v.is_null() && v != &Value::Object(Default::default()))
        {
            return Err(format!(
                "volumes.{name}: Shoal does not support volume options (yet): declare it empty"
            ));
        }
    }
    Ok(compose)
}

/// `name` in `stack`: `<stack>_<name>`.
fn named(stack: &str, name: &str) -> String {
    format!("{stack}_{name}")
}

/// The labels that put an object in `stack`.
fn namespace(stack: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(NAMESPACE.to_owned(), stack.to_owned())])
}

/// Labels as compose writes them (a map, or a list of `key=value`) as a map.
fn label_map(values: &Option<MapOrList>) -> BTreeMap<String, String> {
    pairs(values)
        .into_iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (l, String::new()),
        })
        .collect()
}

/// The networks the stack creates: those the services use (and `default` for a service that
/// names none). `names` gets the full name of each network the services may name by its key.
fn plan_networks(
    stack: &str,
    compose: &Compose,
    names: &mut BTreeMap<String, String>,
) -> Result<Vec<NetworkSpec>, String> {
    let mut networks = Vec::new();
    let uses_default = compose.services.values().any(|s| s.networks.is_none());
    let mut declared: Vec<(String, Option<&ComposeNetwork>)> = compose
        .networks
        .iter()
        .map(|(k, v)| (k.clone(), v.as_ref()))
        .collect();
    if uses_default && !compose.networks.contains_key("default") {
        declared.push(("default".into(), None));
    }
    for (key, network) in declared {
        let Some(network) = network else {
            names.insert(key.clone(), named(stack, &key));
            networks.push(NetworkSpec {
                name: named(stack, &key),
                labels: namespace(stack),
                driver_configuration: Driver {
                    name: "overlay".into(),
                    options: BTreeMap::new(),
                },
                ..Default::default()
            });
            continue;
        };
        if network.external {
            names.insert(key.clone(), network.name.clone().unwrap_or(key));
            continue;
        }
        let spec = network_spec(stack, &key, network)?;
        names.insert(key.clone(), spec.name.clone());
        networks.push(spec);
    }
    Ok(networks)
}

/// The network the stack creates for `networks.<key>` (not external), or why it cannot.
fn network_spec(stack: &str, key: &str, network: &ComposeNetwork) -> Result<NetworkSpec, String> {
    let driver = network.driver.clone().unwrap_or_else(|| "overlay".into());
    if driver != "overlay" {
        return Err(format!(
            "networks.{key}: driver {driver:?} is not supported: Shoal's networks are overlay networks"
        ));
    }
    if network
        .ipam
        .as_ref()
        .and_then(|i| i.driver.as_ref())
        .is_some_and(|d| d != "default")
    {
        return Err(format!(
            "networks.{key}: only the default IPAM driver is supported"
        ));
    }
    let full = network.name.clone().unwrap_or_else(|| named(stack, key));
    let mut labels = label_map(&network.labels);
    labels.extend(namespace(stack));
    let ipam_configs = network
        .ipam
        .iter()
        .flat_map(|i| &i.config)
        .map(|c| {
            if let Some(other) = c
                .keys()
                .find(|k| !["subnet", "gateway"].contains(&k.as_str()))
            {
                return Err(format!(
                    "networks.{key}.ipam.config: Shoal does not support `{other}` (yet)"
                ));
            }
            Ok(IpamConfig {
                subnet: c.get("subnet").cloned().unwrap_or_default(),
                gateway: c.get("gateway").cloned().unwrap_or_default(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(NetworkSpec {
        name: full,
        labels,
        driver_configuration: Driver {
            name: driver,
            options: network
                .driver_opts
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_ref().map(ToString::to_string).unwrap_or_default(),
                    )
                })
                .collect(),
        },
        ingress: false,
        internal: network.internal,
        attachable: network.attachable,
        ipam_options: Ipam {
            configs: ipam_configs,
        },
    })
}

/// The secrets and configs the stack creates: a file's content becomes the object; external
/// ones must exist. `names` gets the full name of each, by its kind and key.
fn plan_data(
    stack: &str,
    compose: &Compose,
    dir: &Path,
    names: &mut BTreeMap<(DataKind, String), String>,
) -> Result<Vec<(DataKind, DataSpec)>, String> {
    let mut data = Vec::new();
    for (kind, declared) in [
        (DataKind::Secret, &compose.secrets),
        (DataKind::Config, &compose.configs),
    ] {
        for (key, item) in declared {
            let full = item.name.clone().unwrap_or_else(|| {
                if item.external {
                    key.clone()
                } else {
                    named(stack, key)
                }
            });
            names.insert((kind, key.clone()), full.clone());
            if item.external {
                continue;
            }
            let Some(file) = &item.file else {
                return Err(format!(
                    "{kind}s.{key}: a file is required (or external: true)"
                ));
            };
            let path = dir.join(file);
            let bytes = std::fs::read(&path)
                .map_err(|e| format!("{kind}s.{key}: reading {}: {e}", path.display()))?;
            if bytes.is_empty() || bytes.len() > kind.max_data() {
                return Err(format!(
                    "{kind}s.{key}: {kind} data must be larger than 0 and less than {} bytes",
                    kind.max_data()
                ));
            }
            let mut labels = label_map(&item.labels);
            labels.extend(namespace(stack));
            data.push((
                kind,
                DataSpec {
                    name: full,
                    labels,
                    data: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
                },
            ));
        }
    }
    Ok(data)
}

/// What a compose service's flags refer to: the stack, the file's directory, and the full
/// names of what the file declares.
#[derive(Debug)]
struct Declared<'a> {
    stack: &'a str,
    dir: &'a Path,
    volumes: &'a BTreeMap<String, Option<Value>>,
    networks: &'a BTreeMap<String, String>,
    data: &'a BTreeMap<(DataKind, String), String>,
}

/// Adds `--name value` to `argv`.
fn flag(argv: &mut Vec<String>, name: &str, value: String) {
    argv.push(format!("--{name}"));
    argv.push(value);
}

/// The spec of `services.<key>`: the `service create` flags it means, read as `shoal service
/// create` reads them.
fn service_spec(
    declared: &Declared<'_>,
    key: &str,
    service: &ComposeService,
) -> Result<ServiceSpec, String> {
    let stack = declared.stack;
    let at = format!("services.{key}");
    refuse_unknown(&service.rest, &at)?;
    let image = service
        .image
        .clone()
        .ok_or_else(|| format!("{at}: an image is required"))?;
    let mut argv: Vec<String> = vec!["--name".into(), named(stack, key), "--detach".into()];
    flag(&mut argv, "label", format!("{NAMESPACE}={stack}"));
    flag(
        &mut argv,
        "label",
        format!("com.docker.stack.image={image}"),
    );
    flag(&mut argv, "container-label", format!("{NAMESPACE}={stack}"));
    for l in pairs(&service.labels) {
        flag(&mut argv, "container-label", l);
    }
    for e in pairs(&service.environment) {
        flag(&mut argv, "env", e);
    }
    for port in &service.ports {
        flag(&mut argv, "publish", publish(port));
    }
    network_flags(declared, &at, service, &mut argv)?;
    data_flags(declared, &at, service, &mut argv)?;
    mount_flags(declared, &at, service, &mut argv)?;
    if let Some(user) = &service.user {
        flag(&mut argv, "user", user.to_string());
    }
    for (name, value) in [
        ("workdir", &service.working_dir),
        ("hostname", &service.hostname),
        ("stop-signal", &service.stop_signal),
        ("stop-grace-period", &service.stop_grace_period),
    ] {
        if let Some(value) = value {
            flag(&mut argv, name, value.clone());
        }
    }
    if service.read_only == Some(true) {
        argv.push("--read-only".into());
    }
    if service.init == Some(true) {
        argv.push("--init".into());
    }
    if let Some(health) = &service.healthcheck {
        healthcheck_flags(&at, health, &mut argv)?;
    }
    if let Some(deploy) = &service.deploy {
        deploy_flags(&at, deploy, &mut argv)?;
    }
    argv.push(image);
    if let Some(command) = &service.command {
        argv.push("--".into());
        argv.extend(words(command).map_err(|e| format!("{at}.command: {e}"))?);
    }
    let parsed = AsCreate::try_parse_from(&argv).map_err(|e| {
        let text = e.to_string();
        let first = text
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ");
        format!("{at}: {first}")
    })?;
    crate::commands::service::spec(parsed.args).map_err(|e| format!("{at}: {}", e.0))
}

/// A port as `--publish` takes it.
fn publish(port: &PortSpec) -> String {
    match port {
        PortSpec::Short(short) => short.to_string(),
        PortSpec::Long {
            target,
            published,
            protocol,
            mode,
        } => {
            let mut long = format!("target={target}");
            if let Some(p) = published {
                long += &format!(",published={p}");
            }
            if let Some(p) = protocol {
                long += &format!(",protocol={p}");
            }
            if let Some(m) = mode {
                long += &format!(",mode={m}");
            }
            long
        }
    }
}

/// A `--network` for each network the service at `at` attaches to (`default` when it names
/// none), or which one the file does not declare.
fn network_flags(
    declared: &Declared<'_>,
    at: &str,
    service: &ComposeService,
    argv: &mut Vec<String>,
) -> Result<(), String> {
    let attachments: Vec<(String, Vec<String>)> = match &service.networks {
        None => vec![("default".into(), Vec::new())],
        Some(ServiceNetworks::List(list)) => list.iter().map(|n| (n.clone(), Vec::new())).collect(),
        Some(ServiceNetworks::Map(map)) => map
            .iter()
            .map(|(n, o)| {
                (
                    n.clone(),
                    o.as_ref().map(|o| o.aliases.clone()).unwrap_or_default(),
                )
            })
            .collect(),
    };
    for (network, aliases) in attachments {
        let full = declared.networks.get(&network).ok_or_else(|| {
            format!("{at}: network {network} is not declared in the file's networks")
        })?;
        let mut value = format!("name={full}");
        for alias in aliases {
            value += &format!(",alias={alias}");
        }
        flag(argv, "network", value);
    }
    Ok(())
}

/// A `--secret` or `--config` for each secret and config the service at `at` uses, or which
/// one the file does not declare.
fn data_flags(
    declared: &Declared<'_>,
    at: &str,
    service: &ComposeService,
    argv: &mut Vec<String>,
) -> Result<(), String> {
    for (kind, refs) in [
        (DataKind::Secret, &service.secrets),
        (DataKind::Config, &service.configs),
    ] {
        for r in refs {
            let (source, target, uid, gid, file_mode) = match r {
                DataRef::Short(source) => (source, None, None, None, None),
                DataRef::Long {
                    source,
                    target,
                    uid,
                    gid,
                    mode,
                } => (
                    source,
                    target.clone(),
                    uid.as_ref(),
                    gid.as_ref(),
                    mode.as_ref(),
                ),
            };
            let full = declared.data.get(&(kind, source.clone())).ok_or_else(|| {
                format!("{at}: {kind} {source} is not declared in the file's {kind}s")
            })?;
            let target = target.unwrap_or_else(|| match kind {
                DataKind::Secret => source.clone(),
                DataKind::Config => format!("/{source}"),
            });
            let mut value = format!("source={full},target={target}");
            if let Some(uid) = uid {
                value += &format!(",uid={uid}");
            }
            if let Some(gid) = gid {
                value += &format!(",gid={gid}");
            }
            if let Some(m) = file_mode {
                value += &format!(",mode={}", mode(m).map_err(|e| format!("{at}: {e}"))?);
            }
            flag(argv, kind.name(), value);
        }
    }
    Ok(())
}

/// A `--mount` for each volume of the service at `at` (a relative bind source taken from the
/// file's directory), or what is wrong with it.
fn mount_flags(
    declared: &Declared<'_>,
    at: &str,
    service: &ComposeService,
    argv: &mut Vec<String>,
) -> Result<(), String> {
    for volume in &service.volumes {
        let (kind, source, target, read_only) = match volume {
            VolumeSpec::Short(short) => {
                let parts: Vec<&str> = short.split(':').collect();
                match parts[..] {
                    [source, target] => (None, source.to_owned(), target.to_owned(), false),
                    [source, target, "ro"] => (None, source.to_owned(), target.to_owned(), true),
                    [source, target, "rw"] => (None, source.to_owned(), target.to_owned(), false),
                    _ => {
                        return Err(format!(
                            "{at}: invalid volume {short:?}: want SOURCE:TARGET[:ro]"
                        ));
                    }
                }
            }
            VolumeSpec::Long {
                kind,
                source,
                target,
                read_only,
            } => (
                Some(kind.clone()),
                source.clone().unwrap_or_default(),
                target.clone(),
                *read_only,
            ),
        };
        let bind = source.starts_with('/') || source.starts_with('.');
        let kind = kind.unwrap_or_else(|| if bind { "bind".into() } else { "volume".into() });
        let source = match kind.as_str() {
            "bind" if !source.starts_with('/') => declared.dir.join(&source).display().to_string(),
            "volume" if !source.is_empty() => {
                if !declared.volumes.contains_key(&source) {
                    return Err(format!(
                        "{at}: volume {source} is not declared in the file's volumes"
                    ));
                }
                named(declared.stack, &source)
            }
            _ => source,
        };
        let mut value = format!("type={kind},target={target}");
        if !source.is_empty() {
            value += &format!(",source={source}");
        }
        if read_only {
            value += ",readonly";
        }
        flag(argv, "mount", value);
    }
    Ok(())
}

/// The `--health-*` flags (or `--no-healthcheck`) of the healthcheck of the service at `at`,
/// or what is wrong with its test.
fn healthcheck_flags(at: &str, health: &Healthcheck, argv: &mut Vec<String>) -> Result<(), String> {
    if health.disable {
        argv.push("--no-healthcheck".into());
    } else {
        match &health.test {
            Some(StringOrList::String(cmd)) => flag(argv, "health-cmd", cmd.clone()),
            Some(StringOrList::List(list)) => match list.split_first() {
                Some((first, rest)) if first == "CMD-SHELL" => {
                    flag(argv, "health-cmd", rest.join(" "))
                }
                Some((first, rest)) if first == "CMD" => flag(argv, "health-cmd", rest.join(" ")),
                Some((first, _)) if first == "NONE" => argv.push("--no-healthcheck".into()),
                _ => {
                    return Err(format!(
                        "{at}.healthcheck.test: want [\"CMD\", ...], [\"CMD-SHELL\", \"...\"] or a string"
                    ));
                }
            },
            None => {}
        }
        for (name, value) in [
            ("health-interval", &health.interval),
            ("health-timeout", &health.timeout),
            ("health-start-period", &health.start_period),
        ] {
            if let Some(value) = value {
                flag(argv, name, value.clone());
            }
        }
        if let Some(n) = health.retries {
            flag(argv, "health-retries", n.to_string());
        }
    }
    Ok(())
}

/// The flags of the `deploy` section of the service at `at`, or what is wrong with it.
fn deploy_flags(at: &str, deploy: &Deploy, argv: &mut Vec<String>) -> Result<(), String> {
    if let Some(mode) = &deploy.mode {
        flag(argv, "mode", mode.clone());
    }
    if let Some(n) = deploy.replicas {
        flag(argv, "replicas", n.to_string());
    }
    for l in pairs(&deploy.labels) {
        flag(argv, "label", l);
    }
    if let Some(mode) = &deploy.endpoint_mode {
        flag(argv, "endpoint-mode", mode.clone());
    }
    if let Some(placement) = &deploy.placement {
        for c in &placement.constraints {
            flag(argv, "constraint", c.clone());
        }
        for p in &placement.preferences {
            for (k, v) in p {
                flag(argv, "placement-pref", format!("{k}={v}"));
            }
        }
        if let Some(n) = placement.max_replicas_per_node {
            flag(argv, "replicas-max-per-node", n.to_string());
        }
    }
    if let Some(resources) = &deploy.resources {
        resource_flags(at, resources, argv)?;
    }
    if let Some(restart) = &deploy.restart_policy {
        if let Some(c) = &restart.condition {
            flag(argv, "restart-condition", c.clone());
        }
        if let Some(d) = &restart.delay {
            flag(argv, "restart-delay", d.clone());
        }
        if let Some(n) = restart.max_attempts {
            flag(argv, "restart-max-attempts", n.to_string());
        }
        if let Some(w) = &restart.window {
            flag(argv, "restart-window", w.clone());
        }
    }
    for (prefix, rolling) in [
        ("update", &deploy.update_config),
        ("rollback", &deploy.rollback_config),
    ] {
        if let Some(rolling) = rolling {
            rolling_flags(prefix, rolling, argv);
        }
    }
    Ok(())
}

/// The `--limit-*` and `--reserve-*` flags of `deploy.resources` of the service at `at`, or
/// what is wrong with them.
fn resource_flags(at: &str, resources: &Resources, argv: &mut Vec<String>) -> Result<(), String> {
    for (which, resource) in [
        ("limit", &resources.limits),
        ("reserve", &resources.reservations),
    ] {
        let Some(resource) = resource else { continue };
        if let Some(cpus) = &resource.cpus {
            flag(argv, &format!("{which}-cpu"), cpus.to_string());
        }
        if let Some(memory) = &resource.memory {
            flag(argv, &format!("{which}-memory"), memory.to_string());
        }
        if let Some(pids) = resource.pids {
            if which == "reserve" {
                return Err(format!(
                    "{at}.deploy.resources.reservations: pids is a limit only"
                ));
            }
            flag(argv, "limit-pids", pids.to_string());
        }
    }
    Ok(())
}

/// The `--<prefix>-*` flags of an `update_config` (`prefix` update) or `rollback_config`
/// (`prefix` rollback).
fn rolling_flags(prefix: &str, rolling: &Rolling, argv: &mut Vec<String>) {
    if let Some(n) = rolling.parallelism {
        flag(argv, &format!("{prefix}-parallelism"), n.to_string());
    }
    for (name, value) in [
        ("delay", &rolling.delay),
        ("failure-action", &rolling.failure_action),
        ("monitor", &rolling.monitor),
        ("order", &rolling.order),
    ] {
        if let Some(value) = value {
            flag(argv, &format!("{prefix}-{name}"), value.clone());
        }
    }
    if let Some(r) = &rolling.max_failure_ratio {
        flag(argv, &format!("{prefix}-max-failure-ratio"), r.to_string());
    }
}

/// The stack's objects of one kind: those labelled with its namespace.
fn in_stack(labels: &BTreeMap<String, String>, stack: &str) -> bool {
    labels.get(NAMESPACE).is_some_and(|s| s == stack)
}

async fn services(host: &DaemonHost) -> Result<Vec<Service>, Failure> {
    Ok(serde_json::from_value(
        call(host, ServiceCall::List).await?,
    )?)
}

async fn deploy(host: &DaemonHost, file: &Path, stack: &str, prune: bool) -> Result<(), Failure> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure(format!("reading {}: {e}", file.display())))?;
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let plan = plan(stack, &text, dir, &|name| std::env::var(name).ok()).map_err(Failure)?;

    let networks: Vec<Network> = serde_json::from_value(call(host, NetworkCall::List).await?)?;
    for spec in plan.networks {
        if networks.iter().any(|n| n.spec.name == spec.name) {
            continue;
        }
        println!("Creating network {}", spec.name);
        call(host, NetworkCall::Create(spec)).await?;
    }
    for (kind, spec) in plan.data {
        let existing: Vec<DataObject> =
            serde_json::from_value(call(host, DataCall::List { kind }).await?)?;
        if let Some(current) = existing.iter().find(|o| o.spec.name == spec.name) {
            if kind == DataKind::Config && current.spec.data != spec.data {
                return Err(Failure(format!(
                    "config {} exists with other data: only labels change after creation (remove it, or give the new data a new name)",
                    spec.name
                )));
            }
            // A secret's data is never read back: it is left as it is.
            continue;
        }
        println!("Creating {kind} {}", spec.name);
        call(host, DataCall::Create { kind, spec }).await?;
    }
    let current = services(host).await?;
    let wanted: Vec<String> = plan.services.iter().map(|s| s.name.clone()).collect();
    for spec in plan.services {
        match current.iter().find(|s| s.spec.name == spec.name) {
            Some(existing) => {
                println!("Updating service {} (id: {})", spec.name, existing.id);
                call(
                    host,
                    ServiceCall::Update {
                        id: existing.id.clone(),
                        version: existing.version.index,
                        spec: Box::new(spec),
                    },
                )
                .await?;
            }
            None => {
                println!("Creating service {}", spec.name);
                call(host, ServiceCall::Create(Box::new(spec))).await?;
            }
        }
    }
    if prune {
        let doomed: Vec<&Service> = current
            .iter()
            .filter(|s| in_stack(&s.spec.labels, stack) && !wanted.contains(&s.spec.name))
            .collect();
        for s in doomed {
            println!("Removing service {}", s.spec.name);
            call(
                host,
                ServiceCall::Remove {
                    ids: vec![s.id.clone()],
                },
            )
            .await?;
        }
    }
    Ok(())
}

async fn remove(host: &DaemonHost, stack: &str) -> Result<(), Failure> {
    let doomed: Vec<Service> = services(host)
        .await?
        .into_iter()
        .filter(|s| in_stack(&s.spec.labels, stack))
        .collect();
    let networks: Vec<Network> = serde_json::from_value(call(host, NetworkCall::List).await?)?;
    let networks: Vec<Network> = networks
        .into_iter()
        .filter(|n| in_stack(&n.spec.labels, stack))
        .collect();
    let mut data = Vec::new();
    for kind in [DataKind::Secret, DataKind::Config] {
        let all: Vec<DataObject> =
            serde_json::from_value(call(host, DataCall::List { kind }).await?)?;
        data.extend(
            all.into_iter()
                .filter(|o| in_stack(&o.spec.labels, stack))
                .map(|o| (kind, o)),
        );
    }
    if doomed.is_empty() && networks.is_empty() && data.is_empty() {
        return Err(Failure(format!("Nothing found in stack: {stack}")));
    }
    for s in &doomed {
        println!("Removing service {}", s.spec.name);
    }
    if !doomed.is_empty() {
        call(
            host,
            ServiceCall::Remove {
                ids: doomed.iter().map(|s| s.id.clone()).collect(),
            },
        )
        .await?;
    }
    for (kind, object) in &data {
        println!("Removing {kind} {}", object.spec.name);
        call(
            host,
            DataCall::Remove {
                kind: *kind,
                ids: vec![object.id.clone()],
            },
        )
        .await?;
    }
    for network in &networks {
        println!("Removing network {}", network.spec.name);
        call(
            host,
            NetworkCall::Remove {
                ids: vec![network.id.clone()],
            },
        )
        .await?;
    }
    Ok(())
}

/// One `stack ls` row.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct Row {
    name: String,
    services: usize,
    orchestrator: &'static str,
}

pub(crate) async fn run(host: &DaemonHost, command: Command) -> Result<(), Failure> {
    match command {
        Command::Deploy {
            compose_file,
            prune,
            stack,
        } => deploy(host, &compose_file, &stack, prune).await?,
        Command::Ls { format } => {
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for s in services(host).await? {
                if let Some(stack) = s.spec.labels.get(NAMESPACE) {
                    *counts.entry(stack.clone()).or_default() += 1;
                }
            }
            let rows: Vec<Row> = counts
                .into_iter()
                .map(|(name, services)| Row {
                    name,
                    services,
                    orchestrator: "Swarm",
                })
                .collect();
            if crate::output::print_rows(format.as_ref(), &rows)? {
                return Ok(());
            }
            let cells: Vec<[String; 3]> = rows
                .iter()
                .map(|r| {
                    [
                        r.name.clone(),
                        r.services.to_string(),
                        r.orchestrator.into(),
                    ]
                })
                .collect();
            print!(
                "{}",
                crate::output::table(["NAME", "SERVICES", "ORCHESTRATOR"], &cells)
            );
        }
        Command::Services {
            quiet,
            format,
            stack,
        } => {
            let found: Vec<Service> = services(host)
                .await?
                .into_iter()
                .filter(|s| in_stack(&s.spec.labels, &stack))
                .collect();
            if found.is_empty() {
                return Err(Failure(format!("Nothing found in stack: {stack}")));
            }
            crate::commands::service::print_services(host, &found, quiet, format.as_ref()).await?;
        }
        Command::Ps {
            quiet,
            format,
            no_trunc,
            stack,
        } => {
            let found: Vec<String> = services(host)
                .await?
                .into_iter()
                .filter(|s| in_stack(&s.spec.labels, &stack))
                .map(|s| s.id)
                .collect();
            if found.is_empty() {
                return Err(Failure(format!("Nothing found in stack: {stack}")));
            }
            crate::commands::service::print_tasks(
                host,
                TaskFilter {
                    services: found,
                    nodes: Vec::new(),
                },
                &[],
                crate::commands::service::Listing {
                    quiet,
                    format,
                    no_trunc,
                },
            )
            .await?;
        }
        Command::Rm { stacks } => {
            for stack in stacks {
                remove(host, &stack).await?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TAG" => Some("2".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn variables_interpolate_as_compose_does() {
        assert_eq!(interpolate("web:${TAG}", &env).unwrap(), "web:2");
        assert_eq!(interpolate("$TAG-$$HOME", &env).unwrap(), "2-$HOME");
        assert_eq!(
            interpolate("${NOPE:-x} ${EMPTY:-y} ${EMPTY-z}", &env).unwrap(),
            "x y "
        );
        assert!(interpolate("${TAG", &env).is_err());
    }

    #[test]
    fn commands_split_as_a_shell_would() {
        let split = |s: &str| words(&StringOrList::String(s.into())).unwrap();
        assert_eq!(split("sh -c 'echo a b'"), ["sh", "-c", "echo a b"]);
        assert_eq!(split(r#"a "b \" c" d\ e"#), ["a", "b \" c", "d e"]);
        assert!(words(&StringOrList::String("a 'b".into())).is_err());
    }

    const FILE: &str = r#"
version: "3.8"
services:
  web:
    image: nginx:${TAG}
    command: ["serve", "--port", "80"]
    ports: ["8080:80", {target: 53, published: 5353, protocol: udp}]
    networks: {front: {aliases: [www]}}
    environment: {MODE: fast}
    secrets: [token, {source: cert, target: tls.pem, mode: 0400, uid: "1000"}]
    configs: [app]
    deploy:
      replicas: 3
      labels: {tier: web}
      placement: {constraints: [node.role==worker], preferences: [{spread: node.labels.zone}]}
      resources: {limits: {cpus: '0.5', memory: 64M}, reservations: {memory: 32M}}
      restart_policy: {condition: on-failure, delay: 5s, max_attempts: 3}
      update_config: {parallelism: 2, delay: 10s, order: start-first}
  api:
    image: api
networks:
  front:
    driver: overlay
    driver_opts: {encrypted: ""}
secrets:
  token: {file: ./token.txt}
  cert: {external: true}
configs:
  app: {file: ./app.conf}
"#;

    #[test]
    fn a_compose_file_becomes_the_specs_service_create_would_send() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token.txt"), "t0k3n").unwrap();
        std::fs::write(dir.path().join("app.conf"), "a=1").unwrap();
        let plan = plan("shop", FILE, dir.path(), &env).unwrap();
        let names: Vec<&str> = plan.networks.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["shop_front", "shop_default"]);
        assert_eq!(
            plan.networks[0].driver_configuration.options["encrypted"],
            ""
        );
        assert_eq!(plan.networks[0].labels[NAMESPACE], "shop");
        let data: Vec<(DataKind, &str)> = plan
            .data
            .iter()
            .map(|(k, s)| (*k, s.name.as_str()))
            .collect();
        assert_eq!(
            data,
            [
                (DataKind::Secret, "shop_token"),
                (DataKind::Config, "shop_app")
            ]
        );

        let web = plan.services.iter().find(|s| s.name == "shop_web").unwrap();
        assert_eq!(web.labels[NAMESPACE], "shop");
        assert_eq!(web.labels["tier"], "web");
        assert_eq!(web.replicas(), Some(3));
        let c = &web.task_template.container_spec;
        assert_eq!(c.image, "nginx:2");
        assert_eq!(c.command, ["serve"]);
        assert_eq!(c.args, ["--port", "80"]);
        assert_eq!(c.env, ["MODE=fast"]);
        assert_eq!(c.labels[NAMESPACE], "shop");
        assert_eq!(c.secrets[0].secret_name, "shop_token");
        assert_eq!(c.secrets[0].file.name, "token");
        assert_eq!(c.secrets[1].secret_name, "cert");
        assert_eq!(
            (c.secrets[1].file.mode, c.secrets[1].file.uid.as_str()),
            (0o400, "1000")
        );
        assert_eq!(c.configs[0].file.name, "/app");
        assert_eq!(web.endpoint_spec.ports.len(), 2);
        assert_eq!(web.task_template.networks[0].target, "shop_front");
        assert_eq!(web.task_template.networks[0].aliases, ["www"]);
        assert_eq!(
            web.task_template.placement.constraints,
            ["node.role==worker"]
        );
        assert_eq!(web.task_template.resources.limits.nano_cpus, 500_000_000);
        assert_eq!(web.task_template.resources.limits.memory_bytes, 64 << 20);
        assert_eq!(web.update_config.as_ref().unwrap().parallelism, 2);
        let api = plan.services.iter().find(|s| s.name == "shop_api").unwrap();
        assert_eq!(api.task_template.networks[0].target, "shop_default");
    }

    #[test]
    fn what_shoal_does_not_take_is_refused_by_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let refused = |text: &str| plan("s", text, dir.path(), &env).unwrap_err();
        let e = refused("services:\n  web:\n    image: x\n    privileged: true\n");
        assert_eq!(e, "services.web: Shoal does not support `privileged` (yet)");
        let e = refused("services:\n  web:\n    image: x\n    deploy: {replicas: 1, rolling: 2}\n");
        assert!(e.contains("unknown field `rolling`"), "{e}");
        let e = refused("services:\n  web:\n    image: x\n    networks: [back]\n");
        assert!(e.contains("network back is not declared"), "{e}");
        let e = refused(
            "services:\n  web:\n    image: x\n    deploy: {resources: {limits: {cpus: lots}}}\n",
        );
        assert!(e.starts_with("services.web: "), "{e}");
        let e = refused("services:\n  web:\n    image: x\n    secrets: [nope]\n");
        assert!(e.contains("secret nope is not declared"), "{e}");
        let e = refused("version: '2'\nservices: {}\n");
        assert!(e.contains("version 3"), "{e}");
        let ok = plan(
            "s",
            "x-common: &c {}\nservices:\n  web:\n    image: x\n    x-note: 1\n",
            dir.path(),
            &env,
        );
        assert!(ok.is_ok(), "{ok:?}");
        assert!(plan("bad name", "services: {}", dir.path(), &env).is_err());
    }
}
