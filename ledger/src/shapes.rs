//! Few statement shapes for statements whose length follows a batch: a prepared
//! statement is kept per connection by its SQL text (sqlx's statement cache), and
//! MariaDB's prepare (parse, resolve, plan, then a close when the cache evicts it)
//! cost about as much as the execution of a batch's statements. A statement written
//! for every batch size was prepared anew for nearly every batch; with these, a
//! connection prepares each shape once.
//!
//! - a list of values (`IN (...)`) is bound at the next power of two in length, its
//!   last value repeated ([`padded`]: `IN` ignores duplicates);
//! - rows are inserted in chunks whose sizes are powers of two, the largest first
//!   ([`chunks`]: n's binary digits, at most 11 statements up to 2,047 rows).

/// `values`, then its last value again up to the next power of two in length.
pub fn padded<'s, 'a, T: ?Sized>(values: &'s [&'a T]) -> impl Iterator<Item = &'a T> + 's {
    let pad = values.len().next_power_of_two() - values.len();
    values.iter().copied().chain(values.last().into_iter().copied().cycle().take(pad))
}

/// `rows` in consecutive chunks whose lengths are distinct powers of two, largest first.
pub fn chunks<T>(rows: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = rows;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let n = 1usize << rest.len().ilog2();
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        Some(chunk)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_is_padded_to_the_next_power_of_two_with_its_last_value() {
        let got: Vec<&str> = padded(&["a", "b", "c"]).collect();
        assert_eq!(got, ["a", "b", "c", "c"]);
        assert_eq!(padded(&["a"]).count(), 1);
        assert_eq!(padded(&["a"; 512]).count(), 512);
        assert_eq!(padded(&["a"; 513]).count(), 1024);
        assert_eq!(padded::<str>(&[]).count(), 0);
    }

    #[test]
    fn rows_are_cut_into_powers_of_two_in_order_and_none_is_lost() {
        for n in 0..300usize {
            let rows: Vec<usize> = (0..n).collect();
            let got: Vec<&[usize]> = chunks(&rows).collect();
            let lens: Vec<usize> = got.iter().map(|c| c.len()).collect();
            assert!(lens.iter().all(|l| l.is_power_of_two()), "{n}: {lens:?}");
            assert!(lens.windows(2).all(|w| w[0] > w[1]), "{n}: {lens:?}");
            assert_eq!(got.concat(), rows, "{n}");
        }
        let sizes: Vec<usize> = chunks(&[0u8; 1000]).map(<[u8]>::len).collect();
        assert_eq!(sizes, [512, 256, 128, 64, 32, 8]);
    }
}
