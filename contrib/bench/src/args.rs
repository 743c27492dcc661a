//! The flags the store benchmarks share: `--n N`, `--store
//! embedded|redis`, `--kiln PATH`.

use std::path::PathBuf;

pub struct Args {
    pub n: usize,
    pub redis: bool,
    pub kiln: PathBuf,
}

/// The command line's flags, `n` when `--n` is not given; exits with a
/// message naming `bench` when they do not make sense.
pub fn parse(bench: &str, n: usize) -> Args {
    let mut args = Args {
        n,
        redis: false,
        kiln: PathBuf::from("target/release/kiln"),
    };
    let mut it = std::env::args().skip(1);
    let fail = |e: String| -> ! {
        eprintln!("{bench}: {e}");
        std::process::exit(2)
    };
    while let Some(flag) = it.next() {
        let Some(value) = it.next() else {
            fail(format!("{flag} needs a value"));
        };
        match flag.as_str() {
            "--n" => match value.parse() {
                Ok(n) => args.n = n,
                Err(_) => fail("--n: not a number".into()),
            },
            "--store" => args.redis = value == "redis",
            "--kiln" => args.kiln = PathBuf::from(value),
            other => fail(format!("unknown flag {other}")),
        }
    }
    args
}
