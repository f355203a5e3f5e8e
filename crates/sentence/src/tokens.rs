//! Token ids from a model's tokenizer files, checked against its embedding table once at
//! load: an id past the table's end would read outside it at every request that meets
//! that token (stray memory, NaN, or a crash of the whole host).

use crate::SentenceError;
use std::path::Path;
use tokenizers::Tokenizer;

/// Read `file` (a `tokenizer.json`). The tokenizers library panics on some malformed
/// files (a `decoder` of an unknown shape, found by fuzzing): that is an error naming
/// the file too, not a panic of the loading plugin.
pub fn load(file: &Path) -> Result<Tokenizer, SentenceError> {
    let bytes = std::fs::read(file).map_err(|e| SentenceError::io(file, e))?;
    let bad = |msg: String| SentenceError::Tokenizer {
        file: file.to_owned(),
        msg,
    };
    match std::panic::catch_unwind(|| Tokenizer::from_bytes(&bytes)) {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(bad(e.to_string())),
        Err(p) => {
            let why = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(bad(format!(
                "not a tokenizer file the tokenizers library can read (it failed with `{why}`)"
            )))
        }
    }
}

/// Refuse a tokenizer (read from `file`) whose vocabulary, added tokens included, holds an
/// id of `rows` or more, `rows` being the embedding table's row count.
pub fn check_ids(tokenizer: &Tokenizer, rows: usize, file: &Path) -> Result<(), SentenceError> {
    let vocab = tokenizer.get_vocab(true);
    match vocab.iter().max_by_key(|(_, id)| **id) {
        Some((token, &id)) if id as usize >= rows => Err(SentenceError::Tokenizer {
            file: file.to_owned(),
            msg: format!(
                "token {token:?} has id {id}, outside the model's embedding table of {rows} \
                 rows (vocab_size); the tokenizer does not belong to these weights"
            ),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer(max_id: u32) -> Tokenizer {
        let json = format!(
            r#"{{"version":"1.0","added_tokens":[],"normalizer":null,"pre_tokenizer":{{"type":"Whitespace"}},
            "post_processor":null,"decoder":null,
            "model":{{"type":"WordLevel","vocab":{{"[UNK]":0,"a":1,"far":{max_id}}},"unk_token":"[UNK]"}}}}"#
        );
        Tokenizer::from_bytes(json.as_bytes()).unwrap()
    }

    #[test]
    fn a_tokenizer_file_the_library_panics_on_is_an_error() {
        // The fuzzer's find: a `decoder` that is neither tagged nor a known shape.
        let dir = std::env::temp_dir().join(format!("tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tokenizer.json");
        let crash = include_bytes!("../../../fuzz/seeds/tokenizer/crash-decoder-helper-panic");
        std::fs::write(&file, crash).unwrap();
        let e = load(&file).unwrap_err().to_string();
        assert!(
            e.contains("tokenizer.json") && e.contains("tokenizers library"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ids_past_the_table_are_refused_naming_the_token() {
        assert!(check_ids(&tokenizer(9), 10, Path::new("t.json")).is_ok());
        let e = check_ids(&tokenizer(10), 10, Path::new("t.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t.json") && e.contains("\"far\" has id 10"),
            "{e}"
        );
        let e = check_ids(&tokenizer(1_000_000_000), 10, Path::new("t.json")).unwrap_err();
        assert!(e.to_string().contains("1000000000"), "{e}");
    }
}
