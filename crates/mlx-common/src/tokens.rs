//! Token ids from a model's tokenizer files, checked against its embedding table once at
//! load: an id past the table's end would read outside it at every request that meets
//! that token (stray memory, NaN, or a crash of the whole host).

use crate::ModelError;
use std::path::Path;
use tokenizers::Tokenizer;

/// Refuse a tokenizer (read from `file`) whose vocabulary, added tokens included, holds an
/// id of `rows` or more, `rows` being the embedding table's row count.
pub fn check_ids(tokenizer: &Tokenizer, rows: usize, file: &Path) -> Result<(), ModelError> {
    let vocab = tokenizer.get_vocab(true);
    match vocab.iter().max_by_key(|(_, id)| **id) {
        Some((token, &id)) if id as usize >= rows => Err(ModelError::Tokenizer {
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
