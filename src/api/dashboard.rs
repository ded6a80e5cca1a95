//! The web dashboard: one self-contained page (HTML, CSS and JS, no external assets).

/// Served at `/`; it polls the JSON APIs itself.
pub const PAGE: &str = include_str!("dashboard.html");
