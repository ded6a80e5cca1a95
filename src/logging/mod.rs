//! TEMPORARY stub (replaced by the real module on merge).
use crate::config::LogConfig;
pub struct LogHandle;
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LogError(String);
pub fn init(cfg: &LogConfig) -> Result<LogHandle, LogError> {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new(&cfg.level)).try_init();
    Ok(LogHandle)
}
