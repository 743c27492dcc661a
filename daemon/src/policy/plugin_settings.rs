//! Plugin settings, declared and checked: a plugin calls
//! `kiln.settings(name, schema)` with one entry per setting (its type, its
//! default and a line of documentation) and gets `config.<name>` from
//! `policy.lua` with the defaults filled in. A key the plugin does not
//! declare, or a value of the wrong type, fails the load naming the script,
//! the plugin and the key: a misspelt setting is never silently ignored.
//!
//! Types: `number`, `integer` (a number without a fraction: `1e9` is one),
//! `string`, `boolean`, `list` (a sequence; `items` names its elements'
//! type) and `table` (any table, such as a map of domains).

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
                let kind: String = spec.get("type")?;
                let items: Option<String> = spec.get("items")?;
                let value = match given.get::<Value>(name.as_str())? {
                    Value::Nil => spec.get::<Value>("default")?,
                    v => v,
                };
                if !value.is_nil() && !fits(&value, &kind, items.as_deref()) {
                    return Err(mlua::Error::RuntimeError(format!(
                        "{script}: config.{plugin}.{name}: expected {}, got {}",
                        described(&kind, items.as_deref()),
                        type_name(&value)
                    )));
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
