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
    for user in [
        "init",
        "spawn",
        "fault",
        "priv",
        "spin",
        "objsum",
        "objfill",
        "nameserver",
        "ipcbench",
    ] {
        println!("cargo:rustc-link-arg-bin={user}=-Wl,-T,{dir}/user.ld");
    }
    println!("cargo:rerun-if-changed=kernel.ld");
    println!("cargo:rerun-if-changed=user.ld");
}
