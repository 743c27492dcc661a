//! The flags the store benchmarks share: `--n N`, `--store
//! embedded|redis`, `--kiln PATH`, and those a benchmark names as its own.

use std::path::PathBuf;

pub struct Args {
    pub n: usize,
    pub redis: bool,
    pub kiln: PathBuf,
    /// The benchmark's own flags, as given (flag, value).
    pub own: Vec<(String, String)>,
}

impl Args {
    /// The value given for one of the benchmark's own flags.
    #[allow(dead_code)] // not every benchmark has flags of its own
    pub fn own(&self, flag: &str) -> Option<&str> {
        self.own
            .iter()
            .rev()
            .find(|(f, _)| f == flag)
            .map(|(_, v)| v.as_str())
    }
}

/// The command line's flags, `n` when `--n` is not given; exits with a
/// message naming `bench` when they do not make sense.
#[allow(dead_code)] // a benchmark with flags of its own calls parse_with
pub fn parse(bench: &str, n: usize) -> Args {
    parse_with(bench, n, &[])
}

/// [`parse`], also taking the flags in `own` (read with [`Args::own`]).
pub fn parse_with(bench: &str, n: usize, own: &[&str]) -> Args {
    let mut args = Args {
        n,
        redis: false,
        kiln: PathBuf::from("target/release/kiln"),
        own: Vec::new(),
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
            flag if own.contains(&flag) => args.own.push((flag.to_string(), value)),
            other => fail(format!("unknown flag {other}")),
        }
    }
    args
}
