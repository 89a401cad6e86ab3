//! The CLIP byte-pair-encoding tokenizer, built on the `tokenizers` crate.
//!
//! Text is cleaned as open_clip cleans it ([`clean_text`]), split with CLIP's pattern, mapped
//! to the byte-level alphabet and merged with CLIP's BPE ranks (`</w>` marks the end of a
//! word). [`ClipTokenizer::tokenize`] then wraps the ids in start- and end-of-text tokens and
//! pads with zeros to the context length, truncating so that the end-of-text token stays last.
//!
//! ```
//! let tokenizer = clip_core::ClipTokenizer::new();
//! let ids = tokenizer.tokenize("a photo of a cat").unwrap();
//! assert_eq!(ids.len(), 77);
//! assert_eq!(tokenizer.decode(&ids), "a photo of a cat");
//! ```

mod clean;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use burn::tensor::{Device, Int, Tensor, TensorData};
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

pub use clean::clean_text;

/// OpenAI's BPE merge list, shipped with the crate so tokenizing works offline.
const BPE_VOCAB_GZ: &[u8] = include_bytes!("../../data/bpe_simple_vocab_16e6.txt.gz");

/// Number of merges CLIP uses from the merge list (49,408 tokens in all).
const MERGES: usize = 49152 - 256 - 2;

/// CLIP's pre-tokenization pattern (after lower-casing).
const SPLIT_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// The start-of-text token as open_clip names it (Hugging Face: `<|startoftext|>`).
const START_OF_TEXT: [&str; 2] = ["<start_of_text>", "<|startoftext|>"];
/// The end-of-text token as open_clip names it (Hugging Face: `<|endoftext|>`).
const END_OF_TEXT: [&str; 2] = ["<end_of_text>", "<|endoftext|>"];

/// CLIP's default context length.
pub const DEFAULT_CONTEXT_LENGTH: usize = 77;

/// Why a tokenizer could not be built or used.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A tokenizer file could not be read or parsed.
    #[error("tokenizer file {path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The BPE merge list is malformed.
    #[error("BPE merge list: {0}")]
    Vocabulary(String),
    /// Encoding a text failed.
    #[error("cannot tokenize {text:?}: {message}")]
    Encode {
        /// The text (cut to 80 characters).
        text: String,
        /// What failed.
        message: String,
    },
    /// The context length cannot hold the start- and end-of-text tokens.
    #[error("context length {0} is too short: it must hold at least the start and end tokens (2)")]
    ContextLength(usize),
}

/// The CLIP tokenizer: text in, fixed-length id sequences out.
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    start_of_text: u32,
    end_of_text: u32,
    context_length: usize,
    byte_decoder: HashMap<char, u8>,
}

impl Default for ClipTokenizer {
    fn default() -> Self {
        Self::new()
    }
}

impl ClipTokenizer {
    /// The tokenizer of OpenAI's CLIP and open_clip, from the merge list shipped with this crate,
    /// with a context length of 77. Built once per process and cloned afterwards.
    pub fn new() -> Self {
        static SHIPPED: OnceLock<ClipTokenizer> = OnceLock::new();
        SHIPPED
            .get_or_init(|| {
                let mut text = String::new();
                flate2::read::GzDecoder::new(BPE_VOCAB_GZ)
                    .read_to_string(&mut text)
                    .expect("the shipped BPE vocabulary is valid gzip");
                Self::from_merges(&text).expect("the shipped BPE vocabulary is valid")
            })
            .clone()
    }

    /// A tokenizer from an open_clip-style merge list (`bpe_simple_vocab_16e6.txt`: a header
    /// line, then one space-separated merge per line).
    pub fn from_merges(merge_list: &str) -> Result<Self, TokenizerError> {
        let merges: Vec<(String, String)> = merge_list
            .lines()
            .skip(1)
            .take(MERGES)
            .enumerate()
            .map(|(i, line)| {
                line.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| TokenizerError::Vocabulary(format!("line {} is not a merge: {line:?}", i + 2)))
            })
            .collect::<Result<_, _>>()?;
        if merges.len() != MERGES {
            return Err(TokenizerError::Vocabulary(format!(
                "{} merges found, {MERGES} needed",
                merges.len()
            )));
        }
        let alphabet: Vec<char> = byte_alphabet().iter().map(|(_, c)| *c).collect();
        let mut tokens: Vec<String> = alphabet.iter().map(|c| c.to_string()).collect();
        tokens.extend(alphabet.iter().map(|c| format!("{c}</w>")));
        tokens.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        tokens.extend([START_OF_TEXT[0].to_string(), END_OF_TEXT[0].to_string()]);
        let vocab: ahash::AHashMap<String, u32> = tokens.into_iter().zip(0u32..).collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .end_of_word_suffix("</w>".into())
            .build()
            .map_err(|e| TokenizerError::Vocabulary(e.to_string()))?;
        // Keep the pattern's matches, drop the whitespace between them.
        let split = Split::new(SplitPattern::Regex(SPLIT_PATTERN.into()), SplitDelimiterBehavior::Removed, true)
            .map_err(|e| TokenizerError::Vocabulary(e.to_string()))?;
        let mut tokenizer = Tokenizer::new(bpe);
        tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
            split.into(),
            ByteLevel::new(false, false, false).into(),
        ])));
        tokenizer.add_special_tokens(&[
            AddedToken::from(START_OF_TEXT[0], true),
            AddedToken::from(END_OF_TEXT[0], true),
        ]);
        Self::wrap(tokenizer, Path::new("<shipped vocabulary>"))
    }

    /// Loads a Hugging Face `tokenizer.json` (for example that of `openai/clip-vit-base-patch32`).
    /// Its own normalizer and pre-tokenizer apply after CLIP's cleaning; start- and end-of-text
    /// tokens are added by this type, not by the file's post-processor.
    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        let tokenizer = Tokenizer::from_file(path).map_err(|e| TokenizerError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::wrap(tokenizer, path)
    }

    /// Writes the tokenizer as a Hugging Face `tokenizer.json`, readable by
    /// [`from_file`](Self::from_file) and by the `tokenizers` libraries.
    pub fn save(&self, path: &Path) -> Result<(), TokenizerError> {
        self.tokenizer.save(path, false).map_err(|e| TokenizerError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    fn wrap(tokenizer: Tokenizer, origin: &Path) -> Result<Self, TokenizerError> {
        let find = |names: [&str; 2]| {
            names
                .iter()
                .find_map(|name| tokenizer.token_to_id(name))
                .ok_or_else(|| TokenizerError::File {
                    path: origin.to_path_buf(),
                    message: format!("the vocabulary has no {} token", names.join(" or ")),
                })
        };
        Ok(Self {
            start_of_text: find(START_OF_TEXT)?,
            end_of_text: find(END_OF_TEXT)?,
            context_length: DEFAULT_CONTEXT_LENGTH,
            byte_decoder: byte_alphabet().into_iter().map(|(byte, c)| (c, byte)).collect(),
            tokenizer,
        })
    }

    /// The same tokenizer producing sequences of `context_length` ids (at least 2).
    pub fn with_context_length(mut self, context_length: usize) -> Result<Self, TokenizerError> {
        if context_length < 2 {
            return Err(TokenizerError::ContextLength(context_length));
        }
        self.context_length = context_length;
        Ok(self)
    }

    /// Length of the sequences [`tokenize`](Self::tokenize) returns.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Number of tokens in the vocabulary (49,408 for CLIP).
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Id of the start-of-text token (49406 for CLIP).
    pub fn start_of_text(&self) -> u32 {
        self.start_of_text
    }

    /// Id of the end-of-text token (49407 for CLIP).
    pub fn end_of_text(&self) -> u32 {
        self.end_of_text
    }

    /// The BPE ids of the cleaned text, without start, end or padding.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .tokenizer
            .encode_fast(clean_text(text), false)
            .map_err(|e| TokenizerError::Encode {
                text: text.chars().take(80).collect(),
                message: e.to_string(),
            })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// `context_length` ids: start-of-text, the text's tokens, end-of-text, zero padding.
    /// Texts too long to fit are truncated and end with the end-of-text token, as open_clip does.
    pub fn tokenize(&self, text: &str) -> Result<Vec<i64>, TokenizerError> {
        let mut ids = Vec::with_capacity(self.context_length);
        ids.push(self.start_of_text as i64);
        ids.extend(self.encode(text)?.into_iter().map(i64::from));
        ids.truncate(self.context_length - 1);
        ids.push(self.end_of_text as i64);
        ids.resize(self.context_length, 0);
        Ok(ids)
    }

    /// Tokenizes every text into a `[texts, context_length]` tensor on `device`.
    pub fn tokenize_batch<S: AsRef<str>>(&self, texts: &[S], device: &Device) -> Result<Tensor<2, Int>, TokenizerError> {
        let mut ids = Vec::with_capacity(texts.len() * self.context_length);
        for text in texts {
            ids.extend(self.tokenize(text.as_ref())?);
        }
        Ok(Tensor::from_data(TensorData::new(ids, [texts.len(), self.context_length]), device))
    }

    /// Text of a token sequence: a leading start-of-text token is skipped and decoding stops
    /// at the first end-of-text token, so the output of [`tokenize`](Self::tokenize) decodes to
    /// the cleaned text. Word boundaries (`</w>`) become single spaces.
    pub fn decode<I: Copy + TryInto<u32>>(&self, ids: &[I]) -> String {
        let ids = ids.iter().filter_map(|&id| id.try_into().ok());
        let mut bytes = Vec::new();
        for (position, id) in ids.enumerate() {
            if id == self.end_of_text {
                break;
            }
            if position == 0 && id == self.start_of_text {
                continue;
            }
            let Some(token) = self.tokenizer.id_to_token(id) else { continue };
            for c in token.chars() {
                match self.byte_decoder.get(&c) {
                    Some(&byte) => bytes.push(byte),
                    None => bytes.extend(c.to_string().as_bytes()),
                }
            }
        }
        String::from_utf8_lossy(&bytes).replace("</w>", " ").trim_end().to_string()
    }
}

/// GPT-2's reversible map from bytes to printable characters, in CLIP's vocabulary order:
/// the printable Latin-1 bytes first, then the rest shifted above U+0100.
fn byte_alphabet() -> Vec<(u8, char)> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut alphabet: Vec<(u8, char)> = (0..=255u8).filter(|&b| printable(b)).map(|b| (b, char::from(b))).collect();
    let shifted = (0..=255u8).filter(|&b| !printable(b));
    alphabet.extend(shifted.zip(256u32..).map(|(b, code)| (b, char::from_u32(code).unwrap_or('?'))));
    alphabet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_has_clip_layout() {
        let tokenizer = ClipTokenizer::new();
        assert_eq!(tokenizer.vocab_size(), 49408);
        assert_eq!(tokenizer.start_of_text(), 49406);
        assert_eq!(tokenizer.end_of_text(), 49407);
    }

    #[test]
    fn truncation_keeps_end_of_text_last() {
        let tokenizer = ClipTokenizer::new().with_context_length(5).unwrap();
        let ids = tokenizer.tokenize("one two three four five six").unwrap();
        assert_eq!(ids.len(), 5);
        assert_eq!(ids[0], 49406);
        assert_eq!(ids[4], 49407);
        let short = tokenizer.tokenize("one").unwrap();
        assert_eq!(&short[2..], &[49407, 0, 0]);
        assert!(matches!(ClipTokenizer::new().with_context_length(1), Err(TokenizerError::ContextLength(1))));
    }

    #[test]
    fn decode_inverts_tokenize() {
        let tokenizer = ClipTokenizer::new();
        for text in ["a photo of a cat", "Naïve  CAFÉ ☕", "两只猫"] {
            assert_eq!(tokenizer.decode(&tokenizer.tokenize(text).unwrap()), clean_text(text));
        }
        // Punctuation is a word of its own.
        assert_eq!(tokenizer.decode(&tokenizer.tokenize("cat, dog.").unwrap()), "cat , dog .");
    }
}
