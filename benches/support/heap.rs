//! Heap bytes per cached object, counted by the allocator of the benchmark process.
//!
//! A benchmark that wants the figure installs [`Counting`] as its global allocator. Objects
//! are listed from the API server, kept as JSON, and only then parsed, trimmed with the
//! controller's own trim function and held in a reflector store the way the controller's
//! caches hold them: the live heap before and after the store is built is the store's cost.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use kube::Resource;
use kube::api::{Api, ListParams};
use kube::runtime::reflector;
use kube::runtime::watcher;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bytes allocated and not yet freed, over the whole process.
static LIVE: AtomicIsize = AtomicIsize::new(0);

/// The system allocator, counting live bytes.
pub struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is only
// arithmetic on the sizes it was given.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc` is passed on as is.
        unsafe { System.dealloc(pointer, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc` is passed on as is.
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        moved
    }
}

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// The objects of one kind a cache held, and the heap they took.
pub struct CachedKind {
    pub objects: usize,
    pub bytes_per_object: f64,
}

/// Lists `api` (with `labels`, as the controller's watch selects), then measures the heap of a
/// reflector store holding every listed object after `trim`. Needs [`Counting`] installed.
pub async fn cached_bytes<K>(
    api: Api<K>,
    labels: Option<&str>,
    trim: fn(&mut K),
) -> anyhow::Result<CachedKind>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let mut params = ListParams::default();
    if let Some(labels) = labels {
        params = params.labels(labels);
    }
    // As the API server sent them: JSON, held for the whole measurement.
    let listed: Vec<String> = api
        .list(&params)
        .await?
        .items
        .iter()
        .map(serde_json::to_string)
        .collect::<Result<_, _>>()?;
    let before = live();
    let (store, mut writer) = reflector::store::<K>();
    for json in &listed {
        let mut object: K = serde_json::from_str(json)?;
        trim(&mut object);
        writer.apply_watcher_event(&watcher::Event::Apply(object));
    }
    let bytes = live() - before;
    anyhow::ensure!(
        store.state().len() == listed.len(),
        "the store holds {} of {} objects (a name listed twice?)",
        store.state().len(),
        listed.len()
    );
    Ok(CachedKind {
        objects: listed.len(),
        bytes_per_object: bytes as f64 / listed.len().max(1) as f64,
    })
}
