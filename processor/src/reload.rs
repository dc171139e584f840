//! Live journey reloads for `waymark run`: the journeys are loaded again without a restart,
//! when a file under `journeys` changes (`journeys-watch-secs`) or on
//! `POST /admin/journeys/reload`.
//!
//! A reload is only applied if it is safe for the customers in flight ([`check`]): a version
//! that runs may not change in place or disappear (unless a later version migrates its
//! instances), and a new version takes effect at an `effective-from` after every event already
//! processed. Instances then keep the version they entered with (see
//! [`crate::journey::JourneySet`]), so the outputs are exactly what `waymark simulate` computes
//! with every version loaded from the start. The pipeline applies a reload between two
//! transactions; this module must not touch Kafka or state itself.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use serde::Serialize;

use crate::engine::Engine;
use crate::journey::{Journey, JourneySet};
use crate::model::{Millis, format_millis};

/// What a safe reload changes.
#[derive(Debug, Default)]
pub struct Changes {
    /// Versions loaded now that were not before.
    pub added: Vec<Arc<Journey>>,
    /// Versions no longer loaded (their instances, if any, migrate to a later version), and
    /// journeys removed altogether.
    pub removed: Vec<Arc<Journey>>,
}

impl Changes {
    /// Whether the reload changes nothing.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// How far a processor got, over its partitions (`None`: nothing processed here).
#[derive(Debug, Clone, Copy, Default)]
pub struct Processed {
    /// The newest customer event time processed.
    pub newest_event: Option<Millis>,
    /// The furthest watermark: outputs due up to it may have gone out.
    pub watermark: Option<Millis>,
}

/// Checks that running `new` instead of `old` is safe for the customers in flight, given how
/// far the processor got. A new version must take effect after every event processed (no
/// customer entered at or after it yet), and one that migrates instances after the watermark
/// too (nothing of the old version due after it went out). Says what is wrong and what to do
/// otherwise.
pub fn check(old: &JourneySet, new: &JourneySet, processed: Processed) -> Result<Changes, String> {
    let processed_until = processed.newest_event;
    let find = |set: &JourneySet, j: &Journey| {
        set.iter()
            .find(|n| n.name == j.name && n.version == j.version)
            .cloned()
    };
    let mut changes = Changes::default();
    for was in old.iter() {
        match find(new, was) {
            Some(now) if now.digest != was.digest => {
                return Err(format!(
                    "{}: journey `{}` version {} changed in place while it runs; its instances in flight would change what they do and could emit again. Keep version {} as it was and put the change in version {} with an `effective-from:`",
                    now.source.display(),
                    was.name,
                    was.version,
                    was.version,
                    was.version + 1
                ));
            }
            Some(_) => {}
            None => {
                let later: Vec<&Arc<Journey>> = new
                    .iter()
                    .filter(|n| n.name == was.name && n.version > was.version)
                    .collect();
                let migrated = later.iter().any(|n| n.migrate_from.contains(&was.version));
                let removed_journey = new.iter().all(|n| n.name != was.name);
                if !migrated && !removed_journey {
                    let newest = later.last().map_or(was.version + 1, |n| n.version);
                    return Err(format!(
                        "journey `{}` version {} ({}) is no longer loaded, but customers may still be on it; keep its file beside the new version, or add `migrate-from: [{}]` to version {newest} to move them",
                        was.name,
                        was.version,
                        was.source.display(),
                        was.version
                    ));
                }
                changes.removed.push(was.clone());
            }
        }
    }
    for now in new.iter() {
        if find(old, now).is_some() {
            continue;
        }
        let Some(from) = now.effective_from else {
            return Err(format!(
                "{}: journey `{}` is new: give it `effective-from:` (an event time after the events processed so far{}), so that customers' earlier events do not enter it",
                now.source.display(),
                now.name,
                processed_until
                    .map(|p| format!(", {}", format_millis(p)))
                    .unwrap_or_default()
            ));
        };
        if let Some(processed) = processed_until
            && from <= processed
        {
            return Err(format!(
                "{}: journey `{}` version {}: effective-from {} is not after the events already processed (up to {}): customers who entered since then ran on the version before. Set it later than {}",
                now.source.display(),
                now.name,
                now.version,
                format_millis(from),
                format_millis(processed),
                format_millis(processed)
            ));
        }
        if let Some(watermark) = processed.watermark
            && !now.migrate_from.is_empty()
            && from <= watermark
        {
            return Err(format!(
                "{}: journey `{}` version {}: it migrates instances in flight at {}, but the watermark is already at {}: actions of the versions it migrates due since then may have gone out. Set `effective-from` later than {}",
                now.source.display(),
                now.name,
                now.version,
                format_millis(from),
                format_millis(watermark),
                format_millis(watermark)
            ));
        }
        changes.added.push(now.clone());
    }
    Ok(changes)
}

/// The earliest time, later than `watermark`, at which a version of `engine` migrates the
/// instances in flight: every customer must be looked at then.
pub fn next_migration(engine: &Engine, watermark: Millis) -> Option<Millis> {
    engine
        .journeys()
        .iter()
        .filter(|j| !j.migrate_from.is_empty())
        .filter_map(|j| j.effective_from)
        .filter(|from| *from > watermark)
        .min()
}

/// One loaded journey version, as a reload reports it.
#[derive(Debug, Clone, Serialize)]
pub struct Loaded {
    /// Journey name.
    pub journey: String,
    /// Version.
    pub version: u32,
    /// When entries start getting it (RFC 3339), if it says.
    pub effective_from: Option<String>,
    /// Versions whose instances in flight move to it.
    pub migrate_from: Vec<u32>,
    /// Its file.
    pub source: String,
}

impl Loaded {
    /// How `j` is reported.
    pub fn of(j: &Journey) -> Self {
        Loaded {
            journey: j.name.clone(),
            version: j.version,
            effective_from: j.effective_from.map(format_millis),
            migrate_from: j.migrate_from.clone(),
            source: j.source.display().to_string(),
        }
    }
}

/// What a reload did (the body of `POST /admin/journeys/reload`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `applied` or `unchanged`.
    pub result: &'static str,
    /// Versions added, e.g. `trial v2`.
    pub added: Vec<String>,
    /// Versions removed.
    pub removed: Vec<String>,
    /// Customers to be looked at again when an instance migration takes effect.
    pub customers_to_migrate: usize,
    /// Every version running now.
    pub journeys: Vec<Loaded>,
}

impl Report {
    /// The report of a reload of `set` that made `changes`.
    pub fn new(set: &JourneySet, changes: &Changes, customers_to_migrate: usize) -> Self {
        let label = |j: &Arc<Journey>| format!("{} v{}", j.name, j.version);
        Report {
            result: if changes.is_empty() {
                "unchanged"
            } else {
                "applied"
            },
            added: changes.added.iter().map(label).collect(),
            removed: changes.removed.iter().map(label).collect(),
            customers_to_migrate,
            journeys: set.iter().map(|j| Loaded::of(j)).collect(),
        }
    }
}

/// The answer to a reload request.
pub type Reply = tokio::sync::oneshot::Sender<Result<Report, String>>;

/// The journeys a running processor uses, and the reloads asked of it. Shared by the pipeline
/// (which applies reloads between transactions and keeps the engine across restarts), the
/// HTTP endpoint and the file watch.
pub struct LiveJourneys {
    path: PathBuf,
    engine: Mutex<Arc<Engine>>,
    sender: mpsc::Sender<Option<Reply>>,
    requests: Mutex<mpsc::Receiver<Option<Reply>>>,
}

impl LiveJourneys {
    /// Journeys loaded from `path` into `engine`.
    pub fn new(path: &Path, engine: Arc<Engine>) -> Arc<Self> {
        let (sender, requests) = mpsc::channel();
        Arc::new(LiveJourneys {
            path: path.to_owned(),
            engine: Mutex::new(engine),
            sender,
            requests: Mutex::new(requests),
        })
    }

    /// Where the journeys are loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The engine running now.
    pub fn engine(&self) -> Arc<Engine> {
        self.engine
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Runs `engine` from now on (also after a restart of the pipeline).
    pub fn set_engine(&self, engine: Arc<Engine>) {
        *self
            .engine
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = engine;
    }

    /// Asks for a reload; the answer comes on the returned receiver once the pipeline applied
    /// or refused it.
    pub fn request(&self) -> tokio::sync::oneshot::Receiver<Result<Report, String>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let _ = self.sender.send(Some(reply));
        answer
    }

    /// Asks for a reload without waiting for the answer (the file watch).
    pub fn nudge(&self) {
        let _ = self.sender.send(None);
    }

    /// The next reload asked for, if any: `Some(reply)` (`reply` is `None` for a nudge).
    pub fn next(&self) -> Option<Option<Reply>> {
        self.requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .try_recv()
            .ok()
    }
}

/// A fingerprint of the journey files at `path` (names and contents), `None` if unreadable.
fn fingerprint(path: &Path) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut files = if path.is_dir() {
        std::fs::read_dir(path)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
            .collect()
    } else {
        vec![path.to_owned()]
    };
    files.sort();
    let mut hasher = std::hash::DefaultHasher::new();
    for file in files {
        file.hash(&mut hasher);
        std::fs::read(&file).ok()?.hash(&mut hasher);
    }
    Some(hasher.finish())
}

/// Watches the journey files every `every`, for the life of the process, and asks for a
/// reload when they change. Polling (rather than inotify) also sees a Kubernetes ConfigMap
/// update, which swaps a symlink.
pub fn watch(live: Arc<LiveJourneys>, every: Duration) {
    let mut last = fingerprint(live.path());
    let spawned = std::thread::Builder::new()
        .name("waymark-journey-watch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                let now = fingerprint(live.path());
                if now.is_some() && now != last {
                    tracing::info!(path = %live.path().display(), "Journey files changed; reloading.");
                    last = now;
                    live.nudge();
                }
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "Cannot start the journey file watch; reload with POST /admin/journeys/reload.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journey::parsed as set;

    const V1: &str = "journey: trial\nversion: 1\nsteps:\n  - id: start\n    event: trial.started\n  - id: paid\n    event: subscription.paid\ngoal: paid\n";
    const T: Millis = 1_772_400_000_000;

    fn v2(from: Millis, migrate: bool) -> String {
        V1.replace(
            "version: 1\n",
            &format!(
                "version: 2\neffective-from: {}\n{}",
                format_millis(from),
                if migrate { "migrate-from: [1]\n" } else { "" }
            ),
        )
    }

    /// Events processed up to `t`, the watermark just behind.
    fn seen(t: Millis) -> Processed {
        Processed {
            newest_event: Some(t),
            watermark: Some(t - 1000),
        }
    }

    #[test]
    fn a_new_version_after_the_processed_events_is_added() {
        let changes = check(&set(&[V1]), &set(&[V1, &v2(T + 1, false)]), seen(T)).unwrap();
        assert_eq!(changes.added.len(), 1);
        assert_eq!(changes.added[0].version, 2);
        assert!(changes.removed.is_empty());
        assert!(check(&set(&[V1]), &set(&[V1]), seen(T)).unwrap().is_empty());
    }

    #[test]
    fn a_new_version_effective_before_a_processed_event_is_refused() {
        let err = check(&set(&[V1]), &set(&[V1, &v2(T, false)]), seen(T)).unwrap_err();
        assert!(
            err.contains("is not after the events already processed"),
            "{err}"
        );
        // Nothing processed here yet: nothing to contradict.
        assert!(
            check(
                &set(&[V1]),
                &set(&[V1, &v2(T, false)]),
                Processed::default()
            )
            .is_ok()
        );
    }

    #[test]
    fn a_migrating_version_must_take_effect_after_the_watermark() {
        let ahead = Processed {
            newest_event: Some(T),
            watermark: Some(T + 10),
        };
        let err = check(&set(&[V1]), &set(&[V1, &v2(T + 5, true)]), ahead).unwrap_err();
        assert!(err.contains("the watermark is already at"), "{err}");
        // Not migrating: the instances in flight stay on version 1 whatever went out.
        assert!(check(&set(&[V1]), &set(&[V1, &v2(T + 5, false)]), ahead).is_ok());
    }

    #[test]
    fn a_version_changed_in_place_is_refused() {
        let changed = V1.replace("goal: paid", "goal: paid\nre-entry: after-end");
        let err = check(&set(&[V1]), &set(&[&changed]), seen(T)).unwrap_err();
        assert!(err.contains("version 1 changed in place"), "{err}");
        assert!(err.contains("put the change in version 2"), "{err}");
    }

    #[test]
    fn a_version_removed_needs_a_later_version_migrating_it() {
        let err = check(&set(&[V1]), &set(&[&v2(T + 1, false)]), seen(T)).unwrap_err();
        assert!(
            err.contains("add `migrate-from: [1]` to version 2"),
            "{err}"
        );
        let changes = check(&set(&[V1]), &set(&[&v2(T + 1, true)]), seen(T)).unwrap();
        assert_eq!((changes.added.len(), changes.removed.len()), (1, 1));
    }

    #[test]
    fn a_new_journey_needs_effective_from_and_a_removed_one_is_allowed() {
        let other = V1.replace("journey: trial", "journey: other");
        let err = check(&set(&[V1]), &set(&[V1, &other]), seen(T)).unwrap_err();
        assert!(
            err.contains("journey `other` is new: give it `effective-from:`"),
            "{err}"
        );
        let removed = check(&set(&[V1, &other]), &set(&[V1]), seen(T)).unwrap();
        assert_eq!(removed.removed[0].name, "other");
    }

    #[test]
    fn the_file_watch_sees_a_changed_or_added_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), V1).unwrap();
        let first = fingerprint(dir.path());
        assert_eq!(first, fingerprint(dir.path()));
        std::fs::write(dir.path().join("b.yaml"), v2(T, false)).unwrap();
        let second = fingerprint(dir.path());
        assert_ne!(first, second);
        std::fs::write(dir.path().join("notes.txt"), "not a journey").unwrap();
        assert_eq!(second, fingerprint(dir.path()));
    }
}
