//! CLIP's text cleaning: the parts of ftfy's `fix_text` that change real captions, HTML
//! unescaped twice, whitespace collapsed, lower-case (open_clip's default `clean="lower"`).

use std::borrow::Cow;

use unicode_normalization::UnicodeNormalization;

/// Cleans `text` as open_clip does before byte-pair encoding.
///
/// The ftfy steps reproduced are those of its default configuration that do not guess at
/// encodings: HTML entities (when the text has no `<`), terminal escapes, Latin ligatures,
/// full-width forms, curly quotes, line breaks, control characters and NFC, repeated until the
/// text stops changing. Mojibake repair (text decoded with the wrong code page) is not
/// attempted.
pub fn clean_text(text: &str) -> String {
    let text = fix_text(text);
    let text = unescape_html(&unescape_html(&text)).into_owned();
    collapse_whitespace(&text).to_lowercase()
}

/// ftfy's `fix_text`, line by line as ftfy segments it.
fn fix_text(text: &str) -> String {
    let mut unescape = true;
    let mut out = String::with_capacity(text.len());
    for segment in text.split_inclusive('\n') {
        // ftfy stops unescaping HTML for good once a segment looks like HTML.
        unescape &= !segment.contains('<');
        out.push_str(&fix_segment(segment, unescape));
    }
    out
}

fn fix_segment(segment: &str, unescape: bool) -> String {
    let mut text = segment.to_string();
    loop {
        let mut fixed = if unescape {
            unescape_html(&text).into_owned()
        } else {
            text.clone()
        };
        fixed = remove_terminal_escapes(&fixed);
        fixed = fixed.chars().flat_map(fold_char).collect();
        fixed = fix_line_breaks(&fixed);
        fixed.retain(|c| !is_removed_control_char(c));
        fixed = fixed.nfc().collect();
        if fixed == text {
            return text;
        }
        text = fixed;
    }
}

fn unescape_html(text: &str) -> Cow<'_, str> {
    if text.contains('&') {
        html_escape::decode_html_entities(text)
    } else {
        Cow::Borrowed(text)
    }
}

/// Ligatures, full-width forms and curly quotes, each mapped to its plain form.
fn fold_char(c: char) -> Vec<char> {
    match c {
        // Latin ligatures (ftfy's `fix_latin_ligatures`) and full-width forms
        // (`fix_character_width`) become their compatibility decomposition.
        'Ĳ' | 'ĳ' | 'ŉ' | 'Ǆ'..='ǌ' | 'Ǳ'..='ǳ' | 'ﬀ'..='ﬄ' | 'ﬆ' | '\u{FF01}'..='\u{FFEF}' => {
            std::iter::once(c).nfkc().collect()
        }
        // NFKC would also fold the long s; ftfy keeps it.
        'ﬅ' => vec!['ſ', 't'],
        '\u{3000}' => vec![' '],
        '\u{02BC}' | '\u{2018}'..='\u{201B}' => vec!['\''],
        '\u{201C}'..='\u{201F}' => vec!['"'],
        other => vec![other],
    }
}

/// `\r\n`, `\r`, and the Unicode line and paragraph separators become `\n`.
fn fix_line_breaks(text: &str) -> String {
    text.replace("\r\n", "\n")
        .replace(['\r', '\u{2028}', '\u{2029}', '\u{0085}'], "\n")
}

/// ANSI terminal escape sequences such as `ESC[1;31m` (ftfy's `\x1b\[[0-9;]*[a-zA-Z]`).
fn remove_terminal_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('\u{1b}') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let params = after
            .strip_prefix('[')
            .map(|p| p.trim_start_matches(|c: char| c.is_ascii_digit() || c == ';'));
        match params.filter(|p| p.starts_with(|c: char| c.is_ascii_alphabetic())) {
            Some(p) => rest = &p[1..],
            None => {
                out.push('\u{1b}');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The control characters ftfy's `remove_control_chars` deletes (tab, newline and carriage
/// return stay).
fn is_removed_control_char(c: char) -> bool {
    matches!(c as u32,
        0x00..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F | 0x206A..=0x206F | 0xFEFF | 0xFFF9..=0xFFFC)
}

/// Runs of whitespace become one space; leading and trailing whitespace goes.
fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::clean_text;

    #[test]
    fn folds_what_ftfy_folds() {
        assert_eq!(clean_text("“Curly” ‘quotes’"), "\"curly\" 'quotes'");
        assert_eq!(clean_text("Ｆｕｌｌ\u{3000}width"), "full width");
        assert_eq!(clean_text("ﬁne ﬂow"), "fine flow");
        assert_eq!(clean_text("cafe\u{301}"), "café");
        assert_eq!(clean_text("\u{1b}[31mred\u{1b}[0m\u{7}"), "red");
    }

    #[test]
    fn unescapes_html_and_collapses_whitespace() {
        assert_eq!(clean_text("Tom &amp;amp; Jerry"), "tom & jerry");
        assert_eq!(clean_text("  tabs\tand\r\nlines  "), "tabs and lines");
        // Text that already holds a tag keeps ftfy's entities; the double unescape still runs.
        assert_eq!(clean_text("<b>&amp;amp;</b>"), "<b>&</b>");
    }
}
