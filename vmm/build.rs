//! Builds the guest (kernel and built-in user programs) as freestanding
//! ELFs with a nested cargo, so `cargo build -p vmm` is the only command a
//! user needs. Guest-only flags stay off the host build: the nested cargo
//! gets its own target directories and an explicit --target.
//!
//! The kernel is built SSE-free (no SSE in anything ring 0 runs) with fat
//! LTO, which recompiles `core` with the same features; the result is then
//! scanned and the build fails on any SSE instruction.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "x86_64-unknown-linux-gnu";
fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let workspace = manifest.parent().expect("vmm/ has a parent").to_path_buf();
    let guest = workspace.join("guest-kernel");
    // <target>/<profile>/build/<pkg>/out → <target>/guest, shared by all
    // profiles so tests and release builds reuse one guest build.
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let target_dir = out
        .ancestors()
        .nth(4)
        .map(|p| p.join("guest"))
        .unwrap_or_else(|| out.join("guest"));

    let kernel_flags = "-C\x1ftarget-feature=-sse,-sse2\x1f-C\x1fno-redzone=yes";
    let kernel_dir = target_dir.join("kernel");
    cargo_build(&guest, &kernel_dir, kernel_flags, &["kernel"]);
    let kernel = kernel_dir.join(TARGET).join("release").join("kernel");
    check_sse_free(&kernel);

    // The user programs are guest-kernel's [[bin]] targets other than the
    // kernel: its Cargo.toml is the one list of them.
    let manifest = std::fs::read_to_string(guest.join("Cargo.toml"))
        .expect("guest-kernel/Cargo.toml is readable");
    let programs: Vec<String> = bin_names(&manifest)
        .into_iter()
        .filter(|n| n != "kernel")
        .collect();
    let programs: Vec<&str> = programs.iter().map(String::as_str).collect();
    let user_dir = target_dir.join("user");
    cargo_build(&guest, &user_dir, "", &programs);
    let user_bin = user_dir.join(TARGET).join("release");

    println!("cargo:rustc-env=DUALITY_KERNEL_ELF={}", kernel.display());
    // images.rs includes this table: (name, ELF bytes) per program.
    let mut table = String::from("&[\n");
    for p in &programs {
        table.push_str(&format!(
            "    ({p:?}, include_bytes!({:?})),\n",
            user_bin.join(p).display().to_string()
        ));
    }
    table.push_str("]\n");
    std::fs::write(out.join("programs.rs"), table).expect("OUT_DIR is writable");
    println!("cargo:rerun-if-changed={}", guest.display());
    println!("cargo:rerun-if-changed=build.rs");
}

fn cargo_build(guest: &Path, target_dir: &Path, rustflags: &str, bins: &[&str]) {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(guest)
        .args([
            "build",
            "--release",
            "-p",
            "guest-kernel",
            "--target",
            TARGET,
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .args([
            "--config",
            "profile.release.lto=\"fat\"",
            "--config",
            "profile.release.codegen-units=1",
        ]);
    for b in bins {
        cmd.args(["--bin", b]);
    }
    // The outer cargo's settings must not leak into the guest build.
    for (k, _) in env::vars() {
        if (k.starts_with("CARGO_") && k != "CARGO_HOME")
            || k == "RUSTFLAGS"
            || k.starts_with("RUSTC_")
        {
            cmd.env_remove(k);
        }
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    let status = cmd.status().expect("cannot run cargo for the guest build");
    if !status.success() {
        panic!("building the guest ({}) failed", bins.join(", "));
    }
}

/// Fails the build if ring-0 code could execute an SSE/AVX instruction
/// (software KVM stops the VM on one). fxsave64/fxrstor64 are intended.
fn check_sse_free(elf: &Path) {
    let out = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn", "-M", "intel"])
        .arg(elf)
        .output()
        .expect("objdump (binutils) is needed to check the kernel is SSE-free");
    if !out.status.success() {
        panic!("objdump failed on {}", elf.display());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut bad = Vec::new();
    let mut func = "";
    for line in text.lines() {
        if line.ends_with(">:") {
            func = line;
            continue;
        }
        let insn = line.split('\t').nth(1).unwrap_or("");
        let mnemonic = insn.split_whitespace().next().unwrap_or("");
        if mnemonic.starts_with("fxsave") || mnemonic.starts_with("fxrstor") {
            continue;
        }
        let uses_vector_reg = ["xmm", "ymm", "zmm"].iter().any(|r| insn.contains(r))
            || insn
                .split(|c: char| !c.is_ascii_alphanumeric())
                .any(|w| w.len() == 3 && w.starts_with("mm") && w.as_bytes()[2].is_ascii_digit());
        let sse_mnemonic = [
            "ldmxcsr", "stmxcsr", "xsave", "xrstor", "xgetbv", "movnt", "emms",
        ]
        .iter()
        .any(|m| mnemonic.starts_with(m));
        if uses_vector_reg || sse_mnemonic {
            bad.push(format!("{func} {insn}"));
        }
    }
    if !bad.is_empty() {
        panic!(
            "the kernel must be SSE-free, but {} has {} SSE/AVX instructions, first: {}",
            elf.display(),
            bad.len(),
            bad.iter().take(5).cloned().collect::<Vec<_>>().join(" | ")
        );
    }
}

// bin_names(): shared with the other build script, one copy.
include!("../guest-kernel/bin_names.rs");
