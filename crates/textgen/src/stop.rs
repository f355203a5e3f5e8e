//! Stop strings and streamed text.

/// Length of the longest suffix of `text` that is a proper prefix of a stop string (text
/// that must be held back because a stop string may be completing).
pub fn holdback(text: &str, stops: &[String]) -> usize {
    stops
        .iter()
        .flat_map(|s| {
            (1..s.len())
                .rev()
                .filter(move |k| s.is_char_boundary(*k))
                .map(move |k| &s[..k])
        })
        .filter(|p| text.ends_with(p))
        .map(str::len)
        .max()
        .unwrap_or(0)
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The text of one generated sequence: appended as tokens decode, cut at the first stop
/// string, and handed out in deltas that never contain (part of) a stop string.
#[derive(Default, Debug, Clone)]
pub struct TextStream {
    text: String,
    emitted: usize,
}

impl TextStream {
    /// Append decoded text; returns true when a stop string now occurs (the text is cut
    /// before it).
    pub fn push(&mut self, delta: &str, stops: &[String]) -> bool {
        self.text.push_str(delta);
        let longest = stops.iter().map(String::len).max().unwrap_or(0);
        let from = floor_boundary(&self.text, self.emitted.saturating_sub(longest));
        let cut = stops
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min();
        match cut {
            Some(c) => {
                self.text.truncate(c);
                true
            }
            None => false,
        }
    }

    /// Text not yet handed out: everything when `finished`, else all but what might be
    /// the start of a stop string.
    pub fn take(&mut self, finished: bool, stops: &[String]) -> String {
        let end = if finished {
            self.text.len()
        } else {
            self.text.len() - holdback(&self.text, stops)
        };
        let start = self.emitted.min(end);
        self.emitted = self.emitted.max(end);
        self.text[start..end].to_owned()
    }

    /// The text handed out so far.
    pub fn emitted(&self) -> &str {
        &self.text[..self.emitted.min(self.text.len())]
    }

    /// The whole text so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Consume into the whole text.
    pub fn into_text(self) -> String {
        self.text
    }
}

/// Assembles byte-level token pieces into text without splitting a UTF-8 character: bytes
/// of an incomplete character wait for the next piece; invalid bytes become U+FFFD.
#[derive(Default, Debug)]
pub struct Utf8Pieces {
    pending: Vec<u8>,
}

impl Utf8Pieces {
    /// Add a piece; returns the text that is complete now.
    pub fn push(&mut self, piece: &[u8]) -> String {
        self.pending.extend_from_slice(piece);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(
                        std::str::from_utf8(&self.pending[..valid]).expect("valid prefix"),
                    );
                    match e.error_len() {
                        // Incomplete character at the end: keep it for the next piece.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Whatever is left at the end of the sequence (an incomplete character → U+FFFD).
    pub fn flush(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdback_keeps_possible_stop_prefixes() {
        let stops = vec!["<end>".to_owned(), "STOP".to_owned()];
        assert_eq!(holdback("hello <en", &stops), 3);
        assert_eq!(holdback("hello ST", &stops), 2);
        assert_eq!(holdback("hello", &stops), 0);
        assert_eq!(holdback("日本", &["本当".to_owned()]), "本".len());
    }

    #[test]
    fn a_stop_string_across_pushes_is_cut_and_never_emitted() {
        let stops = vec!["of Fr".to_owned()];
        let mut t = TextStream::default();
        let mut out = String::new();
        for piece in ["The", " capital", " of", " France", " is"] {
            let stopped = t.push(piece, &stops);
            out.push_str(&t.take(stopped, &stops));
            if stopped {
                break;
            }
        }
        assert_eq!(out, "The capital ");
        assert_eq!(t.text(), "The capital ");
    }

    #[test]
    fn utf8_pieces_wait_for_whole_characters() {
        let mut u = Utf8Pieces::default();
        let bytes = "日本".as_bytes();
        assert_eq!(u.push(&bytes[..2]), "");
        assert_eq!(u.push(&bytes[2..4]), "日");
        assert_eq!(u.push(&bytes[4..]), "本");
        assert_eq!(u.push(&[0xff, b'a']), "\u{FFFD}a");
        assert_eq!(u.push(&[0xe6]), "");
        assert_eq!(u.flush(), "\u{FFFD}");
    }
}
