//! Plugin settings, declared and checked: a plugin calls
//! `kiln.settings(name, schema)` with one entry per setting (its type, its
//! default and a line of documentation) and gets `config.<name>` from
//! `policy.lua` with the defaults filled in. A key the plugin does not
//! declare, or a value of the wrong type, fails the load naming the script,
//! the plugin and the key: a misspelt setting is never silently ignored.
//!
//! Types: `number`, `integer` (a number without a fraction: `1e9` is one),
//! `string`, `boolean`, `list` (a sequence; `items` names its elements'
//! type), `map` (string keys, such as domains, to `values`: a type's name,
//! or a table of settings each with its own spec, checked to the leaf) and
//! `table` (any table). A number may have a `min` and a `max`.

use mlua::{Lua, Table, Value};

/// Where the declared schemas are kept, by plugin (docs are checked
/// against them).
pub const SCHEMAS: &str = "_settings";

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Integer(_) => "integer",
        Value::Number(_) => "number",
        other => other.type_name(),
    }
}

/// Whether `value` is of the declared type.
fn fits(value: &Value, kind: &str, items: Option<&str>) -> bool {
    match (kind, value) {
        ("number", Value::Integer(_) | Value::Number(_)) => true,
        ("integer", Value::Integer(_)) => true,
        ("integer", Value::Number(n)) => n.fract() == 0.0,
        ("string", Value::String(_)) => true,
        ("boolean", Value::Boolean(_)) => true,
        ("table", Value::Table(_)) => true,
        ("list", Value::Table(t)) => {
            let n = t.raw_len();
            let pairs = t.pairs::<Value, Value>().count();
            pairs == n
                && items.is_none_or(|kind| {
                    t.sequence_values::<Value>()
                        .all(|v| v.is_ok_and(|v| fits(&v, kind, None)))
                })
        }
        _ => false,
    }
}

/// Checks `value` against `spec` (`type`, `items`, `values`, `min`,
/// `max`) to the leaf; the error names the path below `at`.
fn check(value: &Value, spec: &Table, at: &str) -> Result<(), String> {
    let kind: String = spec.get("type").map_err(|e| e.to_string())?;
    let items: Option<String> = spec.get("items").map_err(|e| e.to_string())?;
    if kind == "map" {
        let Value::Table(t) = value else {
            return Err(format!(
                "{at}: expected a map (a table keyed by names), got {}",
                type_name(value)
            ));
        };
        let values: Value = spec.get("values").map_err(|e| e.to_string())?;
        for pair in t.pairs::<Value, Value>() {
            let (key, v) = pair.map_err(|e| e.to_string())?;
            let Value::String(k) = &key else {
                return Err(format!("{at}: keys are names, got {}", type_name(&key)));
            };
            let here = format!("{at}[{:?}]", k.to_string_lossy());
            match &values {
                Value::String(name) => {
                    let name = name.to_string_lossy();
                    if !fits(&v, &name, None) {
                        return Err(format!(
                            "{here}: expected {}, got {}",
                            described(&name, None),
                            type_name(&v)
                        ));
                    }
                }
                Value::Table(record) => check_record(&v, record, &here)?,
                _ => {}
            }
        }
        return Ok(());
    }
    if !fits(value, &kind, items.as_deref()) {
        return Err(format!(
            "{at}: expected {}, got {}",
            described(&kind, items.as_deref()),
            type_name(value)
        ));
    }
    let number = match value {
        Value::Integer(i) => Some(*i as f64),
        Value::Number(n) => Some(*n),
        _ => None,
    };
    if let Some(n) = number {
        let min: Option<f64> = spec.get("min").map_err(|e| e.to_string())?;
        let max: Option<f64> = spec.get("max").map_err(|e| e.to_string())?;
        if min.is_some_and(|m| n < m) || max.is_some_and(|m| n > m) {
            let range = match (min, max) {
                (Some(a), Some(b)) => format!("from {a} to {b}"),
                (Some(a), None) => format!("at least {a}"),
                (None, Some(b)) => format!("at most {b}"),
                (None, None) => String::new(),
            };
            return Err(format!(
                "{at}: expected {} {range}, got {n}",
                described(&kind, None)
            ));
        }
    }
    Ok(())
}

/// A table of settings against `record` (setting → spec): no key it does
/// not declare, each value to its spec.
fn check_record(value: &Value, record: &Table, at: &str) -> Result<(), String> {
    let Value::Table(t) = value else {
        return Err(format!(
            "{at}: expected a table of settings, got {}",
            type_name(value)
        ));
    };
    let mut names: Vec<String> = record
        .pairs::<String, Value>()
        .filter_map(|p| p.ok().map(|(k, _)| k))
        .collect();
    names.sort();
    for pair in t.pairs::<Value, Value>() {
        let (key, v) = pair.map_err(|e| e.to_string())?;
        let name = match &key {
            Value::String(s) => s.to_string_lossy(),
            other => format!("[{other:?}]"),
        };
        let Some(spec) = record.get::<Option<Table>>(name.as_str()).ok().flatten() else {
            return Err(format!(
                "{at}.{name}: no such setting (there are: {})",
                names.join(", ")
            ));
        };
        check(&v, &spec, &format!("{at}.{name}"))?;
    }
    Ok(())
}

fn described(kind: &str, items: Option<&str>) -> String {
    let article = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    match items {
        Some(i) => format!("{article} {kind} of {i}s"),
        None => format!("{article} {kind}"),
    }
}

/// Installs `kiln.settings`. `script` names the policy file in errors.
pub fn install(lua: &Lua, kiln: &Table, script: String) -> mlua::Result<()> {
    kiln.set(SCHEMAS, lua.create_table()?)?;
    kiln.set(
        "settings",
        lua.create_function(move |lua, (plugin, schema): (String, Table)| {
            let kiln: Table = lua.globals().get("kiln")?;
            let all: Table = kiln.get("_config")?;
            let given: Table = match all.get::<Value>(plugin.as_str())? {
                Value::Nil => lua.create_table()?,
                Value::Table(t) => t,
                other => {
                    return Err(mlua::Error::RuntimeError(format!(
                        "{script}: config.{plugin}: expected a table, got {}",
                        type_name(&other)
                    )));
                }
            };
            let mut names: Vec<String> = schema
                .pairs::<String, Table>()
                .map(|p| p.map(|(k, _)| k))
                .collect::<mlua::Result<_>>()?;
            names.sort();
            for pair in given.pairs::<Value, Value>() {
                let (key, _) = pair?;
                let key = match &key {
                    Value::String(s) => s.to_string_lossy(),
                    other => format!("[{other:?}]"),
                };
                if !names.contains(&key) {
                    return Err(mlua::Error::RuntimeError(format!(
                        "{script}: config.{plugin}.{key}: plugin {plugin} has no such setting (it has: {})",
                        names.join(", ")
                    )));
                }
            }
            let out = lua.create_table()?;
            for name in &names {
                let spec: Table = schema.get(name.as_str())?;
                let value = match given.get::<Value>(name.as_str())? {
                    Value::Nil => spec.get::<Value>("default")?,
                    v => v,
                };
                if !value.is_nil() {
                    check(&value, &spec, &format!("{script}: config.{plugin}.{name}"))
                        .map_err(mlua::Error::RuntimeError)?;
                }
                out.set(name.as_str(), value)?;
            }
            let schemas: Table = kiln.get(SCHEMAS)?;
            schemas.set(plugin.as_str(), schema)?;
            Ok(out)
        })?,
    )
}

/// After the plugins loaded: every `config.<name>` of the policy is a
/// plugin that declared its settings (or one the policy disabled).
pub fn check_plugins_named(
    lua: &Lua,
    config: &Table,
    disabled: &[String],
    script: &str,
) -> Result<(), String> {
    let kiln: Table = lua.globals().get("kiln").map_err(|e| e.to_string())?;
    let schemas: Table = kiln.get(SCHEMAS).map_err(|e| e.to_string())?;
    let mut declared: Vec<String> = schemas
        .pairs::<String, Value>()
        .filter_map(|p| p.ok().map(|(k, _)| k))
        .collect();
    declared.sort();
    for pair in config.pairs::<String, Value>() {
        let (name, _) = pair.map_err(|e| e.to_string())?;
        if !declared.contains(&name) && !disabled.contains(&name) {
            return Err(format!(
                "{script}: config.{name}: no plugin has settings of that name (plugins with settings: {})",
                declared.join(", ")
            ));
        }
    }
    Ok(())
}
