//! Grounding prompts: a tokenized text and the token positions of each phrase in it.
//!
//! CLIP's tokenizer gives no character offsets, but its byte-pair encoding works word by word
//! after cleaning, so the tokens of a prefix that ends at a word boundary are a prefix of the
//! text's tokens. A byte offset maps to the number of tokens of the text before it (plus
//! one for the start-of-text token at position 0); offsets inside a word are refused.

use std::ops::Range;

use clip_core::ClipTokenizer;
use clip_core::tokenizer::TokenizerError;

use crate::data::grounding_prompt;

/// Why a grounding prompt could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// The tokenizer failed on the prompt or a prefix of it.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The prompt has no phrase.
    #[error("grounding prompt {text:?}: no phrases given")]
    NoPhrases {
        /// The prompt text.
        text: String,
    },
    /// The prompt's tokens plus start- and end-of-text do not fit the context length.
    #[error(
        "grounding prompt {text:?}: {tokens} tokens plus start and end do not fit the context \
         length {context_length}"
    )]
    TooLong {
        /// The prompt text (cut to 80 characters).
        text: String,
        /// Number of BPE tokens of the text.
        tokens: usize,
        /// The tokenizer's context length.
        context_length: usize,
    },
    /// A box's category is not one of the prompt's categories.
    #[error("category {category} is not one of the {categories} categories of the prompt")]
    UnknownCategory {
        /// The category index.
        category: usize,
        /// Number of categories.
        categories: usize,
    },
    /// A phrase's byte range is out of range, empty, or cuts a word.
    #[error("grounding prompt {text:?}: phrase {phrase} span {span:?}: {reason}")]
    Span {
        /// The prompt text (cut to 80 characters).
        text: String,
        /// Index of the phrase.
        phrase: usize,
        /// The offending byte range.
        span: Range<usize>,
        /// What is wrong with it.
        reason: String,
    },
}

/// A tokenized prompt and the token positions of each phrase.
#[derive(Debug, Clone, PartialEq)]
pub struct GroundingPrompt {
    /// The prompt text.
    pub text: String,
    /// Token ids, start-of-text first, end-of-text, zero padding to the context length.
    pub tokens: Vec<i64>,
    /// Per phrase, the token positions in `tokens` from its first to its last token
    /// (start-of-text is position 0).
    pub spans: Vec<Range<usize>>,
    /// Per phrase, the token positions of each of its byte ranges (one range per span,
    /// in the order given): the exact positive tokens of a phrase given as several spans.
    pub phrase_tokens: Vec<Vec<Range<usize>>>,
}

impl GroundingPrompt {
    /// GLIP's detection prompt: the names cleaned and joined as `"circle. square. triangle"`
    /// ([`grounding_prompt`], as the official evaluation writes its queries), one phrase per
    /// name, in the order given.
    pub fn from_categories(
        tokenizer: &ClipTokenizer,
        names: &[String],
    ) -> Result<Self, PromptError> {
        let (text, spans) = grounding_prompt(names);
        let phrases: Vec<Vec<Range<usize>>> = spans.into_iter().map(|span| vec![span]).collect();
        Self::from_caption(tokenizer, &text, &phrases)
    }

    /// A caption whose phrases are given as byte ranges of it (as
    /// [`Annotation::tokens_positive`](crate::data::Annotation) holds them), several per phrase
    /// allowed. Every range must start and end at word boundaries of CLIP's tokenization.
    pub fn from_caption(
        tokenizer: &ClipTokenizer,
        caption: &str,
        phrases: &[Vec<Range<usize>>],
    ) -> Result<Self, PromptError> {
        let short: String = caption.chars().take(80).collect();
        if phrases.is_empty() {
            return Err(PromptError::NoPhrases { text: short });
        }
        let encoded = tokenizer.encode(caption)?;
        let context_length = tokenizer.context_length();
        if encoded.len() + 2 > context_length {
            return Err(PromptError::TooLong {
                text: short,
                tokens: encoded.len(),
                context_length,
            });
        }
        let mut spans = Vec::with_capacity(phrases.len());
        let mut phrase_tokens = Vec::with_capacity(phrases.len());
        for (phrase, char_spans) in phrases.iter().enumerate() {
            let error = |span: &Range<usize>, reason: String| PromptError::Span {
                text: short.clone(),
                phrase,
                span: span.clone(),
                reason,
            };
            let mut covered: Option<Range<usize>> = None;
            let mut exact = Vec::with_capacity(char_spans.len());
            if char_spans.is_empty() {
                return Err(error(&(0..0), "the phrase has no span".into()));
            }
            for span in char_spans {
                if span.start >= span.end || span.end > caption.len() {
                    return Err(error(
                        span,
                        format!("not a non-empty range within the {} bytes", caption.len()),
                    ));
                }
                if !caption.is_char_boundary(span.start) || !caption.is_char_boundary(span.end) {
                    return Err(error(span, "cuts a UTF-8 character".into()));
                }
                let position = |byte: usize| -> Result<usize, PromptError> {
                    let prefix = tokenizer.encode(&caption[..byte])?;
                    if encoded.get(..prefix.len()) != Some(&prefix[..]) {
                        return Err(error(
                            span,
                            format!("byte {byte} is not at a word boundary of the tokens"),
                        ));
                    }
                    Ok(prefix.len() + 1)
                };
                let tokens = position(span.start)?..position(span.end)?;
                if tokens.is_empty() {
                    return Err(error(span, "covers no token".into()));
                }
                covered = Some(match covered {
                    Some(c) => c.start.min(tokens.start)..c.end.max(tokens.end),
                    None => tokens.clone(),
                });
                exact.push(tokens);
            }
            spans.extend(covered);
            phrase_tokens.push(exact);
        }
        Ok(Self {
            text: caption.to_string(),
            tokens: tokenizer.tokenize(caption)?,
            spans,
            phrase_tokens,
        })
    }

    /// Number of phrases.
    pub fn phrases(&self) -> usize {
        self.spans.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One phrase given as one byte range.
    fn one(span: Range<usize>) -> [Vec<Range<usize>>; 1] {
        [Vec::from([span])]
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn category_prompt_spans_cover_each_name() {
        let tokenizer = ClipTokenizer::new();
        let prompt = GroundingPrompt::from_categories(
            &tokenizer,
            &names(&["circle", "traffic light", "dog"]),
        )
        .unwrap();
        assert_eq!(prompt.text, "circle. traffic light. dog");
        assert_eq!(prompt.tokens.len(), 77);
        assert_eq!(prompt.tokens[0], tokenizer.start_of_text() as i64);
        // Tokens: SOT circle . traffic light . dog EOT
        assert_eq!(prompt.spans, vec![1..2, 3..5, 6..7]);
        assert_eq!(
            prompt.phrase_tokens,
            vec![vec![1..2], vec![3..5], vec![6..7]]
        );
        for (span, name) in prompt.spans.iter().zip(["circle", "traffic light", "dog"]) {
            assert_eq!(tokenizer.decode(&prompt.tokens[span.clone()]), name);
        }
        assert_eq!(prompt.tokens[7], tokenizer.end_of_text() as i64);
        assert_eq!(prompt.tokens[8], 0);
    }

    #[test]
    fn caption_spans_map_to_tokens_with_several_spans_per_phrase() {
        let tokenizer = ClipTokenizer::new();
        let caption = "A  red circle and a blue square, left of the circle";
        let phrases = vec![vec![3..13, 45..51], vec![18..31]];
        let prompt = GroundingPrompt::from_caption(&tokenizer, caption, &phrases).unwrap();
        let words = |span: &Range<usize>| tokenizer.decode(&prompt.tokens[span.clone()]);
        // The first phrase spans from "red circle" to the last "circle".
        assert_eq!(
            words(&prompt.spans[0]),
            "red circle and a blue square , left of the circle"
        );
        assert_eq!(words(&prompt.spans[1]), "a blue square");
        let exact: Vec<Vec<String>> = prompt
            .phrase_tokens
            .iter()
            .map(|spans| spans.iter().map(words).collect())
            .collect();
        assert_eq!(exact, [vec!["red circle", "circle"], vec!["a blue square"]]);
        assert_eq!(prompt.phrases(), 2);
    }

    #[test]
    fn non_ascii_captions_take_byte_ranges() {
        let tokenizer = ClipTokenizer::new();
        let caption = "café crème";
        let cut = GroundingPrompt::from_caption(&tokenizer, caption, &one(4..5));
        assert!(
            matches!(&cut, Err(PromptError::Span { reason, .. }) if reason.contains("UTF-8")),
            "{cut:?}"
        );
        let prompt = GroundingPrompt::from_caption(&tokenizer, caption, &one(6..12)).unwrap();
        assert_eq!(
            tokenizer.decode(&prompt.tokens[prompt.spans[0].clone()]),
            "crème"
        );
    }

    #[test]
    fn bad_prompts_are_refused_with_the_reason() {
        let tokenizer = ClipTokenizer::new();
        let inside_word = GroundingPrompt::from_caption(&tokenizer, "a red circle", &one(2..8));
        assert!(
            matches!(&inside_word, Err(PromptError::Span { reason, .. }) if reason.contains("word boundary")),
            "{inside_word:?}"
        );
        let out_of_range = GroundingPrompt::from_caption(&tokenizer, "a circle", &one(2..20));
        assert!(matches!(
            out_of_range,
            Err(PromptError::Span { phrase: 0, .. })
        ));
        let blank = GroundingPrompt::from_caption(&tokenizer, "a  circle", &one(1..2));
        assert!(
            matches!(&blank, Err(PromptError::Span { reason, .. }) if reason.contains("no token")),
            "{blank:?}"
        );
        assert!(matches!(
            GroundingPrompt::from_caption(&tokenizer, "a circle", &[]),
            Err(PromptError::NoPhrases { .. })
        ));
        let short = tokenizer.clone().with_context_length(4).unwrap();
        let long = GroundingPrompt::from_categories(&short, &names(&["circle", "square"]));
        assert!(
            matches!(
                long,
                Err(PromptError::TooLong {
                    tokens: 3,
                    context_length: 4,
                    ..
                })
            ),
            "{long:?}"
        );
    }
}
