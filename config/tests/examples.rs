//! Checks the example configuration files in `deploy/examples/`: each must
//! parse and satisfy both daemons, and every key that an example shows in a
//! comment must be a real key with a valid value.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use metacrypt_config::Config;

const PRODUCTION_EXAMPLE: &str = "metacrypt.toml";

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples")
}

/// Reads every `*.toml` file of the examples directory, sorted by name.
fn example_files() -> Vec<(String, String)> {
    let dir = examples_dir();
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("failed to read {}: {err}", dir.display()));
    let mut files: Vec<(String, String)> = entries
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|err| panic!("failed to read {}: {err}", path.display()));
            (name, text)
        })
        .collect();
    files.sort();
    files
}

fn production_example() -> String {
    let path = examples_dir().join(PRODUCTION_EXAMPLE);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("failed to read {}: {err}", path.display()))
}

fn parse(name: &str, text: &str) -> Config {
    Config::from_toml(text, &[]).unwrap_or_else(|err| panic!("{name}: {err}"))
}

/// Returns the key of a line such as `key = value`, if it is one.
fn key_of_assignment(line: &str) -> Option<&str> {
    let (key, _) = line.split_once(" = ")?;
    let is_key = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    is_key.then_some(key)
}

/// Returns the key of a commented assignment such as `# key = value`.
fn commented_key(line: &str) -> Option<&str> {
    key_of_assignment(line.strip_prefix("# ")?)
}

/// Removes the comment marker from the line with index `index`.
fn uncomment_line(text: &str, index: usize) -> String {
    text.lines()
        .enumerate()
        .map(|(i, line)| match line.strip_prefix("# ") {
            Some(rest) if i == index => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Returns the indexes of the lines that contain a commented assignment.
fn commented_key_lines(text: &str) -> Vec<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| commented_key(line).is_some())
        .map(|(i, _)| i)
        .collect()
}

/// Collects every `section.key` that a file mentions, set or commented.
fn mentioned_keys(text: &str) -> BTreeSet<String> {
    let mut section = String::new();
    let mut keys = BTreeSet::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
        } else if let Some(key) = key_of_assignment(line).or_else(|| commented_key(line)) {
            keys.insert(format!("{section}.{key}"));
        }
    }
    keys
}

/// Maps every `section.key` of `config` to the Debug text of its value.
///
/// The pretty output of the derived `Debug` impls lists every field, so it
/// cannot fall out of step with the structs. In it, sections are indented
/// by 4 spaces and their keys by 8, and deeper lines continue the value of
/// the key above them. Trailing commas are dropped, and `source`, which is
/// not a key of the file, has no section.
fn fields(config: &Config) -> BTreeMap<String, String> {
    let debug = format!("{config:#?}");
    let mut section = String::new();
    let mut current_key: Option<String> = None;
    let mut fields = BTreeMap::new();
    for line in debug.lines() {
        let indent = line.len() - line.trim_start().len();
        let body = line.trim();
        let body = body.strip_suffix(',').unwrap_or(body);
        match indent {
            4 => {
                current_key = None;
                if let Some((name, _)) = body.split_once(": ") {
                    section = name.to_owned();
                }
            }
            8 => {
                if let Some((key, value)) = body.split_once(": ") {
                    let dotted = format!("{section}.{key}");
                    fields.insert(dotted.clone(), value.to_owned());
                    current_key = Some(dotted);
                }
            }
            n if n > 8 => {
                if let Some(key) = &current_key {
                    fields.get_mut(key).unwrap().push_str(body);
                }
            }
            _ => {}
        }
    }
    fields
}

#[test]
fn examples_directory_has_both_examples() {
    let names: Vec<String> = example_files().into_iter().map(|(name, _)| name).collect();
    assert!(
        names.iter().any(|name| name == PRODUCTION_EXAMPLE),
        "{names:?}"
    );
    assert!(
        names.iter().any(|name| name == "metacrypt-docker.toml"),
        "{names:?}"
    );
}

#[test]
fn every_example_validates_for_both_daemons() {
    for (name, text) in example_files() {
        let config = parse(&name, &text);
        if let Err(err) = config.validate_keyd() {
            panic!("{name}: keyd rejects it: {err}");
        }
        if let Err(err) = config.validate_frontd() {
            panic!("{name}: frontd rejects it: {err}");
        }
    }
}

#[test]
fn commented_keys_parse_when_uncommented() {
    for (name, text) in example_files() {
        for index in commented_key_lines(&text) {
            let line = text.lines().nth(index).unwrap();
            let changed = uncomment_line(&text, index);
            let config = Config::from_toml(&changed, &[])
                .unwrap_or_else(|err| panic!("{name}: uncommenting {line:?}: {err}"));
            if let Err(err) = config.validate_frontd() {
                panic!("{name}: uncommenting {line:?}: frontd rejects it: {err}");
            }
        }
    }
}

#[test]
fn commented_value_is_default_or_optional() {
    let text = production_example();
    let original = fields(&parse(PRODUCTION_EXAMPLE, &text));
    for index in commented_key_lines(&text) {
        let line = text.lines().nth(index).unwrap();
        let changed = fields(&parse(PRODUCTION_EXAMPLE, &uncomment_line(&text, index)));
        let differing: Vec<&String> = changed
            .iter()
            .filter(|(key, value)| original.get(*key) != Some(*value))
            .map(|(key, _)| key)
            .collect();
        for key in differing {
            assert_eq!(
                original[key], "None",
                "{PRODUCTION_EXAMPLE}: {line:?} changes {key}, so the value it shows is not the default"
            );
        }
    }
}

#[test]
fn production_example_mentions_every_key() {
    let known: BTreeSet<String> = fields(&Config::default()).into_keys().collect();
    assert!(
        known.len() > 10,
        "no keys read from Debug output: {known:?}"
    );
    let mentioned = mentioned_keys(&production_example());
    let missing: Vec<&String> = known.difference(&mentioned).collect();
    assert!(
        missing.is_empty(),
        "{PRODUCTION_EXAMPLE} does not mention {missing:?}"
    );
    let unknown: Vec<&String> = mentioned.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "{PRODUCTION_EXAMPLE} mentions keys the config does not have: {unknown:?}"
    );
}

#[test]
fn docker_example_admits_frontd_by_uid() {
    let (_, text) = example_files()
        .into_iter()
        .find(|(name, _)| name == "metacrypt-docker.toml")
        .unwrap();
    let config = parse("metacrypt-docker.toml", &text);
    assert_eq!(config.keyd.front_allowed_uids, vec![10002]);
    assert!(config.keyd.front_socket.starts_with("/run/metacrypt"));
    assert!(config.keyd.admin_socket.starts_with("/run/metacrypt"));
    assert_eq!(
        config.validate_keyd().unwrap(),
        Path::new("/srv/metacrypt/metacrypt.db")
    );
}

/// install.sh fills in frontd's uid by replacing this exact line.
#[test]
fn production_example_has_uid_line_for_install() {
    let text = production_example();
    let empty_line = "front_allowed_uids = []";
    let count = text.lines().filter(|line| *line == empty_line).count();
    assert_eq!(count, 1, "{PRODUCTION_EXAMPLE}: lines {empty_line:?}");
    let filled = text.replace(empty_line, "front_allowed_uids = [998]");
    let config = parse(PRODUCTION_EXAMPLE, &filled);
    assert_eq!(config.keyd.front_allowed_uids, vec![998]);
}
