//! `kiln.data(name)`: a data file the plugins ship (TOML), read from the
//! plugin directory or, when it has no such file, the copy built into the
//! binary, and handed to the script as a table. Data that operators edit
//! (providers, throttling signals) stays data; the plugin that reads it
//! checks it and decides what it means.

use mlua::{Lua, LuaSerdeExt, Table};
use std::path::PathBuf;

/// The data files built in, by name (as `kiln.data` is asked for them).
fn builtin(name: &str) -> Option<&'static str> {
    Some(match name {
        "egress/providers" => include_str!("../../../plugins/egress/providers.toml"),
        "egress/signals" => include_str!("../../../plugins/egress/signals.toml"),
        _ => return None,
    })
}

/// Names are plain words and slashes, as for `require`: no way out of the
/// plugin directory.
fn valid(name: &str) -> bool {
    !name.is_empty()
        && name
            .split('/')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

/// Reads and parses `<dir>/<name>.toml` (or the built-in copy); the error
/// names the file and, for a syntax error, the line.
pub fn read(dir: &std::path::Path, name: &str) -> Result<(toml::Table, String), String> {
    if !valid(name) {
        return Err(format!("kiln.data: bad data file name {name:?}"));
    }
    let path: PathBuf = dir.join(format!("{name}.toml"));
    let (text, shown) = match std::fs::read_to_string(&path) {
        Ok(text) => (text, path.display().to_string()),
        Err(_) => match builtin(name) {
            Some(text) => (text.to_string(), format!("plugins/{name}.toml (built in)")),
            None => {
                return Err(format!(
                    "kiln.data: no data file {name:?} in {}",
                    dir.display()
                ));
            }
        },
    };
    let table = text
        .parse::<toml::Table>()
        .map_err(|e| format!("{shown}: {e}"))?;
    Ok((table, shown))
}

pub fn install(lua: &Lua, kiln: &Table, dir: PathBuf) -> mlua::Result<()> {
    let data = lua.create_function(move |lua, name: String| {
        let (table, shown) = read(&dir, &name).map_err(mlua::Error::RuntimeError)?;
        let value = lua.to_value(&table)?;
        Ok((value, shown))
    })?;
    kiln.set("data", data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_files_parse_and_a_bad_one_names_its_line() {
        let none = std::path::Path::new("/nonexistent");
        let (providers, shown) = read(none, "egress/providers").expect("providers");
        assert!(shown.contains("built in"));
        assert!(
            providers["providers"]
                .as_table()
                .expect("providers table")
                .len()
                >= 12
        );
        read(none, "egress/signals").expect("signals");
        assert!(read(none, "../etc/passwd").is_err());
        assert!(read(none, "egress/none").is_err());

        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("egress")).expect("mkdir");
        std::fs::write(
            dir.path().join("egress/providers.toml"),
            "[defaults]\nconnections = 3\n\n[providers.x\nmx = []\n",
        )
        .expect("write");
        let e = read(dir.path(), "egress/providers").expect_err("bad toml");
        assert!(e.contains("providers.toml") && e.contains("line 4"), "{e}");
    }
}
