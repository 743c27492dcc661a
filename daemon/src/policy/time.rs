//! Days as the policy counts them: calendar days in the configured time
//! zone (daily quotas reset at local midnight, as the product's do).

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;

fn zoned(tz: &TimeZone, ms: i64) -> Result<jiff::Zoned, jiff::Error> {
    Ok(Timestamp::from_millisecond(ms)?.to_zoned(tz.clone()))
}

/// `YYYY-MM-DD` of the instant `ms`.
pub fn day(tz: &TimeZone, ms: i64) -> Result<String, jiff::Error> {
    Ok(zoned(tz, ms)?.date().to_string())
}

/// Milliseconds at the start of the day holding `ms`.
pub fn day_start(tz: &TimeZone, ms: i64) -> Result<i64, jiff::Error> {
    Ok(zoned(tz, ms)?.start_of_day()?.timestamp().as_millisecond())
}

/// Milliseconds at the start of the next day.
pub fn next_day_start(tz: &TimeZone, ms: i64) -> Result<i64, jiff::Error> {
    let z = zoned(tz, ms)?;
    let next = z.date().tomorrow()?.to_zoned(tz.clone())?;
    Ok(next.timestamp().as_millisecond())
}

/// Whole days from `a` to `b` (both `YYYY-MM-DD`).
pub fn days_between(a: &str, b: &str) -> Result<i64, jiff::Error> {
    let a: Date = a.parse()?;
    let b: Date = b.parse()?;
    Ok(i64::from((b - a).get_days()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_follow_the_zone() {
        let shanghai = TimeZone::get("Asia/Shanghai").expect("zone");
        // 2026-11-22T17:00:00Z is already the 23rd in Shanghai (UTC+8).
        let ms = 1_795_366_800_000;
        assert_eq!(day(&TimeZone::UTC, ms).unwrap(), "2026-11-22");
        assert_eq!(day(&shanghai, ms).unwrap(), "2026-11-23");
        let start = day_start(&shanghai, ms).unwrap();
        assert_eq!(day(&shanghai, start).unwrap(), "2026-11-23");
        assert_eq!(day(&shanghai, start - 1).unwrap(), "2026-11-22");
        assert_eq!(next_day_start(&shanghai, ms).unwrap() - start, 86_400_000);
        assert_eq!(days_between("2026-11-01", "2026-11-22").unwrap(), 21);
        assert_eq!(days_between("2026-02-28", "2026-03-01").unwrap(), 1);
    }
}
