//! What an HLS client asks of `levee_core::hls`: a media file name (`File::parse`) and a
//! playlist query (`blocking_params`), any bytes.
//!
//! Input: one byte choosing the parser, then the text.
//!
//! Properties:
//! - no panic, whatever the text;
//! - a name that parses is the one name `File::name` writes for it (one meaning per name);
//! - a query that parses names a part only together with a segment, and its numbers are the
//!   last ones the query gives.
#![no_main]

use levee_core::hls::{blocking_params, File};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if which % 2 == 0 {
        if let Some(f) = File::parse(text) {
            assert_eq!(f.name(), text);
        }
    } else if let Ok(Some((msn, _))) = blocking_params(text) {
        let last = text
            .split('&')
            .filter_map(|kv| kv.strip_prefix("_HLS_msn="))
            .last()
            .expect("a segment number was given");
        assert_eq!(last.parse::<u64>().ok(), Some(msn));
    }
});
