//! The feed window: how many days of ThreatFox an import asks for, so that it reaches back
//! to the last import that completed.

use time::{Duration, OffsetDateTime};

use super::Checkpoint;

/// The widest window ThreatFox serves, in days.
pub const FEED_MAX_DAYS: u8 = 7;

/// The days an import asks for, and whether that can still cover the gap since the last
/// complete import.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// The `days` sent to ThreatFox, 1 to 7.
    pub days: u8,
    /// Days since the last complete import, when that is longer than the feed reaches back:
    /// IoCs first seen in the excess were missed.
    pub gap_exceeded_days: Option<f64>,
}

/// Picks the feed window.
///
/// An explicit `requested` window wins. Otherwise a first import uses `import_days`, and a
/// later one widens it to reach back to when the last complete import started: a whole day
/// for every started day of the gap, plus one for the IoCs first seen while that import ran,
/// capped at seven. When no import has completed yet, the undelivered IoCs can be as old as
/// the window of the import that stopped, so the window reaches back from the last delivery
/// by `import_days` instead of one.
pub fn feed_window(
    requested: Option<u8>,
    import_days: u8,
    checkpoint: Option<&Checkpoint>,
    now: OffsetDateTime,
) -> Window {
    let since = checkpoint.map(|c| match c.last_success_at {
        Some(success) => (success, 1),
        None => (c.delivered_at, import_days),
    });
    let gap_days = since.map(|(since, margin)| (days_between(since, now), margin));

    let needed = gap_days.map_or(import_days, |(gap, margin)| {
        let days = gap.ceil() + f64::from(margin);
        if days >= f64::from(FEED_MAX_DAYS) {
            FEED_MAX_DAYS
        } else {
            // In range 1..7 by the test above, so the cast is exact.
            days as u8
        }
    });
    let days = requested.unwrap_or_else(|| needed.max(import_days).min(FEED_MAX_DAYS));
    let gap_exceeded_days = gap_days
        .map(|(gap, _)| gap)
        .filter(|gap| *gap > f64::from(FEED_MAX_DAYS));
    Window {
        days,
        gap_exceeded_days,
    }
}

/// Whole and fractional days from `since` to `now`; a `since` in the future counts as none.
fn days_between(since: OffsetDateTime, now: OffsetDateTime) -> f64 {
    (now - since).max(Duration::ZERO).as_seconds_f64() / 86_400.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-03-10 01:00 UTC);

    fn succeeded_at(at: OffsetDateTime) -> Checkpoint {
        Checkpoint {
            last_id: 841_500,
            delivered_at: at,
            last_success_at: Some(at),
        }
    }

    #[test]
    fn a_first_import_uses_import_days() {
        let window = feed_window(None, 3, None, NOW);

        assert_eq!(window.days, 3);
        assert_eq!(window.gap_exceeded_days, None);
    }

    #[test]
    fn a_daily_import_asks_for_two_days() {
        let checkpoint = succeeded_at(NOW - Duration::days(1));

        let window = feed_window(None, 1, Some(&checkpoint), NOW);

        assert_eq!(window.days, 2);
    }

    #[test]
    fn a_started_day_of_gap_counts_as_a_whole_day() {
        let checkpoint = succeeded_at(NOW - Duration::hours(50));

        let window = feed_window(None, 1, Some(&checkpoint), NOW);

        assert_eq!(window.days, 4);
    }

    #[test]
    fn import_days_is_a_floor_not_a_ceiling() {
        let checkpoint = succeeded_at(NOW - Duration::minutes(5));

        let window = feed_window(None, 5, Some(&checkpoint), NOW);

        assert_eq!(window.days, 5);
    }

    #[test]
    fn the_window_is_capped_at_seven_days_without_warning_while_it_covers_the_gap() {
        let checkpoint = succeeded_at(NOW - Duration::hours(6 * 24 + 12));

        let window = feed_window(None, 1, Some(&checkpoint), NOW);

        assert_eq!(window.days, 7);
        assert_eq!(window.gap_exceeded_days, None);
    }

    #[test]
    fn a_gap_longer_than_seven_days_is_reported() {
        let checkpoint = succeeded_at(NOW - Duration::days(10));

        let window = feed_window(None, 1, Some(&checkpoint), NOW);

        assert_eq!(window.days, 7);
        assert_eq!(window.gap_exceeded_days, Some(10.0));
    }

    #[test]
    fn an_explicit_window_wins_but_the_gap_is_still_reported() {
        let recent = succeeded_at(NOW - Duration::days(3));
        let old = succeeded_at(NOW - Duration::days(9));

        let narrow = feed_window(Some(1), 1, Some(&recent), NOW);
        let late = feed_window(Some(2), 1, Some(&old), NOW);

        assert_eq!(narrow.days, 1);
        assert_eq!(late.days, 2);
        assert_eq!(late.gap_exceeded_days, Some(9.0));
    }

    #[test]
    fn without_a_complete_import_the_window_reaches_past_the_last_delivery_by_import_days() {
        let partial = Checkpoint {
            last_id: 7,
            delivered_at: NOW - Duration::hours(30),
            last_success_at: None,
        };

        let window = feed_window(None, 2, Some(&partial), NOW);

        assert_eq!(window.days, 4);
    }

    #[test]
    fn a_checkpoint_from_the_future_counts_as_no_gap() {
        let checkpoint = succeeded_at(NOW + Duration::hours(2));

        let window = feed_window(None, 1, Some(&checkpoint), NOW);

        assert_eq!(window.days, 1);
        assert_eq!(window.gap_exceeded_days, None);
    }
}
