//! The working-day calendar: when a processing time that started at some instant runs out.
//!
//! Processing times are mostly counted in working days (ngày làm việc): Monday to Friday,
//! public holidays excluded, and only inside office hours (giờ hành chính), in local time
//! (`Asia/Ho_Chi_Minh`). The holidays are a catalog decided every year, so they are data:
//! `procedures/calendar/holidays.yaml` ships with the engine ([`Calendar::default_vietnam`]) and
//! an administrator adds to it with more files ([`Calendar::load`], [`Calendar::merge`]).
//!
//! A working day is as long as one day's office hours (8 h), so "10 working days" from Friday
//! 15:00 ends at 15:00 on the tenth working day after it. Time outside office hours does not
//! count: a dossier received at 18:00 starts counting at the next opening.
//!
//! The clock stops while the owner supplements a dossier: take
//! `remaining = working_minutes_between(now, due)` when it stops and
//! `due = add_working_minutes(resume, remaining)` when it starts again.
//!
//! Every search gives up after [`SEARCH_CAP_DAYS`]: a due time further away than that is
//! reported as the cap, so a calendar with no working time cannot hang the engine. Inside the
//! years the catalog covers, whole working days are counted from a table of working days
//! built with the calendar (a due time is found with one binary search, not a walk); outside
//! them every week has five working days.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;

use chrono::{
    DateTime, Datelike, Days, Months, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeDelta,
    TimeZone, Utc, Weekday,
};
use chrono_tz::Tz;
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use crate::definition::Duration;

/// How far ahead (about 20 years) a due time is searched for before giving up.
pub const SEARCH_CAP_DAYS: u64 = 20 * 366;
/// The longest holiday range accepted; anything longer is taken for a typo in a year.
pub const MAX_HOLIDAY_DAYS: i64 = 366;
/// Calendar files are small; a larger one is refused before it is read.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// A calendar file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CalendarError {
    #[error("{origin}: cannot read the calendar: {source}")]
    Read {
        origin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: the calendar is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge { origin: String },
    #[error("{origin}:{line}:{column}: {problem}")]
    Invalid {
        origin: String,
        line: u64,
        column: u64,
        problem: Problem,
    },
}

/// What is wrong at a place in a calendar file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The YAML parser's (or the file structure's) own message.
    #[error("{0}")]
    Yaml(String),
    #[error("unknown time zone `{0}` (expected an IANA name such as Asia/Ho_Chi_Minh)")]
    UnknownTimezone(String),
    #[error("`{0}` is not a date (expected YYYY-MM-DD)")]
    BadDate(String),
    #[error("`{0}` is not a time of day (expected HH:MM, from 00:00 to 24:00)")]
    BadTime(String),
    #[error("office hours end at {end} before they start at {start}")]
    HoursReversed { start: String, end: String },
    #[error("office hours {start}–{end} overlap the interval before them")]
    HoursOverlap { start: String, end: String },
    #[error("`working_hours` is empty: a calendar needs at least one interval")]
    NoWorkingHours,
    #[error("a holiday needs either `date`, or both `from` and `to`")]
    HolidayShape,
    #[error("the holiday ends on {to}, before it starts on {from}")]
    EndBeforeStart { from: NaiveDate, to: NaiveDate },
    #[error("the holiday from {from} to {to} is longer than {MAX_HOLIDAY_DAYS} days")]
    TooLong { from: NaiveDate, to: NaiveDate },
    #[error("{date} is a {weekday}: `working_weekends` lists only Saturdays and Sundays")]
    NotWeekend { date: NaiveDate, weekday: Weekday },
}

/// Office hours, holidays and compensatory working weekends, in one time zone.
#[derive(Debug, Clone)]
pub struct Calendar {
    tz: Tz,
    /// Office hours in minutes after local midnight: sorted, disjoint, never empty.
    hours: Vec<(u32, u32)>,
    /// Every day off, ranges expanded, with its name.
    holidays: BTreeMap<NaiveDate, String>,
    /// Saturdays and Sundays worked to make up a swapped day (làm bù).
    working_weekends: BTreeSet<NaiveDate>,
    /// Working days counted over the span of the two lists above; rebuilt when they change.
    days: DayTable,
}

/// The days from the first holiday or working weekend to the last, each with the number of
/// working days before it: a working day is a step of the count, and the `n`-th working day
/// after one is a binary search. Outside the span only Monday to Friday work.
#[derive(Debug, Clone)]
struct DayTable {
    /// Whether every exception is in the table (false when they are spread too wide for one):
    /// only then does a week outside it hold five working days.
    complete: bool,
    first: Option<NaiveDate>,
    /// `before[i]`: working days in `[first, first + i)`; one entry more than the days covered.
    before: Vec<u32>,
}

/// The most days a [`DayTable`] covers (about 200 years); a calendar whose exceptions are
/// spread wider is walked day by day.
const MAX_TABLE_DAYS: i64 = 200 * 366;

impl DayTable {
    /// No table: `complete` when there is no exception at all.
    fn empty(complete: bool) -> Self {
        DayTable {
            complete,
            first: None,
            before: Vec::new(),
        }
    }

    /// Whether the seven days from `day` hold no exception, so five working days.
    fn plain_week(&self, day: NaiveDate) -> bool {
        if !self.complete {
            return false;
        }
        let (Some(first), Some(end)) = (self.first, self.end()) else {
            return true;
        };
        day >= end
            || day
                .checked_add_days(Days::new(7))
                .is_some_and(|d| d <= first)
    }

    fn build(
        holidays: &BTreeMap<NaiveDate, String>,
        working_weekends: &BTreeSet<NaiveDate>,
    ) -> Self {
        let first = holidays
            .keys()
            .next()
            .into_iter()
            .chain(working_weekends.first())
            .min();
        let last = holidays
            .keys()
            .next_back()
            .into_iter()
            .chain(working_weekends.last())
            .max();
        let (Some(&first), Some(&last)) = (first, last) else {
            return DayTable::empty(true);
        };
        if (last - first).num_days() >= MAX_TABLE_DAYS {
            return DayTable::empty(false);
        }
        let mut before = Vec::with_capacity((last - first).num_days() as usize + 2);
        let mut count = 0u32;
        before.push(count);
        for day in first.iter_days().take_while(|d| *d <= last) {
            count += u32::from(working_by_lists(holidays, working_weekends, day));
            before.push(count);
        }
        DayTable {
            complete: true,
            first: Some(first),
            before,
        }
    }

    /// The index of `day` in the table, if the table covers it.
    fn index(&self, day: NaiveDate) -> Option<usize> {
        let offset = (day - self.first?).num_days();
        usize::try_from(offset)
            .ok()
            .filter(|&i| i + 1 < self.before.len())
    }

    /// The day after the last one covered.
    fn end(&self) -> Option<NaiveDate> {
        let first = self.first?;
        first.checked_add_days(Days::new(self.before.len() as u64 - 1))
    }
}

/// Whether `day` works by the lists alone (the table's source of truth).
fn working_by_lists(
    holidays: &BTreeMap<NaiveDate, String>,
    working_weekends: &BTreeSet<NaiveDate>,
    day: NaiveDate,
) -> bool {
    if holidays.contains_key(&day) {
        return false;
    }
    match day.weekday() {
        Weekday::Sat | Weekday::Sun => working_weekends.contains(&day),
        _ => true,
    }
}

// The file as written. Dates and times stay strings so that a bad one is reported with its
// own line and column rather than as a generic type error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCalendar {
    #[serde(default)]
    timezone: Option<Spanned<String>>,
    #[serde(default)]
    working_hours: Option<Spanned<Vec<RawInterval>>>,
    #[serde(default)]
    holidays: Vec<Spanned<RawHoliday>>,
    #[serde(default)]
    working_weekends: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterval {
    start: Spanned<String>,
    end: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHoliday {
    date: Option<Spanned<String>>,
    from: Option<Spanned<String>>,
    to: Option<Spanned<String>>,
    name: String,
}

/// Giờ hành chính when a file does not say: 07:30–11:30 and 13:00–17:00.
const DEFAULT_HOURS: [(u32, u32); 2] = [(450, 690), (780, 1020)];

impl Calendar {
    /// The shipped Vietnamese calendar (`procedures/calendar/holidays.yaml`, built in).
    pub fn default_vietnam() -> Result<Self, CalendarError> {
        Self::from_yaml_str(
            include_str!("../../procedures/calendar/holidays.yaml"),
            "procedures/calendar/holidays.yaml",
        )
    }

    /// Reads a calendar file; errors name the file by `path`.
    pub fn load(path: &Path) -> Result<Self, CalendarError> {
        let origin = path.display().to_string();
        let read_error = |source| CalendarError::Read {
            origin: origin.clone(),
            source,
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(read_error)?
            .take(MAX_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(read_error)?;
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(CalendarError::TooLarge { origin });
        }
        Self::from_yaml_str(&text, &origin)
    }

    /// Parses a calendar; `origin` names it in errors (usually the file path). A file without
    /// `timezone` or `working_hours` gets `Asia/Ho_Chi_Minh` and the Vietnamese office hours.
    pub fn from_yaml_str(text: &str, origin: &str) -> Result<Self, CalendarError> {
        let invalid = |at: &Location, problem| CalendarError::Invalid {
            origin: origin.to_owned(),
            line: at.line().max(1),
            column: at.column().max(1),
            problem,
        };
        let options = serde_saphyr::options! {
            budget: serde_saphyr::budget! {
                max_depth: 16,
                max_nodes: 100_000,
                max_aliases: 100,
                max_anchors: 100,
                max_documents: 1,
                max_total_scalar_bytes: MAX_FILE_BYTES as usize,
            },
        };
        let raw: RawCalendar = serde_saphyr::from_str_with_options(text, options).map_err(|e| {
            let at = e.location().unwrap_or(Location::UNKNOWN);
            invalid(&at, Problem::Yaml(describe(&e)))
        })?;

        let tz = match &raw.timezone {
            None => chrono_tz::Asia::Ho_Chi_Minh,
            Some(name) => name.value.trim().parse().map_err(|_| {
                invalid(
                    &name.referenced,
                    Problem::UnknownTimezone(name.value.clone()),
                )
            })?,
        };

        let hours = match &raw.working_hours {
            None => DEFAULT_HOURS.to_vec(),
            Some(list) => {
                let mut parsed = Vec::with_capacity(list.value.len());
                for iv in &list.value {
                    let start = parse_time(&iv.start.value).ok_or_else(|| {
                        invalid(
                            &iv.start.referenced,
                            Problem::BadTime(iv.start.value.clone()),
                        )
                    })?;
                    let end = parse_time(&iv.end.value).ok_or_else(|| {
                        invalid(&iv.end.referenced, Problem::BadTime(iv.end.value.clone()))
                    })?;
                    if end <= start {
                        let problem = Problem::HoursReversed {
                            start: iv.start.value.clone(),
                            end: iv.end.value.clone(),
                        };
                        return Err(invalid(&iv.end.referenced, problem));
                    }
                    parsed.push((start, end, iv));
                }
                if parsed.is_empty() {
                    return Err(invalid(&list.referenced, Problem::NoWorkingHours));
                }
                parsed.sort_by_key(|&(start, _, _)| start);
                for pair in parsed.windows(2) {
                    let ((_, prev_end, _), (start, _, iv)) = (pair[0], pair[1]);
                    if start < prev_end {
                        let problem = Problem::HoursOverlap {
                            start: iv.start.value.clone(),
                            end: iv.end.value.clone(),
                        };
                        return Err(invalid(&iv.start.referenced, problem));
                    }
                }
                parsed.into_iter().map(|(s, e, _)| (s, e)).collect()
            }
        };

        let date = |s: &Spanned<String>| {
            NaiveDate::parse_from_str(s.value.trim(), "%Y-%m-%d")
                .map_err(|_| invalid(&s.referenced, Problem::BadDate(s.value.clone())))
        };

        let mut holidays = BTreeMap::new();
        for entry in &raw.holidays {
            let h = &entry.value;
            let (from, to) = match (&h.date, &h.from, &h.to) {
                (Some(d), None, None) => {
                    let d = date(d)?;
                    (d, d)
                }
                (None, Some(f), Some(t)) => (date(f)?, date(t)?),
                _ => return Err(invalid(&entry.referenced, Problem::HolidayShape)),
            };
            if to < from {
                return Err(invalid(
                    &entry.referenced,
                    Problem::EndBeforeStart { from, to },
                ));
            }
            if (to - from).num_days() >= MAX_HOLIDAY_DAYS {
                return Err(invalid(&entry.referenced, Problem::TooLong { from, to }));
            }
            // Overlapping entries are fine; a day keeps the name it was first given.
            for day in from.iter_days().take_while(|d| *d <= to) {
                holidays.entry(day).or_insert_with(|| h.name.clone());
            }
        }

        let mut working_weekends = BTreeSet::new();
        for entry in &raw.working_weekends {
            let day = date(entry)?;
            let weekday = day.weekday();
            if !matches!(weekday, Weekday::Sat | Weekday::Sun) {
                return Err(invalid(
                    &entry.referenced,
                    Problem::NotWeekend { date: day, weekday },
                ));
            }
            working_weekends.insert(day);
        }

        let days = DayTable::build(&holidays, &working_weekends);
        Ok(Calendar {
            tz,
            hours,
            holidays,
            working_weekends,
            days,
        })
    }

    /// Adds an administrator's extra holidays and working weekends. Office hours and the time
    /// zone stay this calendar's; on a day both name, `other`'s holiday name wins.
    pub fn merge(&mut self, other: Calendar) {
        self.holidays.extend(other.holidays);
        self.working_weekends.extend(other.working_weekends);
        self.days = DayTable::build(&self.holidays, &self.working_weekends);
    }

    /// The calendar date of `at` in this calendar's time zone.
    pub fn local_date(&self, at: DateTime<Utc>) -> NaiveDate {
        at.with_timezone(&self.timezone()).date_naive()
    }

    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The length of one working day in minutes (480 for Vietnamese office hours).
    pub fn working_day_minutes(&self) -> i64 {
        self.hours.iter().map(|&(s, e)| i64::from(e - s)).sum()
    }

    /// Monday to Friday unless a holiday, or a listed working weekend. A holiday wins over a
    /// working weekend on the same day.
    pub fn is_working_day(&self, day: NaiveDate) -> bool {
        match self.days.index(day) {
            Some(i) => self.days.before[i + 1] > self.days.before[i],
            None => working_by_lists(&self.holidays, &self.working_weekends, day),
        }
    }

    /// The `n`-th working day counted from `from` (`from` itself counts if it works), `n ≥ 1`;
    /// `None` unless it falls before `limit`.
    fn nth_working_day(&self, from: NaiveDate, n: u64, limit: NaiveDate) -> Option<NaiveDate> {
        let mut day = from;
        let mut left = n;
        while day < limit && left > 0 {
            if let Some(i) = self.days.index(day) {
                let before = &self.days.before;
                let in_table = u64::from(before[before.len() - 1] - before[i]);
                if left <= in_table {
                    // The first index whose count reaches the target is the day after it.
                    let target = u64::from(before[i]) + left;
                    let after = before.partition_point(|&c| u64::from(c) < target);
                    let found = day.checked_add_days(Days::new((after - 1 - i) as u64))?;
                    return (found < limit).then_some(found);
                }
                left -= in_table;
                day = self.days.end()?;
                continue;
            }
            if left > 5 && self.days.plain_week(day) {
                // Seven days with no exception hold five working days, whatever the first.
                day = day.checked_add_days(Days::new(7))?;
                left -= 5;
                continue;
            }
            if self.is_working_day(day) {
                left -= 1;
                if left == 0 {
                    return Some(day);
                }
            }
            day = day.succ_opt()?;
        }
        None
    }

    /// Whether the catalog lists any holiday in `year`; a year without one was most likely
    /// never filled in, and its deadlines only skip weekends.
    pub fn covers(&self, year: i32) -> bool {
        !self.holidays_in(year).is_empty()
    }

    /// The holidays of `year`, one entry per day (weekend days inside a break included).
    pub fn holidays_in(&self, year: i32) -> Vec<(NaiveDate, String)> {
        let (Some(first), Some(last)) = (
            NaiveDate::from_ymd_opt(year, 1, 1),
            NaiveDate::from_ymd_opt(year, 12, 31),
        ) else {
            return Vec::new();
        };
        self.holidays
            .range(first..=last)
            .map(|(day, name)| (*day, name.clone()))
            .collect()
    }

    /// The compensatory working Saturdays and Sundays of `year`.
    pub fn working_weekends_in(&self, year: i32) -> Vec<NaiveDate> {
        self.working_weekends
            .iter()
            .filter(|d| d.year() == year)
            .copied()
            .collect()
    }

    /// The due time of a processing time `d` that starts at `start`.
    ///
    /// Working days and hours count office hours only; days and months are calendar time
    /// in local time (a month from 31 January is the last day of February); minutes are
    /// wall-clock minutes.
    pub fn add(&self, start: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
        match d {
            Duration::WorkingDays(n) => {
                self.add_working_minutes(start, i64::from(n) * self.working_day_minutes())
            }
            Duration::WorkingHours(n) => self.add_working_minutes(start, i64::from(n) * 60),
            Duration::Days(n) => {
                self.shift_local(start, |t| t.checked_add_days(Days::new(n.into())))
            }
            Duration::Months(n) => {
                self.shift_local(start, |t| t.checked_add_months(Months::new(n)))
            }
            Duration::Minutes(n) => start
                .checked_add_signed(TimeDelta::minutes(n.into()))
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        }
    }

    /// The instant when `minutes` of working time have passed since `start`. Counting starts
    /// at the next opening if `start` is outside office hours; a result that falls exactly
    /// on a closing time stays there (1 working day from Monday 07:30 is Monday 17:00).
    /// Zero or negative minutes give `start`; beyond [`SEARCH_CAP_DAYS`] the cap is returned.
    pub fn add_working_minutes(&self, start: DateTime<Utc>, minutes: i64) -> DateTime<Utc> {
        if minutes <= 0 {
            return start;
        }
        let cap = cap(start);
        let (Some(mut left), Some(from)) = (TimeDelta::try_minutes(minutes), self.to_local(start))
        else {
            return cap;
        };
        let at = |day: NaiveDate, offset: TimeDelta| {
            day.and_time(NaiveTime::MIN)
                .checked_add_signed(offset)
                .and_then(|t| self.to_utc(t))
                .unwrap_or(cap)
        };
        // The first day counts from `from`; if it does not finish there, whole working days
        // are skipped through the table and the last one is walked from its opening.
        let first = from.date();
        if self.is_working_day(first) {
            match self.spend(from.time() - NaiveTime::MIN, left) {
                Ok(offset) => return at(first, offset),
                Err(rest) => left = rest,
            }
        }
        let whole_day = self.working_day_minutes();
        let (Some(next), Some(limit)) = (
            first.succ_opt(),
            Some(
                first
                    .checked_add_days(Days::new(SEARCH_CAP_DAYS))
                    .unwrap_or(NaiveDate::MAX),
            ),
        ) else {
            return cap;
        };
        // The days wholly spent, then the one the rest ends on (1 to `whole_day` minutes).
        let left = left.num_minutes();
        let whole_days = (left - 1) / whole_day;
        let rest = TimeDelta::minutes(left - whole_days * whole_day);
        let Some(last) = u64::try_from(whole_days)
            .ok()
            .and_then(|n| self.nth_working_day(next, n + 1, limit))
        else {
            return cap;
        };
        match self.spend(TimeDelta::zero(), rest) {
            Ok(offset) => at(last, offset),
            Err(_) => cap,
        }
    }

    /// Spends `left` in one working day's office hours from `earliest` (time after midnight):
    /// the time of day it runs out (a closing time if it runs out exactly there), or what is
    /// left at the day's end.
    fn spend(&self, earliest: TimeDelta, mut left: TimeDelta) -> Result<TimeDelta, TimeDelta> {
        for &(open, close) in &self.hours {
            let close = TimeDelta::minutes(close.into());
            let begin = TimeDelta::minutes(open.into()).max(earliest);
            if begin >= close {
                continue;
            }
            let available = close - begin;
            if left <= available {
                return Ok(begin + left);
            }
            left -= available;
        }
        Err(left)
    }

    /// Working minutes in `[a, b)`, 0 if `b <= a`. Spans longer than [`SEARCH_CAP_DAYS`] are
    /// counted up to the cap.
    pub fn working_minutes_between(&self, a: DateTime<Utc>, b: DateTime<Utc>) -> i64 {
        if b <= a {
            return 0;
        }
        let (Some(from), Some(to)) = (self.to_local(a), self.to_local(b.min(cap(a)))) else {
            return 0;
        };
        let mut total = TimeDelta::zero();
        for day in from.date().iter_days().take_while(|d| *d <= to.date()) {
            for (open, close) in self.office_hours(day) {
                let (begin, end) = (open.max(from), close.min(to));
                if begin < end {
                    total += end - begin;
                }
            }
        }
        total.num_minutes()
    }

    /// Working days in `[a, b)`, 0 if `b <= a`; counted up to [`SEARCH_CAP_DAYS`].
    pub fn working_days_between(&self, a: NaiveDate, b: NaiveDate) -> i64 {
        let count = a
            .iter_days()
            .take(SEARCH_CAP_DAYS as usize)
            .take_while(|d| *d < b)
            .filter(|d| self.is_working_day(*d))
            .count();
        i64::try_from(count).unwrap_or(i64::MAX)
    }

    /// The office-hour intervals of `day` in local time; none on a day off.
    fn office_hours(
        &self,
        day: NaiveDate,
    ) -> impl Iterator<Item = (NaiveDateTime, NaiveDateTime)> + '_ {
        let midnight = day.and_time(NaiveTime::MIN);
        let at =
            move |minutes: u32| midnight.checked_add_signed(TimeDelta::minutes(minutes.into()));
        let hours = if self.is_working_day(day) {
            &self.hours[..]
        } else {
            &[]
        };
        hours
            .iter()
            .filter_map(move |&(s, e)| Some((at(s)?, at(e)?)))
    }

    /// Applies a calendar shift to the local wall time of `start`.
    fn shift_local(
        &self,
        start: DateTime<Utc>,
        shift: impl FnOnce(NaiveDateTime) -> Option<NaiveDateTime>,
    ) -> DateTime<Utc> {
        self.to_local(start)
            .and_then(shift)
            .and_then(|t| self.to_utc(t))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    // `DateTime::naive_local` panics at the ends of chrono's range; these return `None`.
    fn to_local(&self, t: DateTime<Utc>) -> Option<NaiveDateTime> {
        let utc = t.naive_utc();
        utc.checked_add_offset(self.tz.offset_from_utc_datetime(&utc).fix())
    }

    fn to_utc(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        // A wall time skipped by a DST change (never in Vietnam) goes through the offset in
        // force at that instant read as UTC, which is an offset next to the gap.
        let offset = match self.tz.offset_from_local_datetime(&local).earliest() {
            Some(offset) => offset.fix(),
            None => self.tz.offset_from_utc_datetime(&local).fix(),
        };
        Some(local.checked_sub_offset(offset)?.and_utc())
    }
}

/// Where searches stop: [`SEARCH_CAP_DAYS`] after `start`.
fn cap(start: DateTime<Utc>) -> DateTime<Utc> {
    start
        .checked_add_days(Days::new(SEARCH_CAP_DAYS))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `HH:MM` (or `H:MM`) to minutes after midnight; `24:00` is allowed as a closing time.
fn parse_time(s: &str) -> Option<u32> {
    let (h, m) = s.trim().split_once(':')?;
    if !(1..=2).contains(&h.len()) || m.len() != 2 {
        return None;
    }
    // `u32::from_str` alone would also take a sign.
    let number = |p: &str| {
        p.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| p.parse::<u32>().ok())
            .flatten()
    };
    let (h, m) = (number(h)?, number(m)?);
    (m < 60 && (h < 24 || (h, m) == (24, 0))).then_some(h * 60 + m)
}

/// The parser's message without its source snippet and its own `at line …` suffix (the
/// error prints the position in `file:line:column` form).
fn describe(e: &serde_saphyr::Error) -> String {
    let full = e.without_snippet().to_string();
    let first = full.lines().next().unwrap_or("invalid YAML").trim();
    match first.find(" at line ") {
        Some(i) => first[..i].to_string(),
        None => first.to_string(),
    }
}

/// An instant as Vietnamese readers expect it: in Asia/Ho_Chi_Minh, RFC 3339 with `+07:00`
/// (Vietnam keeps no daylight saving time). Stored times stay UTC; this is for display.
pub fn vietnam_time(t: DateTime<Utc>) -> chrono::DateTime<chrono::FixedOffset> {
    t.with_timezone(&chrono_tz::Asia::Ho_Chi_Minh)
        .fixed_offset()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cal() -> Calendar {
        Calendar::default_vietnam().expect("the shipped calendar loads")
    }

    #[test]
    fn vietnam_time_is_written_with_the_plus_seven_offset() {
        let t = Utc.with_ymd_and_hms(2026, 3, 2, 17, 30, 5).unwrap();
        assert_eq!(vietnam_time(t).to_rfc3339(), "2026-03-03T00:30:05+07:00");
        assert_eq!(vietnam_time(t), t);
    }

    /// An instant given in Vietnamese local time.
    fn vn(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        chrono_tz::Asia::Ho_Chi_Minh
            .with_ymd_and_hms(y, mo, d, h, mi, 0)
            .single()
            .expect("a valid local time")
            .with_timezone(&Utc)
    }

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).expect("a valid date")
    }

    fn problem(result: Result<Calendar, CalendarError>) -> (u64, Problem) {
        match result {
            Err(CalendarError::Invalid { line, problem, .. }) => (line, problem),
            other => panic!("expected an invalid calendar, got {other:?}"),
        }
    }

    #[test]
    fn shipped_file_covers_2024_to_2027() {
        let c = cal();
        assert_eq!(c.timezone(), chrono_tz::Asia::Ho_Chi_Minh);
        assert_eq!(c.working_day_minutes(), 480);
        for year in 2024..=2027 {
            assert!(c.covers(year), "no holidays for {year}");
            let days: Vec<NaiveDate> = c.holidays_in(year).into_iter().map(|(d, _)| d).collect();
            for (m, d) in [(1, 1), (4, 30), (5, 1), (9, 2)] {
                assert!(days.contains(&day(year, m, d)), "{year}-{m}-{d} missing");
            }
            // Quốc khánh is two days (2/9 and the day before or after) since 2021.
            assert!(!c.is_working_day(day(year, 9, 1)) || !c.is_working_day(day(year, 9, 3)));
        }
        assert!(!c.covers(2023));
        assert_eq!(
            c.holidays_in(2026)[0],
            (day(2026, 1, 1), "Tết Dương lịch".to_string())
        );
        assert_eq!(
            c.working_weekends_in(2026),
            [day(2026, 1, 10), day(2026, 8, 22)]
        );
    }

    #[test]
    fn tet_2026_is_skipped() {
        let c = cal();
        assert!(c.is_working_day(day(2026, 2, 13)));
        for d in 14..=22 {
            assert!(!c.is_working_day(day(2026, 2, d)), "2026-02-{d}");
        }
        assert!(c.is_working_day(day(2026, 2, 23)));
        // One working day from Friday 13/2 09:00 ends on Monday 23/2 09:00.
        let due = c.add(vn(2026, 2, 13, 9, 0), Duration::WorkingDays(1));
        assert_eq!(due, vn(2026, 2, 23, 9, 0));
        assert_eq!(
            c.working_days_between(day(2026, 2, 9), day(2026, 2, 28)),
            10
        );
    }

    #[test]
    fn ten_working_days_from_friday_afternoon() {
        let c = cal();
        // No holiday in March 2026: two full weeks later, same time.
        let due = c.add(vn(2026, 3, 6, 15, 0), Duration::WorkingDays(10));
        assert_eq!(due, vn(2026, 3, 20, 15, 0));
        // Across 30/4–3/5/2026 (Thursday to Sunday): the 2 days off push it by 2.
        let due = c.add(vn(2026, 4, 24, 15, 0), Duration::WorkingDays(10));
        // Working days: 28, 29/4, 4–8/5, 11–13/5 (27/4 is Giỗ Tổ made up).
        assert_eq!(due, vn(2026, 5, 13, 15, 0));
    }

    #[test]
    fn start_on_a_holiday_counts_from_the_next_opening() {
        let c = cal();
        // 1/1/2026: 1–4/1 off, so counting starts Monday 5/1 07:30.
        assert_eq!(
            c.add(vn(2026, 1, 1, 10, 0), Duration::WorkingHours(2)),
            vn(2026, 1, 5, 9, 30)
        );
        assert_eq!(
            c.add(vn(2026, 1, 1, 10, 0), Duration::WorkingDays(1)),
            vn(2026, 1, 5, 17, 0)
        );
        // Saturday 10/1/2026 is worked (làm bù for Friday 2/1).
        assert!(c.is_working_day(day(2026, 1, 10)));
        assert_eq!(
            c.add(vn(2026, 1, 9, 16, 0), Duration::WorkingHours(2)),
            vn(2026, 1, 10, 8, 30)
        );
    }

    #[test]
    fn start_outside_office_hours() {
        let c = cal();
        // After 17:00: next morning.
        assert_eq!(
            c.add(vn(2026, 3, 9, 18, 0), Duration::WorkingHours(1)),
            vn(2026, 3, 10, 8, 30)
        );
        // Exactly at 17:00 is after hours too.
        assert_eq!(
            c.add(vn(2026, 3, 9, 17, 0), Duration::WorkingHours(1)),
            vn(2026, 3, 10, 8, 30)
        );
        // At lunch: from 13:00.
        assert_eq!(
            c.add(vn(2026, 3, 9, 12, 0), Duration::WorkingHours(1)),
            vn(2026, 3, 9, 14, 0)
        );
        // Straddling lunch: 11:00 + 1 h = 30 min before, 30 min after.
        assert_eq!(
            c.add(vn(2026, 3, 9, 11, 0), Duration::WorkingHours(1)),
            vn(2026, 3, 9, 13, 30)
        );
        // Ending on a closing time stays on it.
        assert_eq!(
            c.add(vn(2026, 3, 9, 7, 30), Duration::WorkingDays(1)),
            vn(2026, 3, 9, 17, 0)
        );
    }

    #[test]
    fn calendar_units() {
        let c = cal();
        assert_eq!(
            c.add(vn(2026, 2, 13, 9, 0), Duration::Days(10)),
            vn(2026, 2, 23, 9, 0)
        );
        assert_eq!(
            c.add(vn(2026, 1, 31, 9, 0), Duration::Months(1)),
            vn(2026, 2, 28, 9, 0)
        );
        assert_eq!(
            c.add(vn(2026, 1, 31, 9, 0), Duration::Minutes(90)),
            vn(2026, 1, 31, 10, 30)
        );
        // Months count in local time: 31/3 00:30 in Hà Nội is 30/3 in UTC, whose month would
        // end on 1/5 local.
        assert_eq!(
            c.add(vn(2026, 3, 31, 0, 30), Duration::Months(1)),
            vn(2026, 4, 30, 0, 30)
        );
    }

    #[test]
    fn working_minutes_across_a_weekend() {
        let c = cal();
        // Friday 16:00–17:00 and Monday 07:30–08:30.
        assert_eq!(
            c.working_minutes_between(vn(2026, 3, 6, 16, 0), vn(2026, 3, 9, 8, 30)),
            120
        );
        // Within a morning, and a whole week.
        assert_eq!(
            c.working_minutes_between(vn(2026, 3, 9, 8, 0), vn(2026, 3, 9, 8, 45)),
            45
        );
        assert_eq!(
            c.working_minutes_between(vn(2026, 3, 9, 0, 0), vn(2026, 3, 16, 0, 0)),
            5 * 480
        );
        // Reversed or empty spans are zero.
        assert_eq!(
            c.working_minutes_between(vn(2026, 3, 9, 9, 0), vn(2026, 3, 9, 8, 0)),
            0
        );
        assert_eq!(
            c.working_minutes_between(vn(2026, 3, 7, 9, 0), vn(2026, 3, 8, 17, 0)),
            0
        );
    }

    #[test]
    fn add_then_measure_round_trips() {
        let c = cal();
        let mut start = vn(2026, 2, 10, 6, 0);
        let amounts = [1, 59, 61, 240, 241, 480, 481, 4_800, 14_400];
        while start < vn(2026, 2, 27, 0, 0) {
            for minutes in amounts {
                let due = c.add_working_minutes(start, minutes);
                assert_eq!(
                    c.working_minutes_between(start, due),
                    minutes,
                    "{start} + {minutes}"
                );
            }
            start += TimeDelta::minutes(97);
        }
    }

    /// The due time walked day by day and interval by interval, the way the engine counted
    /// before the table of working days: the reference the table must agree with.
    fn walked(c: &Calendar, start: DateTime<Utc>, minutes: i64) -> DateTime<Utc> {
        let from = c.to_local(start).unwrap();
        let mut left = TimeDelta::minutes(minutes);
        let mut earliest = from.time() - NaiveTime::MIN;
        for day in from.date().iter_days().take(SEARCH_CAP_DAYS as usize) {
            let working = !c.holidays.contains_key(&day)
                && (!matches!(day.weekday(), Weekday::Sat | Weekday::Sun)
                    || c.working_weekends.contains(&day));
            if working {
                for &(open, close) in &c.hours {
                    let close = TimeDelta::minutes(close.into());
                    let begin = TimeDelta::minutes(open.into()).max(earliest);
                    if begin >= close {
                        continue;
                    }
                    if left <= close - begin {
                        let local = day.and_time(NaiveTime::MIN) + begin + left;
                        return c.to_utc(local).unwrap();
                    }
                    left -= close - begin;
                }
            }
            earliest = TimeDelta::zero();
        }
        cap(start)
    }

    #[test]
    fn due_times_agree_with_a_day_by_day_walk() {
        let shipped = cal();
        let mut merged = cal();
        merged.merge(
            Calendar::from_yaml_str(
                "holidays:\n  - { from: 2030-06-03, to: 2030-06-05, name: Nghỉ thử }\nworking_weekends: [2030-06-08]\n",
                "extra.yaml",
            )
            .unwrap(),
        );
        let split_hours = Calendar::from_yaml_str(
            "timezone: Asia/Bangkok\nworking_hours:\n  - { start: \"08:00\", end: \"11:30\" }\n  - { start: \"13:00\", end: \"16:15\" }\nholidays:\n  - { date: 2026-09-02, name: Quốc khánh }\n",
            "split.yaml",
        )
        .unwrap();
        let no_exceptions = Calendar::from_yaml_str("holidays: []\n", "plain.yaml").unwrap();
        // Exceptions more than MAX_TABLE_DAYS apart: no table, every day looked up.
        let too_wide = Calendar::from_yaml_str(
            "holidays:\n  - { date: 2026-05-01, name: Quốc tế Lao động }\n  - { date: 2300-01-01, name: Tết Dương lịch }\nworking_weekends: [2026-05-09]\n",
            "wide.yaml",
        )
        .unwrap();
        assert!(!too_wide.days.complete && too_wide.days.first.is_none());
        // Starts before the catalog, around Tết and the swapped days, across its last day,
        // and years after it (only weekends then); amounts from a minute to a year.
        let starts = [
            vn(2023, 12, 29, 16, 45),
            vn(2024, 1, 1, 0, 0),
            vn(2026, 2, 12, 10, 17),
            vn(2026, 2, 14, 7, 30),
            vn(2026, 4, 24, 17, 0),
            vn(2026, 4, 25, 9, 0),
            vn(2026, 12, 31, 12, 0),
            vn(2027, 12, 30, 15, 59),
            vn(2030, 5, 31, 11, 45),
            vn(2031, 7, 4, 6, 0),
        ];
        let amounts = [
            1, 30, 210, 239, 240, 241, 479, 480, 481, 960, 4_800, 4_801, 14_400, 124_800,
        ];
        for c in [&shipped, &merged, &split_hours, &no_exceptions, &too_wide] {
            for start in starts {
                for step in 0..9 {
                    let start = start + TimeDelta::minutes(step * 173);
                    for minutes in amounts {
                        assert_eq!(
                            c.add_working_minutes(start, minutes),
                            walked(c, start, minutes),
                            "{start} + {minutes} min"
                        );
                    }
                }
            }
        }
        // Every day of the covered years classified as the lists say.
        for day in day(2023, 12, 1)
            .iter_days()
            .take_while(|d| *d < day(2031, 1, 1))
        {
            let by_lists = working_by_lists(&merged.holidays, &merged.working_weekends, day);
            assert_eq!(merged.is_working_day(day), by_lists, "{day}");
        }
    }

    #[test]
    fn pause_and_resume() {
        let c = cal();
        let received = vn(2026, 3, 2, 9, 0);
        let due = c.add(received, Duration::WorkingDays(5)); // Monday 9/3 09:00
        assert_eq!(due, vn(2026, 3, 9, 9, 0));
        // Paused Wednesday 4/3 09:00 for a supplement, resumed Tuesday 10/3 09:00.
        let remaining = c.working_minutes_between(vn(2026, 3, 4, 9, 0), due);
        assert_eq!(remaining, 3 * 480);
        assert_eq!(
            c.add_working_minutes(vn(2026, 3, 10, 9, 0), remaining),
            vn(2026, 3, 13, 9, 0)
        );
    }

    #[test]
    fn searches_are_capped_and_never_panic() {
        let c = cal();
        let start = vn(2026, 1, 1, 0, 0);
        let capped = start + TimeDelta::days(SEARCH_CAP_DAYS as i64);
        assert_eq!(c.add_working_minutes(start, i64::MAX), capped);
        assert_eq!(c.add(start, Duration::WorkingDays(u32::MAX)), capped);
        assert_eq!(
            c.working_minutes_between(start, DateTime::<Utc>::MAX_UTC),
            c.working_minutes_between(start, capped)
        );
        for t in [DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC] {
            for d in [
                Duration::WorkingDays(u32::MAX),
                Duration::WorkingHours(1),
                Duration::Days(u32::MAX),
                Duration::Months(u32::MAX),
                Duration::Minutes(u32::MAX),
            ] {
                let _ = c.add(t, d);
            }
            let _ = c.working_minutes_between(t, DateTime::<Utc>::MAX_UTC);
            let _ = c.working_minutes_between(DateTime::<Utc>::MIN_UTC, t);
        }
        assert!(c.working_days_between(NaiveDate::MIN, NaiveDate::MAX) > 0);
        assert_eq!(c.working_days_between(day(2026, 3, 9), day(2026, 3, 2)), 0);
    }

    #[test]
    fn merge_adds_an_administrators_holidays() {
        let mut c = cal();
        let extra = Calendar::from_yaml_str(
            "holidays:\n  - { date: 2026-11-24, name: Ngày Văn hóa Việt Nam }\nworking_weekends: [2026-11-28]\n",
            "extra.yaml",
        )
        .expect("the extra file loads");
        c.merge(extra);
        assert!(!c.is_working_day(day(2026, 11, 24)));
        assert!(c.is_working_day(day(2026, 11, 28)));
        assert_eq!(c.working_day_minutes(), 480);
    }

    #[test]
    fn custom_hours_and_time_zone() {
        let c = Calendar::from_yaml_str(
            "timezone: Europe/Paris\nworking_hours:\n  - { start: \"13:00\", end: \"17:30\" }\n  - { start: '8:00', end: '12:00' }\n",
            "paris.yaml",
        )
        .expect("loads");
        assert_eq!(c.working_day_minutes(), 510);
        let paris = |d, h, m| {
            chrono_tz::Europe::Paris
                .with_ymd_and_hms(2026, 3, d, h, m, 0)
                .single()
                .expect("valid")
                .with_timezone(&Utc)
        };
        // Friday 27/3 17:00 + 1 h: Monday 30/3 08:30 local, across the switch to summer time.
        assert_eq!(
            c.add(paris(27, 17, 0), Duration::WorkingHours(1)),
            paris(30, 8, 30)
        );
    }

    #[test]
    fn malformed_files_name_the_line() {
        let text = "timezone: Asia/Ho_Chi_Minh\nholidays:\n  - { date: 2026-01-01, name: A }\n  - { date: 2026-02-30, name: B }\n";
        let err = Calendar::from_yaml_str(text, "holidays.yaml").unwrap_err();
        assert!(err.to_string().starts_with("holidays.yaml:4:"), "{err}");
        assert_eq!(
            problem(Err(err)),
            (4, Problem::BadDate("2026-02-30".into()))
        );

        // YAML syntax error.
        let (line, p) = problem(Calendar::from_yaml_str(
            "holidays:\n  - { date: 2026-01-01\n",
            "x",
        ));
        assert!(matches!(p, Problem::Yaml(_)), "{p:?}");
        assert!(line >= 2, "{line}");

        // Unknown key, with its line.
        let (line, p) = problem(Calendar::from_yaml_str("timezone: UTC\nholiday: []\n", "x"));
        assert_eq!(line, 2);
        assert!(
            matches!(&p, Problem::Yaml(m) if m.contains("holiday")),
            "{p:?}"
        );

        let text = "holidays:\n  - { from: 2026-02-22, to: 2026-02-14, name: Tết }\n";
        assert_eq!(
            problem(Calendar::from_yaml_str(text, "x")),
            (
                2,
                Problem::EndBeforeStart {
                    from: day(2026, 2, 22),
                    to: day(2026, 2, 14)
                }
            )
        );
        let text = "holidays:\n  - { from: 2026-02-14, to: 2027-02-22, name: Tết }\n";
        assert!(matches!(
            problem(Calendar::from_yaml_str(text, "x")),
            (2, Problem::TooLong { .. })
        ));
        let text = "holidays:\n  - { from: 2026-02-14, name: Tết }\n";
        assert_eq!(
            problem(Calendar::from_yaml_str(text, "x")),
            (2, Problem::HolidayShape)
        );

        let text = "working_hours:\n  - { start: \"07:30\", end: \"11:30\" }\n  - { start: \"13:00\", end: \"17:61\" }\n";
        assert_eq!(
            problem(Calendar::from_yaml_str(text, "x")),
            (3, Problem::BadTime("17:61".into()))
        );
        let text = "working_hours:\n  - { start: \"11:30\", end: \"07:30\" }\n";
        assert!(matches!(
            problem(Calendar::from_yaml_str(text, "x")),
            (2, Problem::HoursReversed { .. })
        ));
        let text = "working_hours:\n  - { start: \"07:30\", end: \"12:00\" }\n  - { start: \"11:00\", end: \"17:00\" }\n";
        assert!(matches!(
            problem(Calendar::from_yaml_str(text, "x")),
            (3, Problem::HoursOverlap { .. })
        ));
        assert_eq!(
            problem(Calendar::from_yaml_str("working_hours: []\n", "x")).1,
            Problem::NoWorkingHours
        );

        let text = "working_weekends:\n  - 2026-01-10\n  - 2026-01-09\n";
        assert_eq!(
            problem(Calendar::from_yaml_str(text, "x")),
            (
                3,
                Problem::NotWeekend {
                    date: day(2026, 1, 9),
                    weekday: Weekday::Fri
                }
            )
        );
        let (line, p) = problem(Calendar::from_yaml_str("\ntimezone: Asia/Saigonn\n", "x"));
        assert_eq!(
            (line, p),
            (2, Problem::UnknownTimezone("Asia/Saigonn".into()))
        );
    }

    #[test]
    fn load_reports_the_path() {
        let err = Calendar::load(Path::new("/nonexistent/holidays.yaml")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent/holidays.yaml: cannot read"),
            "{err}"
        );
    }

    #[test]
    fn parse_time_accepts_only_clock_times() {
        assert_eq!(parse_time("07:30"), Some(450));
        assert_eq!(parse_time("7:30"), Some(450));
        assert_eq!(parse_time("24:00"), Some(1440));
        for bad in [
            "24:01",
            "25:00",
            "7:3",
            "+7:30",
            "07:30:00",
            "0730",
            "",
            ":",
            "07:60",
            "٠٧:٣٠",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }
}
