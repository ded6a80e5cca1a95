//! The web dashboard: one self-contained page (HTML, CSS and JS, no external assets) with
//! live tables, five-minute graphs per backend from /api/stats/history, and the operator's
//! actions (move sessions) calling the same authenticated API.

/// Served at `/`; it polls the JSON APIs itself.
pub const PAGE: &str = include_str!("dashboard.html");
