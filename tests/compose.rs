//! docker-compose.yml, the Dockerfile and config/compose/, checked without a
//! Docker engine:
//!
//! - docker-compose.yml is valid against the Compose specification's JSON
//!   schema (tests/schemas/compose-spec.json, kept equal to
//!   ../shared/compose-spec.json), and the schema check rejects broken files;
//! - every command of a service that runs our image, the image's default
//!   command and every health check parse with the real CLI and load their
//!   configuration (`otp-pipeline <args> --check`, container paths mapped to
//!   the repository through the service's bind mounts and the Dockerfile's
//!   COPY);
//! - every file a service mounts or the Dockerfile copies exists, and the
//!   build context does not exclude what the Dockerfile copies;
//! - the Dockerfile is multi-stage and its final stage runs as a non-root user;
//! - the wiring: published ports, health checks and EXPOSE match the listen
//!   ports of the configuration; every URL between containers (broker, carrier
//!   base URLs, receipt callbacks, Prometheus targets, Grafana's datasource)
//!   names a service and a port it listens on, with matching secrets.

use otp_fake_carrier::FakeCarrierConfig;
use otp_pipeline::config::Secret;
use otp_pipeline::config::{Config, RouteEntry};
use reqwest::Url;
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

const BINARY: &str = env!("CARGO_BIN_EXE_otp-pipeline");

/// The fake carrier's binary: a tool crate of this workspace, built beside
/// this test by `cargo test --workspace` (what `scripts/test` runs).
fn fake_carrier_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().and_then(Path::parent).unwrap().join("otp-fake-carrier");
    assert!(path.exists(), "{} is missing: run `cargo build -p otp-fake-carrier` (scripts/test does)", path.display());
    path
}

/// The Dockerfile stage of the fake carrier's image (tools stay out of the product's).
const FAKE_CARRIER_TARGET: &str = "fake-carrier";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml_to_json(path: &Path) -> Value {
    let mut yaml: serde_norway::Value =
        serde_norway::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    yaml.apply_merge().unwrap_or_else(|e| panic!("{}: merge keys: {e}", path.display()));
    serde_json::to_value(yaml).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// docker-compose.yml as JSON, with its YAML merge keys (`<<:`) applied as Compose does.
fn compose_file() -> Value {
    yaml_to_json(&root().join("docker-compose.yml"))
}

/// The committed Compose schema, which must equal `../shared/compose-spec.json` where that exists.
fn compose_schema() -> Value {
    let committed = read(&root().join("tests/schemas/compose-spec.json"));
    let shared = root().join("../shared/compose-spec.json");
    if shared.exists() {
        assert!(
            read(&shared) == committed,
            "tests/schemas/compose-spec.json differs from {}: copy it again",
            shared.display()
        );
    }
    serde_json::from_str(&committed).expect("the Compose schema is JSON")
}

/// Every schema violation of `doc`, one line each.
fn schema_errors(doc: &Value) -> Vec<String> {
    let schema = compose_schema();
    assert_eq!(
        schema["$schema"], "https://json-schema.org/draft-07/schema",
        "the Compose schema changed its draft: build the validator for the new one"
    );
    let validator = jsonschema::draft7::new(&schema).expect("the Compose schema compiles");
    validator.iter_errors(doc).map(|e| format!("at {:?}: {e}", e.instance_path().as_str())).collect()
}

fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::Null => Vec::new(),
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        Value::Array(items) => items.iter().map(|v| v.as_str().expect("a list of strings").to_owned()).collect(),
        other => panic!("expected a string or a list of strings, got {other}"),
    }
}

/// A service's `environment` (mapping or `KEY=VALUE` list).
fn environment(service: &Value) -> Vec<(String, String)> {
    let scalar = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    match &service["environment"] {
        Value::Null => Vec::new(),
        Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), scalar(v))).collect(),
        Value::Array(items) => items
            .iter()
            .map(|item| {
                let (k, v) = item.as_str().and_then(|s| s.split_once('=')).expect("KEY=VALUE");
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        other => panic!("environment: {other}"),
    }
}

/// Every mount in a service's `volumes` (short or long syntax), as (source, target).
fn mounts(service: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for volume in service["volumes"].as_array().into_iter().flatten() {
        out.push(match volume {
            Value::String(s) => {
                let mut parts = s.split(':');
                (parts.next().unwrap().to_owned(), parts.next().unwrap_or_default().to_owned())
            }
            Value::Object(o) => {
                (o["source"].as_str().unwrap_or_default().to_owned(), o["target"].as_str().unwrap().to_owned())
            }
            other => panic!("volume {other}"),
        });
    }
    out
}

fn is_bind(source: &str) -> bool {
    source.starts_with('.') || source.starts_with('/')
}

/// Bind mounts as (repository path, container path).
fn binds(service: &Value) -> Vec<(PathBuf, String)> {
    mounts(service)
        .into_iter()
        .filter(|(s, _)| is_bind(s))
        .map(|(s, t)| (root().join(s.trim_start_matches("./")), t))
        .collect()
}

/// Named volumes a service mounts.
fn named_volumes(service: &Value) -> Vec<String> {
    mounts(service).into_iter().map(|(s, _)| s).filter(|s| !s.is_empty() && !is_bind(s)).collect()
}

/// The container side of `ports` (`[ip:][host:]container[/proto]`, a number, or `{target}`).
fn container_ports(service: &Value) -> BTreeSet<u16> {
    let mut out = BTreeSet::new();
    for port in
        service["ports"].as_array().into_iter().flatten().chain(service["expose"].as_array().into_iter().flatten())
    {
        let parsed = match port {
            Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
            Value::String(s) => s.split('/').next().unwrap().rsplit(':').next().unwrap().parse().ok(),
            Value::Object(o) => o["target"].as_u64().and_then(|n| u16::try_from(n).ok()),
            _ => None,
        };
        out.insert(parsed.unwrap_or_else(|| panic!("unsupported port {port}")));
    }
    out
}

/// A Dockerfile as stages of (INSTRUCTION, arguments), continuation lines joined, comments dropped.
fn dockerfile() -> Vec<Vec<(String, String)>> {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in read(&root().join("Dockerfile")).lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    assert!(current.is_empty(), "Dockerfile ends inside a continued line");
    let mut stages: Vec<Vec<(String, String)>> = Vec::new();
    for instruction in logical {
        let (keyword, args) = instruction.split_once(char::is_whitespace).unwrap_or((&instruction, ""));
        let keyword = keyword.to_uppercase();
        if keyword == "FROM" {
            stages.push(Vec::new());
        }
        stages.last_mut().expect("the Dockerfile starts with FROM").push((keyword, args.trim().to_owned()));
    }
    stages
}

/// A COPY of the build context: (sources, destination); `None` for `COPY --from=…`.
fn context_copy(args: &str) -> Option<(Vec<String>, String)> {
    assert!(!args.starts_with('['), "COPY in JSON form is not parsed here: {args}");
    let words: Vec<&str> = args.split_whitespace().collect();
    if words.iter().any(|w| w.starts_with("--from")) {
        return None;
    }
    let mut paths: Vec<String> = words.iter().filter(|w| !w.starts_with("--")).map(|w| w.to_string()).collect();
    let destination = paths.pop().expect("COPY needs a destination");
    assert!(!paths.is_empty(), "COPY without sources: {args}");
    Some((paths, destination))
}

fn json_array(args: &str, what: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("{what} must be in JSON (exec) form: {args}: {e}"))
}

/// What the image holds: its final-stage COPYs of the context as (repository
/// path, container path), its default command, its EXPOSEd ports.
struct Image {
    copies: Vec<(PathBuf, String)>,
    cmd: Vec<String>,
    exposed: BTreeSet<u16>,
}

fn image() -> Image {
    let stages = dockerfile();
    image_from(stages.last().unwrap())
}

/// The image of the stage named `target` (`FROM … AS target`).
fn image_of_stage(target: &str) -> Image {
    let stages = dockerfile();
    let stage = stages.iter().find(|s| stage_name(s) == Some(target));
    image_from(stage.unwrap_or_else(|| panic!("the Dockerfile has no stage {target}")))
}

/// A stage's name: the `AS` of its `FROM`.
fn stage_name(stage: &[(String, String)]) -> Option<&str> {
    let words: Vec<&str> = stage[0].1.split_whitespace().collect();
    (words.len() == 3 && words[1].eq_ignore_ascii_case("as")).then(|| words[2])
}

fn image_from(last: &[(String, String)]) -> Image {
    let mut copies = Vec::new();
    for (keyword, args) in last {
        if keyword != "COPY" {
            continue;
        }
        let Some((sources, destination)) = context_copy(args) else { continue };
        for source in sources {
            let path = root().join(&source);
            let target = if path.is_file() && destination.ends_with('/') {
                format!("{destination}{}", path.file_name().unwrap().to_str().unwrap())
            } else {
                destination.clone()
            };
            copies.push((path, target));
        }
    }
    let find = |kw: &str| last.iter().rev().find(|(k, _)| k == kw).map(|(_, a)| a.clone());
    let cmd = find("CMD").map(|a| json_array(&a, "CMD")).unwrap_or_default();
    let exposed = last
        .iter()
        .filter(|(k, _)| k == "EXPOSE")
        .flat_map(|(_, a)| a.split_whitespace().map(|p| p.split('/').next().unwrap().parse::<u16>().unwrap()))
        .collect();
    Image { copies, cmd, exposed }
}

/// The repository path behind a container path, through `binds` (which hide
/// the image's files) and then the image's COPYs.
fn repo_path(container: &str, binds: &[(PathBuf, String)], copies: &[(PathBuf, String)]) -> Option<PathBuf> {
    binds.iter().chain(copies).find_map(|(source, target)| {
        let rest = Path::new(container).strip_prefix(target).ok()?;
        Some(if rest.as_os_str().is_empty() { source.clone() } else { source.join(rest) })
    })
}

/// The configuration `path` gives under `env` (and nothing of this process's
/// environment), through the binary's own loader. figment's Jail serializes
/// the environment changes; it also changes the working directory, so every
/// path in this file is absolute.
#[allow(clippy::result_large_err)] // figment's Jail API
fn load_config(path: Option<&Path>, env: &[(String, String)]) -> Config {
    let mut loaded = None;
    figment::Jail::expect_with(|jail| {
        jail.clear_env();
        for (key, value) in env {
            jail.set_env(key, value);
        }
        loaded = Some(Config::load(path).map_err(|e| e.to_string())?);
        Ok(())
    });
    loaded.unwrap()
}

/// A service that runs one of our images: the product's, or the fake carrier's.
struct Otp {
    /// Whether it runs the fake carrier's image (`otp-fake-carrier`, options only).
    fake_carrier: bool,
    name: String,
    /// Its command (the image's CMD if it has none), container paths as written.
    args: Vec<String>,
    env: Vec<(String, String)>,
    binds: Vec<(PathBuf, String)>,
    /// Its effective configuration.
    config: Config,
}

impl Otp {
    fn new(name: &str, service: &Value, image: &Image) -> Self {
        let mut args = strings(&service["command"]);
        if args.is_empty() {
            args = image.cmd.clone();
        }
        let fake_carrier = service["image"].as_str().is_some_and(|i| i.starts_with("otp-fake-carrier"));
        let mut otp = Self {
            fake_carrier,
            name: name.into(),
            args,
            env: environment(service),
            binds: binds(service),
            config: Config::default(),
        };
        let config_path =
            otp.option("--config").or(otp.env.iter().find(|(k, _)| k == "OTP_CONFIG").map(|(_, v)| v.clone()));
        let config_path = config_path.map(|p| otp.repo_path(&p, image));
        otp.config = load_config(config_path.as_deref(), &otp.env);
        otp
    }

    /// The subcommand: by convention the command's first word; `fake-carrier`
    /// for the fake carrier's image.
    fn role(&self) -> &str {
        if self.fake_carrier { "fake-carrier" } else { &self.args[0] }
    }

    /// The binary its image runs.
    fn binary(&self) -> PathBuf {
        if self.fake_carrier { fake_carrier_binary() } else { PathBuf::from(BINARY) }
    }

    fn option(&self, flag: &str) -> Option<String> {
        let mut words = self.args.iter();
        while let Some(word) = words.next() {
            if word == flag {
                return words.next().cloned();
            }
            if let Some(value) = word.strip_prefix(flag).and_then(|rest| rest.strip_prefix('=')) {
                return Some(value.to_owned());
            }
        }
        None
    }

    fn repo_path(&self, container: &str, image: &Image) -> PathBuf {
        repo_path(container, &self.binds, &image.copies).unwrap_or_else(|| {
            panic!("{}: {container} is neither bind-mounted from the repository nor copied into the image", self.name)
        })
    }

    /// Where it listens, if it serves HTTP.
    fn listen(&self) -> Option<SocketAddr> {
        match self.role() {
            "generator" | "all-in-one" => Some(self.config.http.listen),
            "sender" => Some(self.config.sender.listen),
            "fake-carrier" => {
                let listen = self.option("--listen").expect("fake-carrier needs --listen (its default is loopback)");
                Some(listen.parse().unwrap())
            }
            _ => None,
        }
    }

    fn routed_carriers(&self) -> BTreeSet<String> {
        let routing = &self.config.routing;
        routing
            .default
            .iter()
            .chain(routing.countries.values().flatten())
            .map(RouteEntry::carrier)
            .map(str::to_owned)
            .collect()
    }
}

/// The whole stack.
struct Stack {
    file: Value,
    image: Image,
    fake_image: Image,
    otp: Vec<Otp>,
}

impl Stack {
    fn load() -> Self {
        let file = compose_file();
        let image = image();
        let fake_image = image_of_stage(FAKE_CARRIER_TARGET);
        let otp = Self::services_of(&file)
            .iter()
            .filter(|(_, s)| s.get("build").is_some() || s["image"].as_str().is_some_and(|i| i.starts_with("otp-")))
            .map(|(name, service)| {
                let fake = service["image"].as_str().is_some_and(|i| i.starts_with("otp-fake-carrier"));
                Otp::new(name, service, if fake { &fake_image } else { &image })
            })
            .collect();
        Self { file, image, fake_image, otp }
    }

    /// The image `otp` runs.
    fn image_for(&self, otp: &Otp) -> &Image {
        if otp.fake_carrier { &self.fake_image } else { &self.image }
    }

    fn services_of(file: &Value) -> &Map<String, Value> {
        file["services"].as_object().expect("docker-compose.yml has services")
    }

    fn services(&self) -> &Map<String, Value> {
        Self::services_of(&self.file)
    }

    fn service(&self, name: &str) -> &Value {
        self.services().get(name).unwrap_or_else(|| panic!("no service {name}"))
    }

    fn with_role(&self, role: &str) -> Vec<&Otp> {
        self.otp.iter().filter(|o| o.role() == role).collect()
    }

    /// The ports a service listens on: its configuration's for ours, else its published and exposed ones.
    fn ports(&self, name: &str) -> BTreeSet<u16> {
        match self.otp.iter().find(|o| o.name == name) {
            Some(otp) => otp.listen().map(|a| a.port()).into_iter().collect(),
            None => container_ports(self.service(name)),
        }
    }

    /// Asserts `url` names a service and a port it listens on; returns the service's name.
    fn reaches(&self, url: &str, what: &str) -> String {
        let parsed = Url::parse(url).unwrap_or_else(|e| panic!("{what}: {url}: {e}"));
        let host = parsed.host_str().unwrap_or_default().to_owned();
        let port = parsed.port_or_known_default().or(if parsed.scheme() == "amqp" { Some(5672) } else { None });
        assert!(self.services().contains_key(&host), "{what}: {url} does not name a compose service");
        let ports = self.ports(&host);
        assert!(port.is_some_and(|p| ports.contains(&p)), "{what}: {url}: {host} listens on {ports:?}");
        host
    }
}

fn query(url: &str, key: &str) -> Option<String> {
    Url::parse(url).ok()?.query_pairs().find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
}

/// Runs `otp-pipeline <args> --check` with exactly `env`, container paths mapped to the repository.
fn check_cli(what: &str, args: &[String], env: &[(String, String)], map: impl Fn(&str) -> PathBuf) {
    check_cli_of(Path::new(BINARY), what, args, env, map)
}

/// Like [`check_cli`], for `binary`.
fn check_cli_of(binary: &Path, what: &str, args: &[String], env: &[(String, String)], map: impl Fn(&str) -> PathBuf) {
    let mapped: Vec<String> = args
        .iter()
        .map(|arg| {
            if arg.starts_with('/') {
                return map(arg).to_str().unwrap().to_owned();
            }
            match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") && value.starts_with('/') => {
                    format!("{flag}={}", map(value).display())
                }
                _ => arg.clone(),
            }
        })
        .collect();
    let output = Command::new(binary)
        .args(&mapped)
        .arg("--check")
        .env_clear()
        .envs(env.iter().cloned())
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{what}: `{} {}` does not pass --check (ran as `{}`):\n{}{}",
        binary.file_name().unwrap().to_string_lossy(),
        args.join(" "),
        mapped.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn compose_file_matches_the_compose_specification() {
    let errors = schema_errors(&compose_file());
    assert!(errors.is_empty(), "docker-compose.yml is not valid Compose:\n{}", errors.join("\n"));
}

#[test]
fn the_schema_check_rejects_broken_files() {
    let good = compose_file();
    // (what, the mapping to change, key, new value)
    let breakages = [
        ("ports: 5", "/services/generator", "ports", json!(5)),
        ("an unknown top-level key", "", "servicez", json!({})),
        ("an unknown service key", "/services/generator", "comand", json!(["generator"])),
        ("a healthcheck test that is a number", "/services/rabbitmq/healthcheck", "test", json!(1)),
    ];
    for (what, mapping, key, value) in breakages {
        let mut doc = good.clone();
        doc.pointer_mut(mapping).and_then(Value::as_object_mut).unwrap().insert(key.into(), value);
        assert!(!schema_errors(&doc).is_empty(), "the schema check accepts {what}");
    }
}

#[test]
fn every_command_of_our_image_passes_the_cli_and_loads_its_configuration() {
    let stack = Stack::load();
    let roles: BTreeSet<&str> = stack.otp.iter().map(Otp::role).collect();
    for role in ["generator", "sender", "fake-carrier"] {
        assert!(roles.contains(role), "no service runs `otp-pipeline {role}` (services: {roles:?})");
    }
    for otp in &stack.otp {
        assert!(
            otp.fake_carrier || !otp.role().starts_with('-'),
            "{}: the command starts with its subcommand, then options",
            otp.name
        );
        let entrypoint = &stack.service(&otp.name)["entrypoint"];
        assert!(entrypoint.is_null(), "{}: keeps the image's ENTRYPOINT, not {entrypoint}", otp.name);
        let image = stack.image_for(otp);
        check_cli_of(&otp.binary(), &otp.name, &otp.args, &otp.env, |p| otp.repo_path(p, image));
    }
    // The image's default command, with only what the image holds.
    let image = &stack.image;
    let copied = |p: &str| repo_path(p, &[], &image.copies).unwrap_or_else(|| panic!("CMD: {p} is not in the image"));
    check_cli("the Dockerfile's CMD", &image.cmd, &[], copied);
}

#[test]
fn compose_configuration_files_load_through_the_binarys_loader() {
    let dir = root().join("config/compose");
    let mut loaded = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            load_config(Some(&path), &[]);
            loaded += 1;
        }
    }
    assert!(loaded >= 2, "config/compose/ holds the generator's and the senders' configuration");
}

#[test]
fn everything_mounted_or_copied_exists_and_is_in_the_build_context() {
    let stack = Stack::load();
    let declared: BTreeSet<&String> = stack.file["volumes"].as_object().map(|v| v.keys().collect()).unwrap_or_default();
    for (name, service) in stack.services() {
        for (source, target) in binds(service) {
            assert!(source.exists(), "{name}: bind mount {} → {target} does not exist", source.display());
        }
        for volume in named_volumes(service) {
            assert!(declared.contains(&volume), "{name}: volume {volume} is not declared under the top-level volumes");
        }
        if let Some(build) = service.get("build") {
            let context = build.as_str().or(build["context"].as_str()).unwrap_or(".");
            let dockerfile = build["dockerfile"].as_str().unwrap_or("Dockerfile");
            assert_eq!(
                root().join(context).join(dockerfile).canonicalize().unwrap(),
                root().join("Dockerfile").canonicalize().unwrap(),
                "{name}: builds from something else than the repository's Dockerfile"
            );
            if let Some(target) = build["target"].as_str() {
                assert_eq!(target, FAKE_CARRIER_TARGET, "{name}: builds an unknown target");
            }
        }
    }
    for section in ["configs", "secrets"] {
        for (name, entry) in stack.file[section].as_object().into_iter().flatten() {
            if let Some(file) = entry["file"].as_str() {
                assert!(root().join(file).exists(), "{section}.{name}: {file} does not exist");
            }
        }
    }

    let ignored: Vec<String> = read(&root().join(".dockerignore"))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_matches('/').to_owned())
        .collect();
    for pattern in &ignored {
        let plain = pattern.strip_prefix('*').unwrap_or(pattern);
        assert!(
            !pattern.starts_with('!') && !plain.contains(['*', '?', '[']),
            ".dockerignore: {pattern}: only paths and `*suffix` are checked here"
        );
    }
    let excluded = |source: &str| {
        let source = source.trim_start_matches("./").trim_end_matches('/');
        ignored.iter().find(|p| match p.strip_prefix('*') {
            Some(suffix) => !source.contains('/') && source.ends_with(suffix),
            None => source == *p || source.starts_with(&format!("{p}/")) || p.starts_with(&format!("{source}/")),
        })
    };
    // What the stage running `cargo build` copies.
    let mut copied = Vec::new();
    for stage in dockerfile() {
        let builds = stage.iter().any(|(k, a)| k == "RUN" && a.contains("cargo build"));
        for (keyword, args) in &stage {
            let Some((sources, _)) = (keyword == "COPY").then(|| context_copy(args)).flatten() else { continue };
            for source in sources {
                assert!(root().join(&source).exists(), "Dockerfile: COPY {source}: no such file");
                assert!(
                    excluded(&source).is_none(),
                    "Dockerfile: COPY {source}, but .dockerignore excludes {:?}",
                    excluded(&source)
                );
                if builds {
                    copied.push(source.trim_end_matches('/').to_owned());
                }
            }
        }
    }

    // What the release build reads besides the copied sources (include_str!,
    // include_bytes!) must be copied too. Test modules are not built there.
    let mut files: Vec<PathBuf> = Vec::new();
    let mut dirs = vec![root().join("src"), root().join("workers")];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    for file in files {
        let text = read(&file);
        let built = text.split("#[cfg(test)]").next().unwrap();
        for macro_call in ["include_str!(\"", "include_bytes!(\""] {
            for (at, _) in built.match_indices(macro_call) {
                let rest = &built[at + macro_call.len()..];
                let included = file.parent().unwrap().join(&rest[..rest.find('"').unwrap()]);
                let included = included.canonicalize().unwrap_or(included);
                assert!(
                    copied.iter().any(|c| included.starts_with(root().join(c))),
                    "{} includes {}, which the Dockerfile's builder does not copy",
                    file.display(),
                    included.display()
                );
            }
        }
    }
}

#[test]
fn the_dockerfile_builds_in_one_stage_and_runs_unprivileged_in_another() {
    let stages = dockerfile();
    assert!(stages.len() >= 2, "the Dockerfile is multi-stage ({} FROM)", stages.len());
    let builder_names: BTreeSet<String> =
        stages.iter().filter_map(|s| s[0].1.split_whitespace().nth(2).map(str::to_owned)).collect();
    assert!(
        stages
            .iter()
            .flatten()
            .any(|(k, a)| k == "RUN" && a.contains("cargo build --release --locked -p otp-pipeline --bin otp-pipeline")),
        "a stage runs `cargo build --release --locked -p otp-pipeline --bin otp-pipeline` (the product only)"
    );
    let fake = stages.iter().find(|s| stage_name(s) == Some(FAKE_CARRIER_TARGET)).expect("a fake-carrier stage");
    let fake_entry = fake.iter().rev().find(|(k, _)| k == "ENTRYPOINT").expect("ENTRYPOINT");
    assert_eq!(json_array(&fake_entry.1, "ENTRYPOINT"), ["otp-fake-carrier"]);
    // The product's stages (the last and what it copies from) build and carry no tool.
    let product = stages.last().unwrap();
    let from: Vec<&str> =
        product.iter().filter_map(|(_, a)| a.split_whitespace().find_map(|w| w.strip_prefix("--from="))).collect();
    let product_stages =
        stages.iter().filter(|s| std::ptr::eq(*s, product) || stage_name(s).is_some_and(|n| from.contains(&n)));
    let tool = |(_, a): &(String, String)| a.contains("otp-fake-carrier") || a.contains("otp-bench");
    assert!(!product_stages.flatten().any(tool), "the product image builds or carries no tool");
    let last = stages.last().unwrap();
    for (keyword, args) in last {
        if keyword == "COPY"
            && let Some(from) = args.split_whitespace().find_map(|w| w.strip_prefix("--from="))
        {
            assert!(builder_names.contains(from), "COPY --from={from}: no stage is named so ({builder_names:?})");
        }
    }
    let user =
        last.iter().rev().find(|(k, _)| k == "USER").map(|(_, a)| a.as_str()).expect("the final stage sets USER");
    let name = user.split(':').next().unwrap();
    assert!(!["root", "0", ""].contains(&name), "the final stage runs as {user}");
    let entrypoint = last.iter().rev().find(|(k, _)| k == "ENTRYPOINT").expect("ENTRYPOINT");
    assert_eq!(json_array(&entrypoint.1, "ENTRYPOINT"), ["otp-pipeline"]);
    assert!(
        last.iter().any(|(k, a)| k == "COPY" && a.ends_with(" /usr/local/bin/otp-pipeline")),
        "the binary is copied to /usr/local/bin/otp-pipeline (on PATH, for ENTRYPOINT and the health checks)"
    );
}

#[test]
fn ports_health_checks_and_dependencies_match_the_configuration() {
    let stack = Stack::load();
    for otp in &stack.otp {
        let service = stack.service(&otp.name);
        let Some(listen) = otp.listen() else { continue };
        assert!(listen.ip().is_unspecified(), "{}: listens on {listen}, unreachable from other containers", otp.name);
        let published = container_ports(service);
        assert!(
            published.iter().all(|p| *p == listen.port()),
            "{}: publishes container ports {published:?}, but listens on {listen}",
            otp.name
        );
        assert!(
            stack.image_for(otp).exposed.contains(&listen.port()),
            "{}: its Dockerfile does not EXPOSE {}",
            otp.name,
            listen.port()
        );

        let test = strings(&service["healthcheck"]["test"]);
        let probe = if otp.fake_carrier { ["otp-fake-carrier", "--probe"] } else { ["otp-pipeline", "probe"] };
        assert!(
            test.len() >= 4 && test[0] == "CMD" && test[1..3] == probe,
            "{}: health check is `{} URL` (got {test:?})",
            otp.name,
            probe.join(" ")
        );
        let url = Url::parse(&test[3]).unwrap();
        assert!(
            matches!(url.host_str(), Some("127.0.0.1" | "localhost")) && url.port() == Some(listen.port()),
            "{}: the health check probes {url}, the service listens on {listen}",
            otp.name
        );
        if otp.fake_carrier {
            continue; // `--probe` is the fake carrier's own, checked by its test.
        }
        assert_eq!(url.path(), "/readyz", "{}: the health check asks /readyz", otp.name);
        check_cli(&format!("{} health check", otp.name), &test[2..], &[], |p| PathBuf::from(p));
    }

    let healthy = |name: &str| {
        let check = &stack.service(name)["healthcheck"];
        check.is_object() && check["disable"] != true && !strings(&check["test"]).is_empty()
    };
    let rabbitmq: Vec<&String> = stack
        .services()
        .iter()
        .filter(|(_, s)| s["image"].as_str().is_some_and(|i| i.starts_with("rabbitmq:")))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(rabbitmq.len(), 1, "one RabbitMQ service");
    assert!(healthy(rabbitmq[0]), "{}: has a health check", rabbitmq[0]);
    let workers: Vec<&Otp> = stack.with_role("generator").into_iter().chain(stack.with_role("sender")).collect();
    assert!(stack.with_role("sender").len() >= 2, "at least two senders");
    for otp in &workers {
        assert!(healthy(&otp.name), "{}: has a health check", otp.name);
        assert_eq!(
            stack.service(&otp.name)["depends_on"][rabbitmq[0].as_str()]["condition"],
            "service_healthy",
            "{}: waits for a healthy RabbitMQ",
            otp.name
        );
    }
    for (name, service) in stack.services() {
        let depends_on = &service["depends_on"];
        let dependencies = match depends_on.as_object() {
            Some(map) => map.keys().cloned().collect(),
            None => strings(depends_on),
        };
        for dependency in dependencies {
            assert!(stack.services().contains_key(&dependency), "{name}: depends on a missing service {dependency}");
            if depends_on[&dependency]["condition"] == "service_healthy" {
                assert!(
                    healthy(&dependency),
                    "{name}: waits for {dependency} to be healthy, but it has no health check"
                );
            }
        }
    }
    let generator = stack.with_role("generator");
    assert_eq!(generator.len(), 1, "one generator (sled is single-process)");
    let data_dir = &generator[0].config.store.data_dir;
    assert!(
        mounts(stack.service(&generator[0].name)).iter().any(|(s, t)| !is_bind(s) && Path::new(t) == data_dir),
        "the generator's store.data_dir {} is a named volume",
        data_dir.display()
    );
}

#[test]
fn the_fake_carrier_service_runs_the_fake_carrier() {
    let stack = Stack::load();
    let fakes = stack.with_role("fake-carrier");
    assert_eq!(fakes.len(), 1);
    assert_eq!(stack.service(&fakes[0].name)["image"], "otp-fake-carrier:local", "its own image, not the product's");
    assert_eq!(fakes[0].option("--listen").as_deref(), Some("0.0.0.0:9099"));
}

#[test]
fn every_url_between_containers_reaches_a_service_with_matching_secrets() {
    let stack = Stack::load();
    let fake = &stack.with_role("fake-carrier")[0];
    let behaviour: FakeCarrierConfig = match fake.option("--behaviour") {
        Some(path) => {
            let path = fake.repo_path(&path, &stack.image);
            serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        }
        None => FakeCarrierConfig::default(),
    };
    behaviour.validate().unwrap();

    for otp in &stack.otp {
        if otp.role() == "fake-carrier" {
            continue;
        }
        let broker = stack.reaches(&otp.config.broker.url, &format!("{}: broker.url", otp.name));
        assert!(stack.service(&broker)["image"].as_str().unwrap().starts_with("rabbitmq:"), "{}: broker.url", otp.name);
    }
    for sender in stack.with_role("sender") {
        let me = (sender.name.as_str(), sender.config.sender.listen.port());
        let callback = |url: &str, path: &str, what: &str| {
            let parsed = Url::parse(url).unwrap();
            assert_eq!(
                (parsed.host_str().unwrap(), parsed.port().unwrap_or(80), parsed.path()),
                (me.0, me.1, path),
                "{}: {what} must call this sender back",
                sender.name
            );
        };
        let carriers = &sender.config.carriers;
        for carrier in sender.routed_carriers() {
            let what = format!("{}: carriers.{carrier}", sender.name);
            match carrier.as_str() {
                "twilio" => {
                    let twilio = carriers.twilio.as_ref().unwrap();
                    assert_eq!(stack.reaches(&twilio.base_url, &what), fake.name);
                    callback(twilio.status_callback.as_deref().unwrap(), "/receipts/twilio", "status_callback");
                    assert_eq!(
                        behaviour.twilio_auth_token.as_deref(),
                        Some(twilio.auth_token.expose()),
                        "{what}: the fake carrier signs status callbacks with another auth token"
                    );
                }
                "vonage" => {
                    let vonage = carriers.vonage.as_ref().unwrap();
                    assert_eq!(stack.reaches(&vonage.base_url, &what), fake.name);
                    let url = vonage.callback.as_deref().unwrap();
                    callback(url, "/receipts/vonage", "callback");
                    assert_eq!(
                        query(url, "token").as_deref(),
                        vonage.receipt_token.as_ref().map(Secret::expose),
                        "{what}: callback's token is receipt_token"
                    );
                }
                "msg91" => {
                    let msg91 = carriers.msg91.as_ref().unwrap();
                    assert_eq!(stack.reaches(&msg91.base_url, &what), fake.name);
                    let dlr = behaviour.msg91_dlr_url.as_deref().expect("the fake carrier's msg91_dlr_url is set");
                    let receiver = stack.reaches(dlr, "fake carrier: msg91_dlr_url");
                    assert!(stack.with_role("sender").iter().any(|s| s.name == receiver), "msg91_dlr_url: {dlr}");
                    assert_eq!(Url::parse(dlr).unwrap().path(), "/receipts/msg91");
                    assert_eq!(
                        query(dlr, "token"),
                        msg91.receipt_token.as_ref().map(Secret::expose).map(str::to_owned),
                        "{what}: msg91_dlr_url's token is receipt_token"
                    );
                }
                "webhook" => assert_eq!(stack.reaches(&carriers.webhook.url, &what), fake.name),
                "console" => {}
                other => panic!("{what}: unknown carrier {other}"),
            }
        }
    }
}

/// The repository path a bind mount of `service` puts at `container`.
fn bound(service: &Value, container: &str) -> Option<PathBuf> {
    repo_path(container, &binds(service), &[])
}

#[test]
fn prometheus_scrapes_every_worker_and_grafana_reads_prometheus() {
    let stack = Stack::load();
    let by_image = |prefix: &str| {
        let found = stack.services().iter().find(|(_, s)| s["image"].as_str().is_some_and(|i| i.starts_with(prefix)));
        found.unwrap_or_else(|| panic!("no service runs {prefix}"))
    };
    let (name, prometheus) = by_image("prom/prometheus:");
    let config = yaml_to_json(&bound(prometheus, "/etc/prometheus/prometheus.yml").expect("prometheus.yml is mounted"));
    for rule_file in strings(&config["rule_files"]) {
        let container = Path::new("/etc/prometheus").join(&rule_file);
        let mounted = bound(prometheus, container.to_str().unwrap());
        assert!(mounted.is_some_and(|p| p.exists()), "{name}: rule file {rule_file} is not mounted");
    }
    let mut targets = BTreeSet::new();
    for job in config["scrape_configs"].as_array().expect("scrape_configs") {
        for group in job["static_configs"].as_array().into_iter().flatten() {
            for target in strings(&group["targets"]) {
                stack.reaches(&format!("http://{target}"), &format!("prometheus.yml: job {}", job["job_name"]));
                targets.insert(target);
            }
        }
    }
    for otp in stack.with_role("generator").into_iter().chain(stack.with_role("sender")) {
        let target = format!("{}:{}", otp.name, otp.listen().unwrap().port());
        assert!(targets.contains(&target), "prometheus.yml does not scrape {target}");
    }

    let (name, grafana) = by_image("grafana/grafana:");
    let provisioning = bound(grafana, "/etc/grafana/provisioning").expect("Grafana's provisioning is mounted");
    for entry in fs::read_dir(provisioning.join("datasources")).unwrap() {
        let datasources = yaml_to_json(&entry.unwrap().path());
        for source in datasources["datasources"].as_array().into_iter().flatten() {
            stack.reaches(source["url"].as_str().unwrap(), &format!("{name}: datasource {}", source["name"]));
        }
    }
    for entry in fs::read_dir(provisioning.join("dashboards")).unwrap() {
        for provider in yaml_to_json(&entry.unwrap().path())["providers"].as_array().into_iter().flatten() {
            let path = provider["options"]["path"].as_str().unwrap();
            assert!(bound(grafana, path).is_some_and(|p| p.is_dir()), "{name}: dashboards path {path} is not mounted");
        }
    }
    for (key, value) in environment(grafana) {
        if value.starts_with('/') {
            assert!(bound(grafana, &value).is_some_and(|p| p.exists()), "{name}: {key}={value} is not mounted");
        }
    }
}
