//! Nouns of a caption turned into text prompts, for GroupViT's multi-label contrastive loss
//! (each image is also paired with `K` prompts "a photo of a {noun}." built from its caption).
//!
//! The official GroupViT code finds nouns with nltk's part-of-speech tagger. There is no tagger
//! here, so nouns are found in one of two ways:
//!
//! - with a vocabulary (the dataset's label names, or a noun list): the vocabulary entries that
//!   occur in the caption as whole words, case-insensitively, a plural "s"/"es" on the entry's
//!   last word tolerated; a longer entry wins over one inside it ("traffic light" over "light");
//! - without one: the caption's lower-cased words minus [`STOPWORDS`], a short list of
//!   function words, common verbs and adjectives (colors, sizes, counts) and the nouns that say
//!   nothing about the content ("photo", "image", "picture").

use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};

/// Words that the vocabulary-free heuristic never takes for nouns.
#[rustfmt::skip]
pub const STOPWORDS: &[&str] = &[
    // Articles, determiners, numbers.
    "a", "an", "the", "this", "that", "these", "those", "some", "any", "each", "every", "all", "both", "no",
    "another", "other", "many", "several", "few", "one", "two", "three", "four", "five", "six", "lots",
    // Prepositions and conjunctions.
    "of", "on", "in", "at", "to", "from", "with", "without", "by", "for", "over", "under", "above", "below",
    "near", "next", "beside", "between", "behind", "into", "onto", "through", "across", "along", "around",
    "against", "up", "down", "out", "off", "about", "and", "or", "but", "while", "as", "than", "then",
    // Pronouns.
    "it", "its", "he", "she", "they", "them", "their", "his", "her", "i", "we", "you", "my", "our", "your",
    "there", "here", "who", "which", "what", "whose",
    // Common verbs.
    "is", "are", "was", "were", "be", "been", "being", "has", "have", "had", "do", "does", "can",
    "sitting", "standing", "holding", "looking", "lying", "laying", "walking", "running", "playing",
    "riding", "eating", "wearing", "flying", "parked", "shows", "showing", "made", "using",
    // Adjectives: colors, sizes, shapes of speech.
    "red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black", "white", "gray", "grey",
    "dark", "bright", "colorful", "small", "large", "big", "little", "tiny", "huge", "tall", "short", "long",
    "old", "new", "young", "very", "close", "front", "top", "side", "view",
    // Nouns that describe the medium, not the content.
    "photo", "photograph", "image", "picture", "closeup",
];

/// How prompts are built from a caption's nouns.
#[derive(Debug, Clone, PartialEq)]
pub struct NounPrompts {
    /// Prompt templates, `{}` replaced by a noun; one is picked at random per prompt.
    pub templates: Vec<String>,
    /// Number of prompts per caption (GroupViT's `K`).
    pub per_caption: usize,
    /// Known nouns (single or multi-word); `None` uses the stopword heuristic.
    pub vocabulary: Option<Vec<String>>,
}

impl Default for NounPrompts {
    /// GroupViT's setting: "a photo of a {}." and three prompts per caption.
    fn default() -> Self {
        Self {
            templates: vec!["a photo of a {}.".to_string()],
            per_caption: 3,
            vocabulary: None,
        }
    }
}

impl NounPrompts {
    /// The caption's nouns, in the order they first occur, without repeats.
    pub fn nouns(&self, caption: &str) -> Vec<String> {
        let words = words(caption);
        let mut nouns = match &self.vocabulary {
            Some(vocabulary) => vocabulary_nouns(&words, vocabulary),
            None => words
                .iter()
                .filter(|w| w.chars().any(char::is_alphabetic) && !STOPWORDS.contains(&w.as_str()))
                .cloned()
                .collect(),
        };
        let mut seen = std::collections::HashSet::new();
        nouns.retain(|n| seen.insert(n.clone()));
        nouns
    }

    /// Exactly `per_caption` prompts: that many nouns sampled without repetition (with
    /// repetition when the caption has fewer), each put in a random template; the caption
    /// itself, repeated, when it has no noun (or there is no template), standing for its noun.
    pub fn prompts(&self, caption: &str, rng: &mut impl Rng) -> Vec<NounPrompt> {
        let mut nouns = self.nouns(caption);
        if nouns.is_empty() || self.templates.is_empty() {
            let whole = NounPrompt { noun: caption.to_string(), text: caption.to_string() };
            return vec![whole; self.per_caption];
        }
        let chosen: Vec<String> = if nouns.len() >= self.per_caption {
            nouns.shuffle(rng);
            nouns.truncate(self.per_caption);
            nouns
        } else {
            (0..self.per_caption)
                .filter_map(|_| nouns.choose(rng).cloned())
                .collect()
        };
        chosen
            .into_iter()
            .filter_map(|noun| {
                let text = self.templates.choose(rng)?.replace("{}", &noun);
                Some(NounPrompt { noun, text })
            })
            .collect()
    }
}

/// One noun prompt: the noun and the text made from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NounPrompt {
    /// The noun as the vocabulary (or the caption) spells it.
    pub noun: String,
    /// The prompt text, the noun put in a template.
    pub text: String,
}

/// Lower-cased alphanumeric words (apostrophes dropped, so "dog's" is "dogs").
fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .replace('\'', "")
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// Vocabulary entries found in `words`, longest first where two overlap, in caption order.
fn vocabulary_nouns(words: &[String], vocabulary: &[String]) -> Vec<String> {
    // (start, length, entry) of every occurrence.
    let mut matches = Vec::new();
    for (entry_index, entry) in vocabulary.iter().enumerate() {
        let entry_words = self::words(entry);
        let Some((last, body)) = entry_words.split_last() else {
            continue;
        };
        if entry_words.len() > words.len() {
            continue;
        }
        for start in 0..=words.len() - entry_words.len() {
            let window = &words[start..start + entry_words.len()];
            let tail = &window[entry_words.len() - 1];
            let plural = tail == last || *tail == format!("{last}s") || *tail == format!("{last}es");
            if plural && window[..body.len()] == *body {
                matches.push((start, entry_words.len(), entry_index));
            }
        }
    }
    matches.sort_by_key(|&(start, length, _)| (std::cmp::Reverse(length), start));
    let mut taken = vec![false; words.len()];
    let mut accepted = Vec::new();
    for (start, length, entry) in matches {
        if taken[start..start + length].iter().all(|t| !t) {
            taken[start..start + length].iter_mut().for_each(|t| *t = true);
            accepted.push((start, entry));
        }
    }
    accepted.sort();
    accepted
        .into_iter()
        .map(|(_, entry)| vocabulary[entry].clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn heuristic_drops_stopwords_and_repeats() {
        let prompts = NounPrompts::default();
        assert_eq!(
            prompts.nouns("A red circle and a blue square on a dark background, and another circle."),
            ["circle", "square", "background"]
        );
        assert_eq!(prompts.nouns("Two dogs sitting on the grass"), ["dogs", "grass"]);
    }

    #[test]
    fn vocabulary_matches_whole_words_plurals_and_longest_entries() {
        let prompts = NounPrompts {
            vocabulary: Some(vec![
                "light".into(),
                "Traffic Light".into(),
                "car".into(),
                "bus".into(),
                "cat".into(),
            ]),
            ..NounPrompts::default()
        };
        // "traffic lights" is one match (not also "light"); "buses" is a plural of "bus";
        // "category" contains "cat" but not as a whole word; "scar" is not "car".
        assert_eq!(
            prompts.nouns("Traffic lights above two buses, a category sign, a scar and a light."),
            ["Traffic Light", "bus", "light"]
        );
    }

    #[test]
    fn exactly_k_prompts() {
        let prompts = NounPrompts::default();
        let mut rng = StdRng::seed_from_u64(0);
        // More nouns than K: three distinct ones.
        let texts = |caption: &str, rng: &mut StdRng| -> Vec<String> {
            prompts.prompts(caption, rng).into_iter().map(|p| p.text).collect()
        };
        let many = prompts.prompts("a cat, a dog, a horse and a cow", &mut rng);
        assert_eq!(many.len(), 3);
        let distinct: std::collections::HashSet<_> = many.iter().map(|p| &p.noun).collect();
        assert_eq!(distinct.len(), 3);
        assert!(
            many.iter().all(|p| p.text == format!("a photo of a {}.", p.noun)),
            "{many:?}"
        );
        // One noun: repeated.
        assert_eq!(texts("a dog", &mut rng), vec!["a photo of a dog."; 3]);
        // No noun: the caption itself, as text and noun.
        let none = prompts.prompts("a very red one", &mut rng);
        assert!(none.iter().all(|p| p.text == "a very red one" && p.noun == p.text), "{none:?}");
        assert_eq!(none.len(), 3);
        // Seeded.
        let run = |seed| texts("a cat, a dog, a horse and a cow", &mut StdRng::seed_from_u64(seed));
        assert_eq!(run(5), run(5));
    }
}
