//! `vmm run --object NAME=URI`: the memory objects exported to the guest.
//! Parsed and checked first (cheap, no I/O), then opened (files, sockets),
//! all before the guest starts; synced when it has stopped.

use crate::error::{Result, VmmError};
use crate::object_limits::{RATE_KEYS, RateKeys};
use devices::pager::PagerObject;
use devices::pager::wire::{CONFIG_HDR_SIZE, OBJECT_ENTRY_SIZE, OBJECT_NAME_LEN};
use devices::rate_limiter::RateLimit;
use devices::virtio::mmio::{CONFIG_SPACE, MMIO_WINDOW_SIZE};
use pager_backends::{
    Instrumented, KernelId, OnTimeout, OpenOptions, Pager, PagerUri, ThreadHook, TimeoutPolicy,
    spawn_hooked,
};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Longest name: the config table's name field keeps a terminating NUL.
pub const MAX_NAME_LEN: usize = OBJECT_NAME_LEN - 1;
/// As many objects as the config table fits in the device's MMIO window:
/// entries past the window would be invisible to the guest (59).
pub const MAX_OBJECTS: usize =
    (MMIO_WINDOW_SIZE as usize - CONFIG_SPACE as usize - CONFIG_HDR_SIZE) / OBJECT_ENTRY_SIZE;

/// One `--object NAME=URI`, checked but not opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectSpec {
    pub name: String,
    /// As given, for messages.
    pub uri: String,
    pub parsed: PagerUri,
    /// `?timeout=`: this object's bound on each request to its pager
    /// (else `--pager-timeout`).
    pub timeout: Option<Duration>,
    /// `?on_timeout=error|zero`: what a data_request that timed out becomes.
    pub on_timeout: OnTimeout,
    /// `?ops=`, `?bandwidth=` (object_limits.rs): what the guest may ask
    /// of this object's pager per second.
    pub rate_limit: RateLimit,
}

/// The query keys the VMM takes for itself, whatever the backend (and
/// object_limits.rs's RATE_KEYS).
const OBJECT_KEYS: [&str; 2] = ["timeout", "on_timeout"];

/// What `take_object_keys` finds.
struct ObjectKeys {
    /// The URI the backend parses.
    backend_uri: String,
    timeout: Option<Duration>,
    on_timeout: OnTimeout,
    rate_limit: RateLimit,
}

/// Takes the VMM's own keys out of `uri`'s query: the URI the backend
/// parses, this object's timeout, its policy and its rate limit.
fn take_object_keys(uri: &str) -> std::result::Result<ObjectKeys, String> {
    let (base, query) = pager_backends::uri::split_query(uri);
    let Some(query) = query else {
        return Ok(ObjectKeys {
            backend_uri: uri.to_string(),
            timeout: None,
            on_timeout: OnTimeout::default(),
            rate_limit: RateLimit::default(),
        });
    };
    let (mut timeout, mut on_timeout) = (None, None);
    let mut rate = RateKeys::default();
    let mut rest = Vec::new();
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if RATE_KEYS.contains(&k) {
            rate.take(k, v)?;
            continue;
        }
        match k {
            "timeout" if timeout.is_none() => {
                timeout = Some(
                    crate::config::parse_timeout(v).map_err(|why| format!("timeout={v}: {why}"))?,
                )
            }
            "on_timeout" if on_timeout.is_none() => {
                on_timeout = Some(OnTimeout::parse(v).ok_or_else(|| {
                    format!("on_timeout={v}: expected on_timeout=error or on_timeout=zero")
                })?)
            }
            k if OBJECT_KEYS.contains(&k) => return Err(format!("{k} given twice")),
            _ => rest.push(pair),
        }
    }
    // A path that contains `?` keeps its trailing `?` (uri.rs's rule).
    let backend_uri = if !rest.is_empty() {
        format!("{base}?{}", rest.join("&"))
    } else if pager_backends::uri::split_query(base).1.is_some() {
        format!("{base}?")
    } else {
        base.to_string()
    };
    Ok(ObjectKeys {
        backend_uri,
        timeout,
        on_timeout: on_timeout.unwrap_or_default(),
        rate_limit: rate.finish()?,
    })
}

impl ObjectSpec {
    pub fn read_only(&self) -> bool {
        matches!(
            self.parsed,
            PagerUri::File {
                read_only: true,
                ..
            }
        )
    }
}

fn bad(arg: &str, why: impl Into<String>) -> VmmError {
    VmmError::Object {
        arg: arg.to_string(),
        why: why.into(),
    }
}

/// Parses one `NAME=URI` (split at the first `=`; URIs may contain more).
pub fn parse_spec(arg: &str) -> Result<ObjectSpec> {
    let (name, uri) = arg
        .split_once('=')
        .ok_or_else(|| bad(arg, "expected NAME=URI, e.g. data=file:/path/to/file"))?;
    if name.is_empty() {
        return Err(bad(arg, "empty object name (expected NAME=URI)"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(bad(
            arg,
            format!(
                "object name is {} bytes long; at most {MAX_NAME_LEN} fit in the device's object table",
                name.len()
            ),
        ));
    }
    // Names are UTF-8 in the table; the guest shows them and looks them up,
    // so spaces and control characters would only make them ambiguous.
    if let Some(c) = name.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(
            arg,
            format!("object name contains {c:?}; names must be printable, without whitespace"),
        ));
    }
    let keys = take_object_keys(uri).map_err(|e| bad(arg, e))?;
    let parsed =
        PagerUri::parse(&keys.backend_uri).map_err(|e| bad(arg, format!("bad URI: {e}")))?;
    Ok(ObjectSpec {
        name: name.to_string(),
        uri: uri.to_string(),
        parsed,
        timeout: keys.timeout,
        on_timeout: keys.on_timeout,
        rate_limit: keys.rate_limit,
    })
}

/// Parses every `--object`, in command-line order (that order is the
/// device's object table, so object ids are stable for a given command).
pub fn parse_specs(args: &[String]) -> Result<Vec<ObjectSpec>> {
    if args.len() > MAX_OBJECTS {
        return Err(VmmError::TooManyObjects {
            count: args.len(),
            max: MAX_OBJECTS,
        });
    }
    let mut seen = HashSet::new();
    let mut specs = Vec::with_capacity(args.len());
    for arg in args {
        let spec = parse_spec(arg)?;
        if !seen.insert(spec.name.clone()) {
            return Err(bad(arg, format!("duplicate object name {:?}", spec.name)));
        }
        specs.push(spec);
    }
    Ok(specs)
}

/// The object the guest's default pager pages anonymous memory to.
pub const SWAP_NAME: &str = "swap";

/// `--swap`: exports an `anon` object named `swap` of `size` bytes after the
/// `--object`s, unless one of them is named `swap` already (that one is the
/// guest's swap then) or swap is off (`None`).
pub fn add_swap(specs: &mut Vec<ObjectSpec>, size: Option<u64>) -> Result<()> {
    let Some(size) = size else { return Ok(()) };
    if specs.iter().any(|s| s.name == SWAP_NAME) {
        return Ok(());
    }
    if specs.len() >= MAX_OBJECTS {
        return Err(VmmError::TooManyObjects {
            count: specs.len() + 1,
            max: MAX_OBJECTS,
        });
    }
    specs.push(parse_spec(&format!("{SWAP_NAME}=anon?size={size}"))?);
    Ok(())
}

/// An opened object: the device gets `pager`, the VMM keeps it too to sync
/// it at shutdown and to read its statistics.
pub struct OpenObject {
    pub name: String,
    pub pager: Arc<Instrumented>,
    pub read_only: bool,
    pub on_timeout: OnTimeout,
    pub rate_limit: RateLimit,
}

impl OpenObject {
    /// The device's view: the statistics see every timeout, the policy
    /// decides what the guest is told.
    pub fn device_object(&self) -> PagerObject {
        PagerObject {
            name: self.name.clone(),
            pager: Arc::new(TimeoutPolicy::new(
                self.pager.clone(),
                self.on_timeout,
                &self.name,
            )),
            read_only: self.read_only,
            rate_limit: self.rate_limit,
        }
    }
}

/// Options for every backend: `timeout` bounds each request to a remote
/// pager, and connecting with its whole handshake too (but never more than
/// the usual 5 s, so that a long request timeout does not make a down or
/// stalling server slow to report).
pub fn open_options(timeout: Duration) -> OpenOptions {
    let defaults = OpenOptions::default();
    OpenOptions {
        request_timeout: timeout,
        connect_timeout: timeout.min(defaults.connect_timeout),
        ..defaults
    }
}

/// Opens each object in order; the first failure names its `--object`.
pub fn open_all(specs: &[ObjectSpec], opts: &OpenOptions) -> Result<Vec<OpenObject>> {
    specs
        .iter()
        .map(|s| {
            let own;
            let opts = match s.timeout {
                Some(t) => {
                    own = OpenOptions {
                        reader_hook: opts.reader_hook.clone(),
                        ..open_options(t)
                    };
                    &own
                }
                None => opts,
            };
            let backend = pager_backends::open_backend(&s.parsed, opts).map_err(|source| {
                VmmError::ObjectOpen {
                    arg: format!("{}={}", s.name, s.uri),
                    source,
                }
            })?;
            Ok(OpenObject {
                name: s.name.clone(),
                pager: Arc::new(Instrumented::new(backend)),
                read_only: s.read_only(),
                on_timeout: s.on_timeout,
                rate_limit: s.rate_limit,
            })
        })
        .collect()
}

/// Syncs every object in parallel and returns `(name, why)` for each that
/// failed. Waits at most `timeout` (plus a second, so a remote backend's own
/// timeout error usually arrives first): a sync still running then is
/// reported and left behind on its thread, since shutdown must not hang on
/// a silent pager (or a stuck fsync). Each thread runs `hook` first (its
/// seccomp filter).
pub fn sync_all(
    objects: &[OpenObject],
    timeout: Duration,
    hook: Option<&ThreadHook>,
) -> Vec<(String, String)> {
    let (tx, rx) = mpsc::channel();
    let mut pending: Vec<Option<String>> = Vec::with_capacity(objects.len());
    let mut failed = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        let tx = tx.clone();
        let pager = o.pager.clone();
        let spawned = spawn_hooked(format!("sync-{i}"), hook, move || {
            let _ = tx.send((i, pager.sync().map_err(|e| e.to_string())));
        });
        match spawned {
            Ok(_) => pending.push(Some(o.name.clone())),
            Err(e) => {
                pending.push(None);
                failed.push((o.name.clone(), format!("cannot start a sync thread: {e}")));
            }
        }
    }
    drop(tx);
    let deadline = Instant::now() + timeout + Duration::from_secs(1);
    while pending.iter().any(Option::is_some) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, result)) => {
                if let Some(name) = pending.get_mut(i).and_then(Option::take)
                    && let Err(why) = result
                {
                    failed.push((name, why));
                }
            }
            Err(_) => break,
        }
    }
    for name in pending.into_iter().flatten() {
        failed.push((
            name,
            format!("no answer within {timeout:?} (--pager-timeout)"),
        ));
    }
    failed
}

/// How this VM identifies itself to its pagers. A pager may serve several
/// VMs at once (an external `unix:` pager process, a shared file), so the id
/// must differ between VMMs running together: the pid does that (and is
/// never 0, which `vmm pager` uses for itself). The counter in the low bits
/// keeps ids distinct if one process builds several VMs (benchmarks).
pub fn kernel_id() -> KernelId {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    KernelId((u64::from(std::process::id()) << 32) | u64::from(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_keys_are_the_vmms_and_the_rest_goes_to_the_backend() {
        let s = parse_spec("q=unix:/run/p.sock?timeout=500ms&on_timeout=zero").unwrap();
        assert_eq!(s.timeout, Some(Duration::from_millis(500)));
        assert_eq!(s.on_timeout, OnTimeout::Zero);
        assert_eq!(s.uri, "unix:/run/p.sock?timeout=500ms&on_timeout=zero");
        let s = parse_spec("d=file:/tmp/x?ro&timeout=2m").unwrap();
        assert_eq!(s.timeout, Some(Duration::from_secs(120)));
        assert_eq!(s.on_timeout, OnTimeout::Error);
        assert!(s.read_only());
        // A path with `?` keeps its own trailing `?` once the keys go.
        let s = parse_spec("d=file:/tmp/a?b?timeout=1").unwrap();
        assert_eq!(
            s.parsed,
            PagerUri::File {
                path: "/tmp/a?b".into(),
                read_only: false
            }
        );
        assert_eq!(parse_spec("d=zero").unwrap().timeout, None);
        for (bad, says) in [
            ("d=zero?timeout=0s", "timeout=0s"),
            ("d=zero?timeout=soon", "timeout=soon"),
            ("d=zero?timeout=2d", "timeout=2d"),
            ("d=zero?on_timeout=retry", "on_timeout=retry"),
            ("d=zero?timeout=1&timeout=2", "timeout given twice"),
        ] {
            assert!(why(bad).contains(says), "{bad}: {}", why(bad));
        }
    }

    #[test]
    fn rate_keys_are_the_vmms_for_every_scheme() {
        use devices::rate_limiter::Bucket;
        use std::num::NonZeroU64;
        let nz = |n| NonZeroU64::new(n).unwrap();
        let s = parse_spec("d=file:/tmp/x?ro&ops=1000&bandwidth=64M").unwrap();
        assert_eq!(s.rate_limit.ops, Some(Bucket::per_second(nz(1000))));
        assert_eq!(
            s.rate_limit.bandwidth,
            Some(Bucket::per_second(nz(64 << 20)))
        );
        assert!(s.read_only(), "the backend still gets its own keys");
        let s = parse_spec("z=zero?size=64K&ops=5&ops_burst=1").unwrap();
        assert_eq!(s.parsed, PagerUri::Anon { size: Some(65536) });
        assert_eq!(
            s.rate_limit.ops,
            Some(Bucket {
                rate: nz(5),
                burst: nz(1)
            })
        );
        let s = parse_spec("q=unix:/run/p.sock?bandwidth=1G&timeout=1").unwrap();
        assert_eq!(
            s.rate_limit.bandwidth,
            Some(Bucket::per_second(nz(1 << 30)))
        );
        assert_eq!(s.timeout, Some(Duration::from_secs(1)));
        let s = parse_spec("r=nbd://127.0.0.1:1/e?ops=10").unwrap();
        assert!(matches!(s.parsed, PagerUri::Nbd { port: 1, .. }));
        assert_eq!(s.rate_limit.ops, Some(Bucket::per_second(nz(10))));
        assert!(parse_spec("d=zero").unwrap().rate_limit.is_unlimited());
        for (bad, says) in [
            ("d=zero?ops=0", "ops=0: must be more than 0"),
            ("d=zero?bandwidth=fast", "bandwidth=fast: expected"),
            ("d=zero?ops=99999999999999999999", "too large"),
            ("d=zero?ops_burst=3", "ops_burst needs ops="),
        ] {
            let w = why(bad);
            assert!(w.contains(says) && w.starts_with("--object"), "{bad}: {w}");
        }
    }

    fn why(arg: &str) -> String {
        match parse_spec(arg) {
            Err(e) => e.to_string(),
            Ok(s) => panic!("{arg:?} parsed as {s:?}"),
        }
    }

    #[test]
    fn swap_object() {
        let mut specs = parse_specs(&["d=zero".to_string()]).unwrap();
        add_swap(&mut specs, None).unwrap();
        assert_eq!(specs.len(), 1, "--swap 0 adds nothing");
        add_swap(&mut specs, Some(64 << 20)).unwrap();
        assert_eq!(specs[1].name, "swap");
        assert_eq!(
            specs[1].parsed,
            PagerUri::Anon {
                size: Some(64 << 20)
            }
        );
        // The user's own `swap` is the guest's swap.
        let mut specs = parse_specs(&["swap=anon?size=8M".to_string()]).unwrap();
        add_swap(&mut specs, Some(1 << 30)).unwrap();
        assert_eq!(specs.len(), 1);
        assert_eq!(
            specs[0].parsed,
            PagerUri::Anon {
                size: Some(8 << 20)
            }
        );
    }

    #[test]
    fn good_specs() {
        let s = parse_spec("data=file:/tmp/x?ro").unwrap();
        assert_eq!(s.name, "data");
        assert!(s.read_only());
        assert_eq!(s.uri, "file:/tmp/x?ro");
        let s = parse_spec("z=zero?size=64K").unwrap();
        assert_eq!(s.parsed, PagerUri::Anon { size: Some(65536) });
        assert!(!s.read_only());
        assert!(!parse_spec("w=file:/tmp/x").unwrap().read_only());
        // Only the first '=' separates: the URI keeps its own.
        assert_eq!(parse_spec("a=anon?size=4096").unwrap().name, "a");
        assert_eq!(parse_spec("données=zero").unwrap().name, "données");
        let n = "n".repeat(MAX_NAME_LEN);
        assert_eq!(parse_spec(&format!("{n}=zero")).unwrap().name, n);
        assert!(matches!(
            parse_spec("r=nbd://127.0.0.1:1/e").unwrap().parsed,
            PagerUri::Nbd { port: 1, .. }
        ));
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        assert!(why("data").contains("expected NAME=URI"));
        assert!(why("=zero").contains("empty object name"));
        assert!(why(&format!("{}=zero", "n".repeat(48))).contains("48 bytes"));
        assert!(why("a b=zero").contains("whitespace"));
        assert!(why("a\u{7}=zero").contains("printable"));
        assert!(why("a\t=zero").contains("printable"));
        assert!(why("a=gopher://x").contains("unknown scheme"));
        assert!(why("a=").contains("bad URI"));
        assert!(why("a=zero?size=7").contains("bad size"));
        for w in [why("x"), why("=zero")] {
            assert!(w.starts_with("--object"), "{w}");
        }
    }

    #[test]
    fn duplicates_and_count() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let specs = parse_specs(&args(&["b=zero", "a=zero"])).unwrap();
        assert_eq!(specs[0].name, "b");
        assert_eq!(specs[1].name, "a");
        let e = parse_specs(&args(&["a=zero", "a=anon"])).unwrap_err();
        assert!(e.to_string().contains("duplicate object name \"a\""), "{e}");
        let many: Vec<String> = (0..=MAX_OBJECTS).map(|i| format!("o{i}=zero")).collect();
        assert!(matches!(
            parse_specs(&many),
            Err(VmmError::TooManyObjects { .. })
        ));
        assert_eq!(
            parse_specs(&many[..MAX_OBJECTS]).unwrap().len(),
            MAX_OBJECTS
        );
        assert!(parse_specs(&[]).unwrap().is_empty());
    }

    #[test]
    fn table_fits_the_window() {
        assert_eq!(MAX_OBJECTS, 59);
        let end = CONFIG_SPACE as usize + CONFIG_HDR_SIZE + MAX_OBJECTS * OBJECT_ENTRY_SIZE;
        assert!(end <= MMIO_WINDOW_SIZE as usize);
    }

    #[test]
    fn timeouts_and_ids() {
        let o = open_options(Duration::from_secs(1));
        assert_eq!(o.request_timeout, Duration::from_secs(1));
        assert_eq!(o.connect_timeout, Duration::from_secs(1));
        let o = open_options(Duration::from_secs(30));
        assert_eq!(o.connect_timeout, Duration::from_secs(5));
        let (a, b) = (kernel_id(), kernel_id());
        assert_ne!(a, b);
        assert_eq!(a.0 >> 32, u64::from(std::process::id()));
    }

    #[test]
    fn open_and_sync() {
        let specs = parse_specs(&["z=zero?size=64K".to_string()]).unwrap();
        let objs = open_all(&specs, &open_options(Duration::from_secs(1))).unwrap();
        assert_eq!(objs[0].pager.extent().unwrap(), 65536);
        assert!(sync_all(&objs, Duration::from_secs(1), None).is_empty());
        let specs = parse_specs(&["m=file:/nonexistent/duality".to_string()]).unwrap();
        let e = open_all(&specs, &OpenOptions::default()).err().unwrap();
        assert!(e.to_string().contains("/nonexistent/duality"), "{e}");
    }
}
