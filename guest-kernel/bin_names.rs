// Included by guest-kernel/build.rs and vmm/build.rs: the guest program
// list is guest-kernel/Cargo.toml's [[bin]] tables, read by both.
/// The `name` of every `[[bin]]` table, in order.
fn bin_names(manifest: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin
            && let Some(v) = line.strip_prefix("name")
            && let Some(v) = v.trim_start().strip_prefix('=')
        {
            names.push(v.trim().trim_matches('"').to_string());
        }
    }
    names
}
