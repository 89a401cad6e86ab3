//! Detection data as grounding data, per image, as GLIP's official code builds it for its
//! detection training sets (Objects365 in every `configs/pretrain/*.yaml`):
//! `CocoDetectionTSV.__getitem__` (`maskrcnn_benchmark/data/datasets/coco_dt.py`) calls
//! `check_for_positive_overflow` and then `convert_object_detection_to_grounding_optimized_for_od`
//! (both in `od_to_grounding.py`). For each image:
//!
//! 1. **Positives.** The categories of its boxes, in random order, are kept while the tokens of
//!    `"name. "` summed over them fit the text budget (`MAX_QUERY_LEN - 2`; here the text
//!    context minus start- and end-of-text); the boxes of categories cut off are dropped.
//! 2. **How many negatives.** `full = min(max_negatives, categories)` (`RANDOM_SAMPLE_NEG`,
//!    85); with probability `all_negatives_prob` (`CONTROL_PROB[2]`, 0.5) `full` are drawn,
//!    otherwise a uniform number in `1..=full` (`generate_control_options_given_probabilities`;
//!    the configs' other control probabilities are 0).
//! 3. **Which.** That many distinct categories drawn uniformly from all of them, those that are
//!    positives of the image dropped (so fewer can remain), in random order; then kept while
//!    the budget left after the positives stays positive (the "pre-screen": no negatives when
//!    the positives overflowed).
//! 4. **Prompt.** Negatives and positives together, shuffled, joined with
//!    [`PROMPT_SEPARATOR`] (`". "`, `SEPARATION_TOKENS`); each box is grounded to its category's
//!    name span (`tokens_positive`).
//!
//! So a category's position and neighbours in the prompt change from image to image and from
//! epoch to epoch: the head has to read the names. Two choices differ from the official code:
//! the negatives come from the training (base) categories only, so held-out names never appear
//! in training text (the official pool is every class of the label map, `__background__`
//! included); and an image left with no category at all (no box, no negative drawn) gets one
//! random category as a negative instead of an empty prompt. With `shuffle = false`
//! (`DISABLE_SHUFFLE = True`) every image gets the same prompt of all categories in order.

use std::ops::Range;

use clip_core::ClipTokenizer;
use rand::Rng;
use rand::seq::{SliceRandom, index};

use crate::data::{PROMPT_SEPARATOR, clean_name};
use crate::glip::prompt::{GroundingPrompt, PromptError};

/// How negatives are sampled into an image's category prompt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NegativeSampling {
    /// Negatives drawn at most (`DATASETS.RANDOM_SAMPLE_NEG`); 0: positives only.
    pub max_negatives: usize,
    /// Probability of drawing all `max_negatives` (capped at the number of categories) rather
    /// than a uniform number from 1 to it (`DATASETS.CONTROL_PROB[2]`).
    pub all_negatives_prob: f64,
}

impl Default for NegativeSampling {
    /// The official pretraining configs: 85 negatives, all of them half of the time.
    fn default() -> Self {
        Self { max_negatives: 85, all_negatives_prob: 0.5 }
    }
}

/// The category prompts of detection images over a fixed list of categories.
#[derive(Debug, Clone)]
pub struct CategoryPrompts {
    names: Vec<String>,
    /// Per category, the tokens of `"name. "` (what the official budget counts).
    lengths: Vec<usize>,
    /// Text tokens a prompt may hold (the context minus start- and end-of-text).
    budget: usize,
    /// `None`: the same prompt of every category, in order.
    sampling: Option<NegativeSampling>,
    /// The prompt of every category, in order (built when `sampling` is `None`).
    fixed: Option<GroundingPrompt>,
}

/// One image's category prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct CategoryGrounding {
    /// The prompt, one phrase per category listed.
    pub prompt: GroundingPrompt,
    /// The category of each phrase, in prompt order.
    pub categories: Vec<usize>,
    /// Whether each phrase is a positive (a category with a box in the image kept).
    pub positive: Vec<bool>,
}

impl CategoryGrounding {
    /// The token positions of `category`'s name in the prompt, if it is listed.
    pub fn tokens_of(&self, category: usize) -> Option<&[Range<usize>]> {
        let phrase = self.categories.iter().position(|&c| c == category)?;
        Some(&self.prompt.phrase_tokens[phrase])
    }

    /// Number of negatives (listed categories without a box in the image).
    pub fn negatives(&self) -> usize {
        self.positive.iter().filter(|p| !**p).count()
    }
}

impl CategoryPrompts {
    /// Prompts over `names` (category `i` is `names[i]`): sampled per image with `sampling`,
    /// the fixed prompt of all names otherwise. Every name (with its separator) must fit the
    /// text context on its own; without sampling, all of them together.
    pub fn new(tokenizer: &ClipTokenizer, names: &[String], sampling: Option<NegativeSampling>) -> Result<Self, PromptError> {
        if names.is_empty() {
            return Err(PromptError::NoPhrases { text: String::new() });
        }
        let context_length = tokenizer.context_length();
        let budget = context_length.saturating_sub(2);
        let mut lengths = Vec::with_capacity(names.len());
        for name in names {
            GroundingPrompt::from_categories(tokenizer, std::slice::from_ref(name))?;
            let text = format!("{}{PROMPT_SEPARATOR}", clean_name(name));
            let tokens = tokenizer.encode(&text)?.len();
            if tokens > budget {
                return Err(PromptError::TooLong { text, tokens, context_length });
            }
            lengths.push(tokens);
        }
        let fixed = match sampling {
            None => Some(GroundingPrompt::from_categories(tokenizer, names)?),
            Some(_) => None,
        };
        Ok(Self { names: names.to_vec(), lengths, budget, sampling, fixed })
    }

    /// Number of categories.
    pub fn categories(&self) -> usize {
        self.names.len()
    }

    /// The prompt of an image whose boxes have categories `positives` (indices into the names,
    /// one per box, repeats allowed), its random choices drawn from `rng`; boxes whose category
    /// is not listed ([`CategoryGrounding::tokens_of`] is `None`) were cut off by the budget.
    pub fn sample(&self, tokenizer: &ClipTokenizer, positives: &[usize], rng: &mut impl Rng) -> Result<CategoryGrounding, PromptError> {
        let mut present: Vec<usize> = positives.to_vec();
        present.sort_unstable();
        present.dedup();
        if let Some(&category) = present.iter().find(|&&c| c >= self.names.len()) {
            return Err(PromptError::UnknownCategory { category, categories: self.names.len() });
        }
        let Some(sampling) = self.sampling else {
            let prompt = self.fixed.clone().expect("the fixed prompt is built without sampling");
            let categories: Vec<usize> = (0..self.names.len()).collect();
            let positive = categories.iter().map(|c| present.binary_search(c).is_ok()).collect();
            return Ok(CategoryGrounding { prompt, categories, positive });
        };
        // 1. Positives in random order, kept while "name. " fits the budget.
        present.shuffle(rng);
        let (mut used, mut kept) = (0, 0);
        while kept < present.len() && used + self.lengths[present[kept]] <= self.budget {
            used += self.lengths[present[kept]];
            kept += 1;
        }
        let overflowed = kept < present.len();
        let mut listed = present[..kept].to_vec();
        // 2-3. Negatives: a number drawn, that many categories drawn, positives dropped,
        // shuffled, kept while the budget left stays positive.
        let full = sampling.max_negatives.min(self.names.len());
        if full > 0 && !overflowed {
            let count = if rng.random::<f64>() < sampling.all_negatives_prob { full } else { rng.random_range(1..=full) };
            let mut negatives: Vec<usize> =
                index::sample(rng, self.names.len(), count).into_iter().filter(|c| !present.contains(c)).collect();
            negatives.shuffle(rng);
            let (mut room, mut fits) = (self.budget - used, 0);
            while fits < negatives.len() && room > self.lengths[negatives[fits]] {
                room -= self.lengths[negatives[fits]];
                fits += 1;
            }
            listed.extend_from_slice(&negatives[..fits]);
        }
        if listed.is_empty() {
            listed.push(rng.random_range(0..self.names.len()));
        }
        // 4. Everything in random order.
        listed.shuffle(rng);
        let names: Vec<String> = listed.iter().map(|&c| self.names[c].clone()).collect();
        let prompt = GroundingPrompt::from_categories(tokenizer, &names)?;
        let positive = listed.iter().map(|c| present[..kept].contains(c)).collect();
        Ok(CategoryGrounding { prompt, categories: listed, positive })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashSet};

    use clip_task::data::sample_rng;

    use super::*;

    /// LVIS-like names: several words, underscores, a parenthesized part.
    fn names(count: usize) -> Vec<String> {
        const WORDS: [&str; 12] =
            ["circle", "square", "traffic_light", "dog", "bow_(weapon)", "red car", "tree", "cup", "fire hydrant", "bench", "kite", "zebra"];
        let made = |i: usize| format!("obj{}{}", (b'a' + (i / 26) as u8) as char, (b'a' + (i % 26) as u8) as char);
        (0..count).map(|i| if i < WORDS.len() { WORDS[i].to_string() } else { made(i) }).collect()
    }

    /// The positives of image `image`: one to three categories, repeats included.
    fn positives(image: usize, categories: usize) -> Vec<usize> {
        let count = 1 + image % 3;
        (0..count).map(|k| (image * 7 + k * 5) % categories).chain([image % categories]).collect()
    }

    fn sampler(count: usize, sampling: NegativeSampling) -> (ClipTokenizer, CategoryPrompts) {
        let tokenizer = ClipTokenizer::new();
        let prompts = CategoryPrompts::new(&tokenizer, &names(count), Some(sampling)).unwrap();
        (tokenizer, prompts)
    }

    /// Every phrase's tokens decode to its category's cleaned name, and its byte span in the
    /// text is that name.
    fn check_spans(tokenizer: &ClipTokenizer, grounding: &CategoryGrounding, all: &[String]) {
        let (text, spans) = crate::data::grounding_prompt(&grounding.categories.iter().map(|&c| all[c].clone()).collect::<Vec<_>>());
        assert_eq!(grounding.prompt.text, text);
        for (phrase, &category) in grounding.categories.iter().enumerate() {
            let name = clean_name(&all[category]);
            assert_eq!(&text[spans[phrase].clone()], name);
            let tokens = &grounding.prompt.phrase_tokens[phrase];
            assert_eq!(tokens.len(), 1);
            assert_eq!(tokenizer.decode(&grounding.prompt.tokens[tokens[0].clone()]), name, "in {text:?}");
            assert_eq!(grounding.tokens_of(category), Some(&tokens[..]));
        }
    }

    #[test]
    fn prompts_list_the_positives_and_at_most_max_negatives_in_a_seeded_random_order() {
        let sampling = NegativeSampling { max_negatives: 4, all_negatives_prob: 0.5 };
        let (tokenizer, prompts) = sampler(12, sampling);
        let all = names(12);
        let (seed, slots, epochs) = (3, 8, 6);
        let (mut texts, mut counts, mut first_position) = (HashSet::new(), BTreeSet::new(), BTreeSet::new());
        let mut mixed = 0;
        for epoch in 0..epochs {
            for slot in 0..slots {
                // The sample in `slot` of the batch of step `epoch * 10`: what the batcher's
                // sample generator gives a training image.
                let step = epoch * 10;
                let image = slot;
                let boxes = positives(image, 12);
                let grounding = prompts.sample(&tokenizer, &boxes, &mut sample_rng(seed, step, slot)).unwrap();
                let again = prompts.sample(&tokenizer, &boxes, &mut sample_rng(seed, step, slot)).unwrap();
                assert_eq!(grounding, again, "the same seed, step and slot give the same prompt");
                for category in &boxes {
                    assert!(grounding.tokens_of(*category).is_some(), "positive {category} missing from {:?}", grounding.prompt.text);
                }
                let listed: HashSet<usize> = grounding.categories.iter().copied().collect();
                assert_eq!(listed.len(), grounding.categories.len(), "a category is listed twice");
                for (category, positive) in grounding.categories.iter().zip(&grounding.positive) {
                    assert_eq!(*positive, boxes.contains(category));
                }
                assert!(grounding.negatives() <= sampling.max_negatives, "{} negatives", grounding.negatives());
                check_spans(&tokenizer, &grounding, &all);
                counts.insert(grounding.negatives());
                first_position.insert(grounding.categories.iter().position(|&c| c == boxes[0]).unwrap());
                // Negatives and positives are mixed, not listed one group after the other.
                let first_negative = grounding.positive.iter().position(|p| !p);
                let last_positive = grounding.positive.iter().rposition(|p| *p);
                mixed += usize::from(matches!((first_negative, last_positive), (Some(n), Some(p)) if n < p));
                texts.insert(grounding.prompt.text.clone());
            }
        }
        // Prompts change across images and epochs: numbers of negatives, orders, positions.
        assert!(texts.len() > slots * epochs * 3 / 4, "only {} distinct prompts of {}", texts.len(), slots * epochs);
        assert!(counts.len() >= 4, "negative counts {counts:?}");
        assert!(first_position.len() >= 6, "a positive sits at positions {first_position:?} only");
        assert!(mixed >= slots * epochs / 4, "a negative precedes a positive in {mixed} prompts only");
        // The same image in different epochs gets different prompts.
        let image = 5;
        let epoch_texts: HashSet<String> = (0..epochs)
            .map(|epoch| prompts.sample(&tokenizer, &positives(image, 12), &mut sample_rng(seed, epoch * 10, 0)).unwrap().prompt.text)
            .collect();
        assert!(epoch_texts.len() >= epochs - 1, "{epoch_texts:?}");
        // Another run seed, other prompts.
        let other = prompts.sample(&tokenizer, &positives(1, 12), &mut sample_rng(seed + 1, 0, 1)).unwrap();
        let this = prompts.sample(&tokenizer, &positives(1, 12), &mut sample_rng(seed, 0, 1)).unwrap();
        assert_ne!(other.prompt.text, this.prompt.text);
    }

    #[test]
    fn negatives_fill_the_text_budget_and_positives_that_overflow_are_cut() {
        // 85 negatives over 200 categories: the 75-token budget binds, not the count.
        let (tokenizer, prompts) = sampler(200, NegativeSampling { max_negatives: 85, all_negatives_prob: 1.0 });
        let all = names(200);
        for slot in 0..20 {
            let grounding = prompts.sample(&tokenizer, &[slot, slot + 1], &mut sample_rng(0, 1, slot)).unwrap();
            let used = tokenizer.encode(&grounding.prompt.text).unwrap().len();
            assert!(used <= 75, "{used} tokens");
            // All 85 are drawn: the budget, not the count, ends them, less than one name short
            // of it ("name. " counted for each, the last "." not written).
            let longest = prompts.lengths.iter().max().unwrap();
            assert!(used + longest + 1 >= 75, "{} negatives, {used} tokens", grounding.negatives());
            assert!(grounding.negatives() > 10, "{} negatives", grounding.negatives());
            check_spans(&tokenizer, &grounding, &all);
        }
        // Positives alone past the budget: a prefix of them is kept, no negatives; the boxes of
        // the others have no tokens.
        let crowded: Vec<usize> = (20..120).collect();
        let grounding = prompts.sample(&tokenizer, &crowded, &mut sample_rng(0, 2, 0)).unwrap();
        assert_eq!(grounding.negatives(), 0);
        let listed = grounding.categories.len();
        assert!((10..100).contains(&listed), "{listed} positives listed");
        assert_eq!(crowded.iter().filter(|&&c| grounding.tokens_of(c).is_some()).count(), listed);
        check_spans(&tokenizer, &grounding, &all);
    }

    #[test]
    fn few_categories_caps_the_draw_and_zero_negatives_lists_the_positives_only() {
        // Three categories, 85 negatives asked: at most the two that are not positive.
        let (tokenizer, prompts) = sampler(3, NegativeSampling::default());
        let mut seen = BTreeSet::new();
        for slot in 0..40 {
            let grounding = prompts.sample(&tokenizer, &[1], &mut sample_rng(7, 0, slot)).unwrap();
            assert!(grounding.negatives() <= 2);
            assert!(grounding.tokens_of(1).is_some());
            seen.insert(grounding.prompt.text);
        }
        assert!(seen.len() >= 6, "{seen:?}");
        let (tokenizer, none) = sampler(3, NegativeSampling { max_negatives: 0, all_negatives_prob: 0.5 });
        let grounding = none.sample(&tokenizer, &[2, 0, 2], &mut sample_rng(7, 0, 0)).unwrap();
        assert_eq!(grounding.negatives(), 0);
        assert_eq!(BTreeSet::from_iter(grounding.categories.clone()), BTreeSet::from([0, 2]));
        // No box and no negative: one category, as a negative, rather than an empty prompt.
        let empty = none.sample(&tokenizer, &[], &mut sample_rng(7, 0, 0)).unwrap();
        assert_eq!((empty.categories.len(), empty.negatives()), (1, 1));
    }

    #[test]
    fn without_sampling_every_image_gets_the_fixed_prompt() {
        let tokenizer = ClipTokenizer::new();
        let prompts = CategoryPrompts::new(&tokenizer, &names(4), None).unwrap();
        let grounding = prompts.sample(&tokenizer, &[3], &mut sample_rng(0, 0, 0)).unwrap();
        assert_eq!(grounding.prompt.text, "circle. square. traffic light. dog");
        assert_eq!(grounding.positive, [false, false, false, true]);
        let long: Vec<String> = (0..40).map(|i| format!("long name {i}")).collect();
        assert!(matches!(CategoryPrompts::new(&tokenizer, &long, None), Err(PromptError::TooLong { .. })));
        assert!(CategoryPrompts::new(&tokenizer, &long, Some(NegativeSampling::default())).is_ok());
        assert!(matches!(CategoryPrompts::new(&tokenizer, &[], Some(NegativeSampling::default())), Err(PromptError::NoPhrases { .. })));
        let sampled = CategoryPrompts::new(&tokenizer, &long, Some(NegativeSampling::default())).unwrap();
        let unknown = sampled.sample(&tokenizer, &[40], &mut sample_rng(0, 0, 0));
        assert!(matches!(unknown, Err(PromptError::UnknownCategory { category: 40, categories: 40 })), "{unknown:?}");
    }
}
