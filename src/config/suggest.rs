//! An unknown field, said helpfully: the closest valid name ("did you mean
//! `client_secret`?") and the fields that table takes; for an `[auth]` table, only those
//! its `kind` reads, not every auth field of every kind.

use crate::providers;
use crate::schema::RawAuth;

/// The message for serde's "unknown field `x`, expected one of `a`, `b`" at `path` (the
/// unknown field's dotted path), or `None` for any other message.
pub fn unknown_field(message: &str, path: &str, tree: &toml::Value) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, expected) = rest.split_once('`')?;
    // toml adds where it was: "... in `server`".
    let expected = expected
        .rsplit_once(" in `")
        .map_or(expected, |(list, _)| list);
    let table_path = path.rsplit_once('.').map_or("", |(table, _)| table);
    let (takers, candidates) = match kind_fields(tree, table_path, unknown) {
        Some((kind, fields)) => (format!("kind {kind:?} takes"), fields),
        None => {
            let listed = expected
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect();
            let table = if table_path.is_empty() {
                "the top level".to_owned()
            } else {
                format!("[{table_path}]")
            };
            (format!("{table} takes"), listed)
        }
    };
    let mut text = format!("unknown field `{unknown}`");
    if let Some(closest) = closest(unknown, &candidates) {
        text.push_str(&format!("; did you mean `{closest}`?"));
    }
    if !candidates.is_empty() {
        text.push_str(&format!(" {takers}: {}", candidates.join(", ")));
    }
    Some(text)
}

/// For an upstream's `[auth]` table with a known `kind`: that kind and the fields it reads
/// (given its other fields, since a `grant` changes them).
fn kind_fields(
    tree: &toml::Value,
    table_path: &str,
    unknown: &str,
) -> Option<(String, Vec<String>)> {
    let segments: Vec<&str> = table_path.split('.').collect();
    let ["upstreams", _, "auth"] = segments.as_slice() else {
        return None;
    };
    let mut table = segments
        .iter()
        .try_fold(tree, |value, segment| value.get(segment))?
        .as_table()?
        .clone();
    table.remove(unknown);
    let raw: RawAuth = toml::Value::Table(table).try_into().ok()?;
    let fields = providers::fields_of_kind(&raw);
    let kind = raw.kind?;
    (!fields.is_empty()).then(|| (kind, fields.into_iter().map(str::to_owned).collect()))
}

/// The candidate a typo most likely meant: the fewest edits, if few enough to be a typo.
fn closest<'a>(unknown: &str, candidates: &'a [String]) -> Option<&'a str> {
    let unknown = unknown.to_ascii_lowercase();
    candidates
        .iter()
        .map(|candidate| (edit_distance(&unknown, candidate), candidate))
        .filter(|(distance, candidate)| *distance <= (candidate.len() / 3).max(1))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate.as_str())
}

/// Levenshtein distance, with a swap of two neighbours counted as one edit (`secert`).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut rows = vec![(0..=b.len()).collect::<Vec<usize>>()];
    for i in 1..=a.len() {
        let mut row = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let substitution = rows[i - 1][j - 1] + usize::from(a[i - 1] != b[j - 1]);
            row[j] = substitution.min(rows[i - 1][j] + 1).min(row[j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                row[j] = row[j].min(rows[i - 2][j - 2] + 1);
            }
        }
        rows.push(row);
    }
    rows[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_are_a_few_edits_away_and_other_words_are_not() {
        assert_eq!(edit_distance("client_secert", "client_secret"), 1);
        assert_eq!(edit_distance("lisen", "listen"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        let candidates: Vec<String> = ["listen", "client_key", "idle_timeout"]
            .map(str::to_owned)
            .to_vec();
        assert_eq!(closest("lisen", &candidates), Some("listen"));
        assert_eq!(closest("LISTEN", &candidates), Some("listen"));
        assert_eq!(closest("colour", &candidates), None);
    }
}
