//! CLIP's vocabulary, compiled into the binary. A single-file checkpoint carries no tokenizer,
//! so the BPE merge list OpenAI published with CLIP (`assets/tokenizer/`, from the
//! `open_clip_torch` wheel) is embedded and the vocabulary is built from it at load, exactly as
//! CLIP's `SimpleTokenizer` does: the 256 byte symbols, their `</w>` forms, one token per merge
//! (the first 48,894 merges) and the two specials, 49,408 ids in all.

use std::io::Read;

use tokenizers::models::bpe::{Merges, Vocab, BPE};

/// The gzipped merge list, as OpenAI ships it.
const MERGES_GZ: &[u8] = include_bytes!("../../../assets/tokenizer/bpe_simple_vocab_16e6.txt.gz");

/// Merges CLIP uses: its vocabulary has 49,408 entries = 512 byte symbols + merges + 2 specials.
pub const MERGE_COUNT: usize = 49_408 - 512 - 2;

/// The vocabulary size every CLIP text encoder of the SD family has.
pub const VOCAB_SIZE: usize = 49_408;

/// GPT-2's reversible byte-to-character table, in CLIP's order: printable bytes first.
fn byte_symbols() -> Vec<char> {
    let mut bytes: Vec<u32> = (u32::from(b'!')..=u32::from(b'~'))
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars = bytes.clone();
    let mut extra = 0;
    for b in 0..256 {
        if !bytes.contains(&b) {
            bytes.push(b);
            chars.push(256 + extra);
            extra += 1;
        }
    }
    chars.into_iter().filter_map(char::from_u32).collect()
}

/// The merges and the vocabulary in CLIP's id order.
fn vocab_and_merges() -> Result<(Vec<String>, Merges), String> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(MERGES_GZ)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot unpack the embedded BPE merges: {e}"))?;
    // Line 0 is the version header.
    let merges: Merges = text
        .lines()
        .skip(1)
        .take(MERGE_COUNT)
        .map(|line| match line.split_once(' ') {
            Some((a, b)) => Ok((a.to_string(), b.to_string())),
            None => Err(format!("malformed merge line {line:?}")),
        })
        .collect::<Result<_, _>>()?;
    if merges.len() != MERGE_COUNT {
        return Err(format!("{} merges, CLIP needs {MERGE_COUNT}", merges.len()));
    }
    let symbols: Vec<String> = byte_symbols().into_iter().map(String::from).collect();
    let mut vocab = symbols.clone();
    vocab.extend(symbols.iter().map(|s| format!("{s}</w>")));
    vocab.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
    vocab.extend(["<|startoftext|>".to_string(), "<|endoftext|>".to_string()]);
    Ok((vocab, merges))
}

/// CLIP's BPE model (before the normaliser and pre-tokeniser the tokenizer adds).
pub fn bpe() -> Result<BPE, String> {
    let (vocab, merges) = vocab_and_merges()?;
    let ids: Vocab = vocab
        .into_iter()
        .enumerate()
        .map(|(i, token)| (token, i as u32))
        .collect();
    if ids.len() != VOCAB_SIZE {
        return Err(format!(
            "the embedded vocabulary has {} distinct tokens, CLIP has {VOCAB_SIZE}",
            ids.len()
        ));
    }
    BPE::builder()
        .vocab_and_merges(ids, merges)
        .end_of_word_suffix("</w>".into())
        .unk_token("<|endoftext|>".into())
        .build()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vocabulary_is_clips_49408_tokens_with_the_specials_last() {
        let (vocab, merges) = vocab_and_merges().unwrap();
        assert_eq!(vocab.len(), VOCAB_SIZE);
        assert_eq!(merges.len(), 48_894);
        assert_eq!(vocab[0], "!");
        assert_eq!(vocab[256], "!</w>");
        assert_eq!(vocab[49_406], "<|startoftext|>");
        assert_eq!(vocab[49_407], "<|endoftext|>");
    }
}
