//! The CLIP BPE tokenizer, built from `tokenizer/vocab.json` + `merges.txt` (what the SD repos
//! ship) or from a `tokenizer.json`, and the chunking that lets prompts run past CLIP's
//! 77-token window: tokens are cut into 75-token chunks, each framed by start/end tokens and
//! padded, and their embeddings are concatenated (as the SD web UIs do).

use std::path::Path;

use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use crate::error::{EngineError, Result};

const START: &str = "<|startoftext|>";
const END: &str = "<|endoftext|>";
/// CLIP's word pattern (transformers' CLIPTokenizerFast).
const CLIP_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// What a CLIP text encoder was trained to see after a prompt's end token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipPadding {
    /// `<|endoftext|>` again (OpenAI's CLIP: SD 1.x, SDXL's first encoder).
    EndOfText,
    /// `!`, id 0 (OpenCLIP: SD 2.x, SDXL's second encoder).
    Exclamation,
}

/// A prompt as fixed-size windows of token ids, ready for the text encoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptTokens {
    /// Each window is exactly `window` ids: start, up to window-2 tokens, end, padding.
    pub chunks: Vec<Vec<u32>>,
    /// Tokens in the prompt, without start/end/padding.
    pub token_count: usize,
}

/// CLIP's tokenizer plus the ids needed to frame windows.
pub struct ClipTokenizer {
    inner: Tokenizer,
    start: u32,
    end: u32,
    pad: u32,
    window: usize,
}

impl ClipTokenizer {
    /// Loads the tokenizer folder of a diffusers model. `window` is the text encoder's
    /// `max_position_embeddings` (77 for every SD model).
    pub fn load(dir: &Path, window: usize) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let vocab = dir.join("vocab.json");
        let merges = dir.join("merges.txt");
        let inner = if vocab.exists() && merges.exists() {
            let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
                .end_of_word_suffix("</w>".into())
                .unk_token(END.into())
                .build()
                .map_err(|e| EngineError::bad_file(&vocab, e))?;
            clip_pipeline(bpe).map_err(|e| EngineError::bad_file(&vocab, e))?
        } else if json.exists() {
            Tokenizer::from_file(&json).map_err(|e| EngineError::bad_file(&json, e))?
        } else {
            return Err(EngineError::MissingFile { path: vocab });
        };
        Self::framed(inner, pad_token(dir), window, dir)
    }

    /// CLIP's own tokenizer, built from the BPE merges compiled into the binary (a single-file
    /// checkpoint carries no tokenizer). `pad` is the padding the model was trained with.
    pub fn embedded(pad: ClipPadding, window: usize) -> Result<Self> {
        let origin = Path::new("the built-in CLIP vocabulary");
        let bpe = crate::clip_vocab::bpe().map_err(|e| EngineError::bad_file(origin, e))?;
        let inner = clip_pipeline(bpe).map_err(|e| EngineError::bad_file(origin, e))?;
        let pad_name = match pad {
            ClipPadding::EndOfText => None,
            ClipPadding::Exclamation => Some("!".to_string()),
        };
        Self::framed(inner, pad_name, window, origin)
    }

    /// Registers the special tokens and finds the ids that frame a window.
    fn framed(
        inner: Tokenizer,
        pad_name: Option<String>,
        window: usize,
        dir: &Path,
    ) -> Result<Self> {
        for token in [START, END].into_iter().chain(pad_name.as_deref()) {
            if inner.token_to_id(token).is_none() {
                return Err(EngineError::bad_file(
                    dir,
                    format!("the vocabulary has no {token} token"),
                ));
            }
        }
        // As transformers does, special tokens (SD 2's pad token `!` among them) are cut out
        // of the raw text before BPE, so a literal `!` maps to the pad id there too.
        let mut inner = inner;
        let specials: Vec<AddedToken> = [START, END]
            .into_iter()
            .chain(pad_name.as_deref())
            .map(|t| AddedToken::from(t.to_string(), true))
            .collect();
        inner
            .add_special_tokens(specials)
            .map_err(|e| EngineError::bad_file(dir, e))?;
        let id = |token: &str| {
            inner.token_to_id(token).ok_or_else(|| {
                EngineError::bad_file(dir, format!("the vocabulary has no {token} token"))
            })
        };
        let start = id(START)?;
        let end = id(END)?;
        let pad = match pad_name {
            Some(token) => id(&token)?,
            None => end,
        };
        if window < 3 {
            return Err(EngineError::UnsupportedArchitecture(format!(
                "text encoder window of {window} positions"
            )));
        }
        Ok(Self {
            inner,
            start,
            end,
            pad,
            window,
        })
    }

    /// Token ids of `text`, without start/end tokens.
    pub fn tokens(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| EngineError::invalid(format!("cannot tokenize the prompt: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Splits `text` into framed windows; at least `min_chunks` (to pair a negative prompt
    /// with its positive one).
    pub fn encode(&self, text: &str, min_chunks: usize) -> Result<PromptTokens> {
        let ids = self.tokens(text)?;
        let per = self.window - 2;
        let mut chunks: Vec<Vec<u32>> = ids.chunks(per).map(|c| self.frame(c)).collect();
        while chunks.len() < min_chunks.max(1) {
            chunks.push(self.frame(&[]));
        }
        Ok(PromptTokens {
            chunks,
            token_count: ids.len(),
        })
    }

    fn frame(&self, tokens: &[u32]) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.window);
        out.push(self.start);
        out.extend_from_slice(tokens);
        out.push(self.end);
        out.resize(self.window, self.pad);
        out
    }
}

/// The CLIP pipeline transformers' `CLIPTokenizerFast` builds around its BPE model.
fn clip_pipeline(bpe: BPE) -> tokenizers::Result<Tokenizer> {
    let normalizer = NormSequence::new(vec![
        NFC.into(),
        Replace::new(
            tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
            " ",
        )?
        .into(),
        Lowercase.into(),
    ]);
    let split = Split::new(
        SplitPattern::Regex(CLIP_PATTERN.into()),
        SplitDelimiterBehavior::Removed,
        true,
    )?;
    let pre = PreSequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)),
    ]);
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_normalizer(Some(normalizer))?;
    tokenizer.with_pre_tokenizer(Some(pre));
    Ok(tokenizer)
}

/// The pad token named by `special_tokens_map.json` or `tokenizer_config.json`, if any.
fn pad_token(dir: &Path) -> Option<String> {
    ["special_tokens_map.json", "tokenizer_config.json"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(dir.join(f)).ok())
        .filter_map(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .find_map(|v| match v.get("pad_token")? {
            serde_json::Value::String(s) => Some(s.clone()),
            other => other.get("content")?.as_str().map(str::to_owned),
        })
}
