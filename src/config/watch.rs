//! Watching the config file: when its contents change it is parsed and validated, and a good
//! config is handed on for applying; a bad one is logged with the key and reason, and the
//! running config stays.

use super::{load_file, Loaded};
use std::path::PathBuf;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Reads `path` every `interval` and compares contents. Polling (not inotify) also follows
/// editors that replace the file and tools that rewrite it through a symlink, and comparing
/// contents ignores touches and mtime granularity; config files are small.
pub fn start(
    path: PathBuf,
    interval: Duration,
    shutdown: CancellationToken,
    mut on_change: impl FnMut(Loaded) + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut last_text = std::fs::read(&path).ok();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = crate::timer::sleep(interval) => {}
            }
            // A failed read (the file mid-replace, a permission slip) is not a change: treating
            // it as one would re-apply the file once it reads again and revert what the API
            // changed since.
            let text = match std::fs::read(&path) {
                Ok(t) => Some(t),
                Err(e) => {
                    debug!(file = %path.display(), error = %e, "config file unreadable; the running config stays");
                    continue;
                }
            };
            if text == last_text {
                continue;
            }
            last_text = text;
            match load_file(&path) {
                Ok(loaded) => on_change(loaded),
                Err(e) => warn!(
                    file = %path.display(),
                    error = %e,
                    "config file rejected; the running config stays"
                ),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn a_changed_file_is_loaded_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, "[proxy]\nmax-connections = 1\n").unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let stop = CancellationToken::new();
        let task = start(
            path.clone(),
            Duration::from_millis(20),
            stop.clone(),
            move |l| s2.lock().unwrap().push(l.config.proxy.max_connections),
        );
        let wait_for = |n: usize| {
            let seen = seen.clone();
            async move {
                for _ in 0..250 {
                    if seen.lock().unwrap().len() >= n {
                        return true;
                    }
                    crate::timer::sleep(Duration::from_millis(20)).await;
                }
                false
            }
        };
        crate::timer::sleep(Duration::from_millis(50)).await;
        std::fs::write(&path, "[proxy]\nmax-connections = \"many\"\n").unwrap();
        crate::timer::sleep(Duration::from_millis(150)).await;
        assert!(
            seen.lock().unwrap().is_empty(),
            "invalid file must not be applied"
        );
        std::fs::write(&path, "[proxy]\nmax-connections = 7\n").unwrap();
        assert!(wait_for(1).await, "valid change not seen");
        assert_eq!(seen.lock().unwrap()[0], 7);
        // The file vanishes for a while and comes back unchanged: nothing is re-applied.
        let aside = dir.path().join("aside.toml");
        std::fs::rename(&path, &aside).unwrap();
        crate::timer::sleep(Duration::from_millis(150)).await;
        std::fs::rename(&aside, &path).unwrap();
        crate::timer::sleep(Duration::from_millis(150)).await;
        assert_eq!(
            seen.lock().unwrap().len(),
            1,
            "an unreadable spell is not a change"
        );
        stop.cancel();
        task.await.unwrap();
    }
}
