//! Raw Ogg mounts: listeners on any progressive Ogg URL (an Icecast mount, or levee's
//! `/live/{id}.ogg`) without levee's API, and the settings of the Icecast-style source that
//! publishes the synthetic marker stream to it ([`crate::actors::source`]).

use crate::error::{Error, Result};
use crate::plan::marker;
use crate::plan::scenario::Scenario;
use crate::plan::target::Target;
use levee_media::ogg::{self};
use serde::{Deserialize, Serialize};

/// How the source asks to publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceMethod {
    /// `PUT` with `Expect: 100-continue` (Icecast 2.4+, ffmpeg, levee).
    #[default]
    Put,
    /// Legacy `SOURCE` (Icecast 1 and 2, libshout before 2.4), answered `200 OK` at once.
    Source,
}

/// A raw progressive Ogg URL to listen to, and optionally to publish to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    /// `http://HOST:PORT/PATH` on loopback.
    pub url: String,
    /// `user:password` of an Icecast-style source; without it nothing is published (the mount
    /// is fed by something else).
    #[serde(default)]
    pub source_auth: Option<String>,
    /// How the source asks to publish.
    #[serde(default)]
    pub source_method: SourceMethod,
    /// Audio per Ogg page sent by the source, ms (a multiple of 20, up to 1000; ffmpeg's
    /// default page lasts 1 s).
    #[serde(default = "default_page_ms")]
    pub page_ms: u32,
}

fn default_page_ms() -> u32 {
    20
}

impl Mount {
    /// The path (and query) of the URL.
    pub fn path(&self) -> String {
        let rest = self.url.strip_prefix("http://").unwrap_or(&self.url);
        match rest.find('/') {
            Some(i) => rest[i..].to_owned(),
            None => "/".to_owned(),
        }
    }

    /// levee's space id when the path is `/live/{id}.ogg`, else the path: the report's `space`.
    pub fn label(&self) -> String {
        let path = self.path();
        path.strip_prefix("/live/")
            .and_then(|r| r.strip_suffix(".ogg"))
            .filter(|id| !id.is_empty() && !id.contains('/'))
            .map_or(path.clone(), str::to_owned)
    }

    pub(crate) fn packets_per_page(&self) -> u32 {
        (self.page_ms / 20).max(1)
    }
}

/// Checks a scenario's mount, if it has one.
pub fn validate(sc: &Scenario) -> Result<()> {
    let Some(m) = &sc.mount else { return Ok(()) };
    let t = Target::parse(&m.url)?;
    if Target::parse(&sc.server)?.addr != t.addr {
        return Err(Error::invalid(format!(
            "mount.url {} and server {} must name the same host:port",
            m.url, sc.server
        )));
    }
    if sc.space.is_some() {
        return Err(Error::invalid("a mount URL and a space exclude each other"));
    }
    if sc.mix.ws > 0.0 {
        return Err(Error::invalid(
            "a mount URL is listened to on Ogg only (mix.ws must be 0)",
        ));
    }
    if !m.path().starts_with('/') || m.path().len() > 1024 || m.path().contains(char::is_whitespace)
    {
        return Err(Error::invalid(format!("mount.url {}: bad path", m.url)));
    }
    if m.page_ms < 20 || m.page_ms > 1000 || m.page_ms % 20 != 0 {
        return Err(Error::invalid(
            "mount.page_ms must be a multiple of 20 within 20..=1000",
        ));
    }
    let size = marker::packet_size(sc.host.bitrate);
    if m.packets_per_page() as usize * ogg::lacing_len(size) > 255 {
        return Err(Error::invalid(format!(
            "mount.page_ms {} at {} bit/s needs more than 255 lacing values per page",
            m.page_ms, sc.host.bitrate
        )));
    }
    if let Some(a) = &m.source_auth {
        if !a.contains(':') || a.contains(['\r', '\n']) {
            return Err(Error::invalid("mount.source_auth must be USER:PASSWORD"));
        }
    }
    Ok(())
}

/// The path listeners of `sc` request: the mount's, else levee's `/live/{space}.ogg`.
pub fn ogg_path(sc: &Scenario, space: &str) -> String {
    match &sc.mount {
        Some(m) => m.path(),
        None => format!("/live/{space}.ogg"),
    }
}
