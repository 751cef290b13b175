//! Writes the report fixture archive: `cargo run -p sipvault-query --example
//! gen_fixture -- DIR [--ims N] [--calls N] [--days N] [--users N] [--seed N]`.
//! Defaults are `FixtureSpec::standard()` (100,000 IMs, 10,000 calls).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use sipvault_query::fixture::{FixtureSpec, generate_fixture};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut dir: Option<PathBuf> = None;
    let mut spec = FixtureSpec::standard();
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> Option<u64> {
            let value = args.next().and_then(|v| v.replace('_', "").parse().ok());
            if value.is_none() {
                eprintln!("{name} needs a number");
            }
            value
        };
        let ok = match arg.as_str() {
            "--ims" => number("--ims").map(|n| spec.ims = n),
            "--calls" => number("--calls").map(|n| spec.calls = n),
            "--days" => number("--days")
                .and_then(|n| u32::try_from(n).ok())
                .map(|n| spec.days = n),
            "--users" => number("--users")
                .and_then(|n| u32::try_from(n).ok())
                .map(|n| spec.users = n),
            "--seed" => number("--seed").map(|n| spec.seed = n),
            _ if dir.is_none() && !arg.starts_with('-') => {
                dir = Some(PathBuf::from(&arg));
                Some(())
            }
            _ => None,
        };
        if ok.is_none() {
            eprintln!(
                "usage: gen_fixture DIR [--ims N] [--calls N] [--days N] [--users N] [--seed N]"
            );
            return ExitCode::from(2);
        }
    }
    let Some(dir) = dir else {
        eprintln!("usage: gen_fixture DIR [--ims N] [--calls N] [--days N] [--users N] [--seed N]");
        return ExitCode::from(2);
    };
    let started = Instant::now();
    match generate_fixture(&dir, &spec) {
        Ok(summary) => {
            println!(
                "wrote {} IMs and {} calls in {} files under {} in {:.1}s",
                summary.ims,
                summary.calls,
                summary.files,
                dir.display(),
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
