//! The web pages, embedded in the binary (sources in `web/` at the repository root).

/// The lobby: live spaces and a form to create one.
pub const LOBBY_HTML: &str = include_str!("../../../../web/lobby.html");
/// A space's listening page.
pub const SPACE_HTML: &str = include_str!("../../../../web/space.html");
/// The audience dashboard (a space's at `/space/{id}/dashboard`, the node's at `/dashboard`).
pub const DASHBOARD_HTML: &str = include_str!("../../../../web/dashboard.html");
/// A speaker's page (microphone → WebRTC with WHIP; everyone else comes back).
pub const SPEAK_HTML: &str = include_str!("../../../../web/speak.html");
/// A space's host page (microphone → Opus → WebSocket).
pub const HOST_HTML: &str = include_str!("../../../../web/host.html");

const ASSETS: &[(&str, &str, &str)] = &[
    (
        "levee.css",
        "text/css; charset=utf-8",
        include_str!("../../../../web/levee.css"),
    ),
    (
        "lobby.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../../web/lobby.js"),
    ),
    (
        "player.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../../web/player.js"),
    ),
    (
        "host.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../../web/host.js"),
    ),
    (
        "capture-worklet.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../../web/capture-worklet.js"),
    ),
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../../web/dashboard.js"),
    ),
    (
        "speak.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../../web/speak.js"),
    ),
    (
        "stage.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../../web/stage.js"),
    ),
    (
        "pow-worker.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../../web/pow-worker.js"),
    ),
];

/// The MIME type and body of the asset called `name`.
pub fn asset(name: &str) -> Option<(&'static str, &'static str)> {
    ASSETS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, mime, body)| (*mime, *body))
}
