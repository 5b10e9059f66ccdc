//! Link arguments for the freestanding guest binaries only (the library
//! and its host tests link normally).

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let common = [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-no-pie",
        "-Wl,--build-id=none",
        "-Wl,-z,max-page-size=4096",
    ];
    for arg in common {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    println!("cargo:rustc-link-arg-bin=kernel=-Wl,-T,{dir}/kernel.ld");
    // The user programs are the [[bin]] targets other than the kernel:
    // Cargo.toml is their one list (vmm/build.rs reads it too).
    let manifest = std::fs::read_to_string(format!("{dir}/Cargo.toml"))
        .expect("guest-kernel/Cargo.toml is readable");
    for user in bin_names(&manifest).iter().filter(|n| *n != "kernel") {
        println!("cargo:rustc-link-arg-bin={user}=-Wl,-T,{dir}/user.ld");
    }
    println!("cargo:rerun-if-changed=Cargo.toml");
    println!("cargo:rerun-if-changed=kernel.ld");
    println!("cargo:rerun-if-changed=user.ld");
}

// bin_names(): shared with the other build script, one copy.
include!("bin_names.rs");
