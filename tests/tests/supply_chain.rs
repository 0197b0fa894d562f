//! The dependency check that stands in for `cargo deny`: every package in `Cargo.lock` (all
//! platforms, dev and build dependencies included) comes from crates.io or this workspace, and
//! its SPDX license expression is satisfiable from the allow-list below.
//!
//! Why not `cargo deny` itself: it installs from crates.io, but its advisory database is a git
//! repository on GitHub, which this project's build machines cannot reach; licenses, sources and
//! duplicates are what it could check offline, and this test checks the first two with the same
//! SPDX parser (the `spdx` crate). Advisories are reviewed by hand when dependencies change.

use std::{collections::BTreeSet, path::Path, process::Command};

use serde_json::Value;

/// Licenses a dependency may be used under (one side of an `OR` is enough).
const ALLOWED: &[&str] = &[
    "0BSD",
    "Apache-2.0",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "BSL-1.0",
    "CC0-1.0",
    "CDLA-Permissive-2.0",
    "ISC",
    "MIT",
    "MIT-0",
    // File-level copyleft: using an unmodified crate places no duty on this project's code.
    "MPL-2.0",
    "NCSA",
    "Unicode-3.0",
    "Unlicense",
    "Zlib",
];

/// Exceptions allowed together with their license (`Apache-2.0 WITH LLVM-exception`).
const ALLOWED_EXCEPTIONS: &[&str] = &["LLVM-exception"];

fn packages() -> Vec<Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .current_dir(root)
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata's JSON");
    meta["packages"].as_array().expect("packages").clone()
}

fn license_allowed(expression: &str) -> Result<bool, String> {
    let parsed = spdx::Expression::parse_mode(expression, spdx::ParseMode::LAX)
        .map_err(|e| e.to_string())?;
    Ok(parsed.evaluate(|req| {
        let license = match &req.license {
            spdx::LicenseItem::Spdx { id, .. } => ALLOWED.contains(&id.name),
            spdx::LicenseItem::Other { .. } => false,
        };
        let exception = match &req.addition {
            None => true,
            Some(spdx::AdditionItem::Spdx(e)) => ALLOWED_EXCEPTIONS.contains(&e.name),
            Some(spdx::AdditionItem::Other { .. }) => false,
        };
        license && exception
    }))
}

#[test]
fn every_dependency_has_an_allowed_license() {
    let mut refused = BTreeSet::new();
    let packages = packages();
    assert!(packages.len() > 100, "cargo metadata lists the whole graph");
    for p in &packages {
        let name = format!("{} {}", p["name"], p["version"]);
        match p["license"].as_str() {
            None => {
                refused.insert(format!("{name}: no license field"));
            }
            Some(expr) => match license_allowed(expr) {
                Ok(true) => {}
                Ok(false) => {
                    refused.insert(format!("{name}: {expr}"));
                }
                Err(e) => {
                    refused.insert(format!("{name}: unreadable {expr:?} ({e})"));
                }
            },
        }
    }
    assert!(refused.is_empty(), "licenses not allowed:\n{refused:#?}");
}

#[test]
fn every_dependency_comes_from_crates_io_or_the_workspace() {
    let strange: Vec<String> = packages()
        .iter()
        .filter(|p| {
            !p["source"].is_null()
                && p["source"] != "registry+https://github.com/rust-lang/crates.io-index"
        })
        .map(|p| format!("{} {}: {}", p["name"], p["version"], p["source"]))
        .collect();
    assert!(strange.is_empty(), "packages from elsewhere:\n{strange:#?}");
}

#[test]
fn the_allow_list_refuses_what_it_should() {
    assert_eq!(license_allowed("MIT OR Apache-2.0"), Ok(true));
    assert_eq!(license_allowed("MIT/Apache-2.0"), Ok(true));
    assert_eq!(license_allowed("Apache-2.0 WITH LLVM-exception"), Ok(true));
    assert_eq!(license_allowed("GPL-3.0-only"), Ok(false));
    assert_eq!(license_allowed("MIT AND GPL-3.0-only"), Ok(false));
    assert_eq!(license_allowed("GPL-3.0-only OR MIT"), Ok(true));
    assert!(license_allowed("not a license (").is_err());
}
