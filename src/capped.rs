//! The capped list of every report: a list that stops growing at a cap and
//! counts what it left out (`failures` + `failures_omitted`, `changes` +
//! `changes_omitted`, ...), so a tool result stays small whatever happened.

/// Pushes the item `make` builds onto `list` while it holds fewer than
/// `cap` items; otherwise counts one more in `omitted` (and builds nothing).
pub(crate) fn push<T>(list: &mut Vec<T>, omitted: &mut u64, cap: usize, make: impl FnOnce() -> T) {
    if list.len() < cap {
        list.push(make());
    } else {
        *omitted += 1;
    }
}

/// Appends `items` to `list` up to `cap` items in all; counts the rest in
/// `omitted`.
pub(crate) fn extend<T>(
    list: &mut Vec<T>,
    omitted: &mut u64,
    cap: usize,
    items: impl IntoIterator<Item = T>,
) {
    for item in items {
        push(list, omitted, cap, || item);
    }
}

/// Appends `items` to `list` up to `cap` items in all, for reports whose
/// total is counted elsewhere (`quarantined` + `quarantined_rows`).
pub(crate) fn fill<T>(list: &mut Vec<T>, cap: usize, items: impl IntoIterator<Item = T>) {
    let room = cap.saturating_sub(list.len());
    list.extend(items.into_iter().take(room));
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_the_first_cap_items_and_counts_the_rest() {
        let (mut list, mut omitted) = (vec![1], 0u64);
        super::extend(&mut list, &mut omitted, 3, 2..=6);
        assert_eq!(list, vec![1, 2, 3]);
        assert_eq!(omitted, 3);
        super::push(&mut list, &mut omitted, 3, || unreachable!("not built"));
        assert_eq!(omitted, 4);
        super::fill(&mut list, 4, 7..=9);
        assert_eq!(list, vec![1, 2, 3, 7]);
    }
}
