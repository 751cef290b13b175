//! CSV rows written straight into a byte buffer.
//!
//! A report can have tens of millions of rows, so cells are not formatted
//! into a `String` each: text is copied as it is (quoted when it must be),
//! UTC timestamps are written by [`UtcTimestampWriter`], and every other
//! type goes through Arrow's display formatter into one reused buffer. The
//! text is the same as Arrow's display of each value: timestamps RFC 3339,
//! lists `[a, b]`, binary values lower-case hex; nulls are empty cells.

use std::fmt::Write as _;

use chrono::{Datelike, NaiveDate};
use datafusion::arrow::array::{
    Array, AsArray, LargeStringArray, RecordBatch, StringArray, StringViewArray,
    TimestampNanosecondArray,
};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

/// Appends one CSV field (RFC 4180: quoted when it holds a comma, a quote
/// or a line break, quotes doubled).
pub(crate) fn push_field(out: &mut Vec<u8>, value: &str) {
    if value
        .bytes()
        .any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r'))
    {
        out.push(b'"');
        for part in value.split_inclusive('"') {
            out.extend_from_slice(part.as_bytes());
            if part.ends_with('"') {
                out.push(b'"');
            }
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(value.as_bytes());
    }
}

/// Appends one CSV record and its `\n`.
pub(crate) fn push_record<'a>(out: &mut Vec<u8>, fields: impl Iterator<Item = &'a str>) {
    for (i, f) in fields.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_field(out, f);
    }
    out.push(b'\n');
}

/// Appends every row of `batch` as CSV records (no header).
pub(crate) fn push_batch(out: &mut Vec<u8>, batch: &RecordBatch) -> Result<(), ArrowError> {
    let options = FormatOptions::default().with_display_error(true);
    let mut columns = batch
        .columns()
        .iter()
        .map(|c| CsvColumn::new(c.as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()?;
    let mut scratch = String::new();
    for row in 0..batch.num_rows() {
        for (i, column) in columns.iter_mut().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            column.push_cell(row, out, &mut scratch);
        }
        out.push(b'\n');
    }
    Ok(())
}

/// How the cells of one column are written.
enum CsvColumn<'a> {
    Utf8(&'a StringArray),
    LargeUtf8(&'a LargeStringArray),
    Utf8View(&'a StringViewArray),
    UtcNanos(&'a TimestampNanosecondArray, UtcTimestampWriter),
    Formatted(&'a dyn Array, ArrayFormatter<'a>),
}

impl<'a> CsvColumn<'a> {
    fn new(array: &'a dyn Array, options: &FormatOptions<'a>) -> Result<Self, ArrowError> {
        Ok(match array.data_type() {
            DataType::Utf8 => CsvColumn::Utf8(array.as_string::<i32>()),
            DataType::LargeUtf8 => CsvColumn::LargeUtf8(array.as_string::<i64>()),
            DataType::Utf8View => CsvColumn::Utf8View(array.as_string_view()),
            DataType::Timestamp(TimeUnit::Nanosecond, Some(tz)) if tz.as_ref() == "UTC" => {
                CsvColumn::UtcNanos(array.as_primitive(), UtcTimestampWriter::default())
            }
            _ => CsvColumn::Formatted(array, ArrayFormatter::try_new(array, options)?),
        })
    }

    fn push_cell(&mut self, row: usize, out: &mut Vec<u8>, scratch: &mut String) {
        match self {
            CsvColumn::Utf8(a) if a.is_valid(row) => push_field(out, a.value(row)),
            CsvColumn::LargeUtf8(a) if a.is_valid(row) => push_field(out, a.value(row)),
            CsvColumn::Utf8View(a) if a.is_valid(row) => push_field(out, a.value(row)),
            CsvColumn::UtcNanos(a, writer) if a.is_valid(row) => writer.push(out, a.value(row)),
            CsvColumn::Formatted(a, formatter) if a.is_valid(row) => {
                scratch.clear();
                // Writing to a String cannot fail, and the formatter was
                // built to write a value's error as text instead of failing.
                let _ = write!(scratch, "{}", formatter.value(row));
                push_field(out, scratch);
            }
            _ => {}
        }
    }
}

const NANOS_PER_SECOND: i64 = 1_000_000_000;
const NANOS_PER_DAY: i64 = 86_400 * NANOS_PER_SECOND;
/// Days from 0001-01-01 (chrono's day 1) to 1970-01-01.
const UNIX_EPOCH_DAYS_FROM_CE: i64 = 719_163;

/// Writes ns since the Unix epoch as RFC 3339 UTC the way Arrow displays a
/// `Timestamp(ns, "UTC")` (chrono's `SecondsFormat::AutoSi` with `Z`): no
/// fraction, or 3, 6 or 9 digits, as few as show every non-zero digit.
///
/// Rows of a report come mostly in time order, so the date part of the
/// previous value is kept and reused while the day stays the same.
#[derive(Default)]
pub(crate) struct UtcTimestampWriter {
    /// Days since the Unix epoch of `date`, when `date` is filled.
    day: Option<i64>,
    /// `YYYY-MM-DDT` of `day`.
    date: [u8; 11],
}

impl UtcTimestampWriter {
    pub(crate) fn push(&mut self, out: &mut Vec<u8>, time_ns: i64) {
        let day = time_ns.div_euclid(NANOS_PER_DAY);
        let of_day = time_ns.rem_euclid(NANOS_PER_DAY);
        if self.day != Some(day) {
            self.date = date_prefix(day);
            self.day = Some(day);
        }
        out.extend_from_slice(&self.date);
        let seconds = of_day / NANOS_PER_SECOND;
        push_two_digits(out, seconds / 3_600);
        out.push(b':');
        push_two_digits(out, seconds / 60 % 60);
        out.push(b':');
        push_two_digits(out, seconds % 60);
        let nanos = of_day % NANOS_PER_SECOND;
        let (fraction, digits) = if nanos == 0 {
            (0, 0)
        } else if nanos % 1_000_000 == 0 {
            (nanos / 1_000_000, 3)
        } else if nanos % 1_000 == 0 {
            (nanos / 1_000, 6)
        } else {
            (nanos, 9)
        };
        if digits > 0 {
            out.push(b'.');
            push_zero_padded(out, fraction, digits);
        }
        out.push(b'Z');
    }
}

/// `YYYY-MM-DDT` of a day since the Unix epoch. Every i64 of nanoseconds
/// falls between the years 1677 and 2262, so the year has four digits.
fn date_prefix(day: i64) -> [u8; 11] {
    let date = i32::try_from(day + UNIX_EPOCH_DAYS_FROM_CE)
        .ok()
        .and_then(NaiveDate::from_num_days_from_ce_opt)
        .expect("an i64 of nanoseconds is a date chrono can represent");
    let mut text = Vec::with_capacity(11);
    push_zero_padded(&mut text, i64::from(date.year()), 4);
    text.push(b'-');
    push_two_digits(&mut text, i64::from(date.month()));
    text.push(b'-');
    push_two_digits(&mut text, i64::from(date.day()));
    text.push(b'T');
    text.try_into()
        .expect("a four-digit year makes an 11-byte prefix")
}

fn push_two_digits(out: &mut Vec<u8>, value: i64) {
    out.extend_from_slice(&[b'0' + (value / 10) as u8, b'0' + (value % 10) as u8]);
}

/// `value` (not negative, fewer than `digits` digits) with leading zeros.
fn push_zero_padded(out: &mut Vec<u8>, mut value: i64, digits: usize) {
    let start = out.len();
    out.resize(start + digits, b'0');
    for slot in out[start..].iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{ArrayRef, Int64Array, ListArray, UInt16Array};
    use datafusion::arrow::datatypes::{Field, Int32Type, Schema};

    use super::*;

    /// What the writer replaces: every cell through Arrow's display formatter.
    fn csv_by_display(batch: &RecordBatch) -> String {
        let options = FormatOptions::default().with_display_error(true);
        let formatters: Vec<ArrayFormatter> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        let mut out = Vec::new();
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = formatters
                .iter()
                .zip(batch.columns())
                .map(|(f, c)| {
                    if c.is_null(row) {
                        String::new()
                    } else {
                        f.value(row).to_string()
                    }
                })
                .collect();
            push_record(&mut out, cells.iter().map(String::as_str));
        }
        String::from_utf8(out).unwrap()
    }

    fn written(batch: &RecordBatch) -> String {
        let mut out = Vec::new();
        push_batch(&mut out, batch).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn utc_timestamps_are_written_as_arrow_displays_them() {
        let mut values = vec![
            0,
            1,
            -1,
            999,
            1_000,
            1_000_000,
            20_000_000,
            123_456_789,
            -NANOS_PER_DAY,
            -NANOS_PER_DAY - 1,
            951_782_400 * NANOS_PER_SECOND, // 2000-02-29
            1_764_064_800_123_456_000,
            1_764_064_799_999_999_999,
            i64::MIN,
            i64::MAX,
        ];
        // A spread of instants over the whole range, with every fraction width.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for i in 0..20_000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let v = x as i64;
            values.push(match i % 4 {
                0 => v,
                1 => v - v % 1_000,
                2 => v - v % 1_000_000,
                _ => v - v % NANOS_PER_SECOND,
            });
        }
        let array = TimestampNanosecondArray::from(values).with_timezone("UTC");
        let batch = RecordBatch::try_from_iter([("t", Arc::new(array) as ArrayRef)]).unwrap();
        assert_eq!(written(&batch), csv_by_display(&batch));
    }

    #[test]
    fn rows_match_arrow_display_for_every_kind_of_column() {
        let text: ArrayRef = Arc::new(StringArray::from(vec![
            Some("plain"),
            Some("a, b"),
            Some("say \"hi\""),
            None,
            Some("two\nlines\r"),
            Some(""),
        ]));
        let view: ArrayRef = Arc::new(StringViewArray::from(vec![
            Some("a longer string than twelve bytes"),
            None,
            Some("x\"y"),
            Some("é, ü"),
            Some("short"),
            Some("\"\""),
        ]));
        let large: ArrayRef = Arc::new(LargeStringArray::from(vec![
            Some("l"),
            Some("m,n"),
            None,
            Some("o"),
            Some("p"),
            Some("q"),
        ]));
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![
            Some(-5),
            None,
            Some(i64::MAX),
            Some(0),
            Some(42),
            Some(i64::MIN),
        ]));
        let codes: ArrayRef = Arc::new(UInt16Array::from(vec![
            Some(200),
            Some(486),
            None,
            Some(603),
            Some(0),
            Some(u16::MAX),
        ]));
        let times: ArrayRef = Arc::new(
            TimestampNanosecondArray::from(vec![
                Some(1_764_064_800_000_000_000),
                None,
                Some(1_764_064_800_020_000_000),
                Some(1),
                Some(-1),
                Some(1_764_064_800_000_001_000),
            ])
            .with_timezone("UTC"),
        );
        let offset_times: ArrayRef = Arc::new(
            TimestampNanosecondArray::from(vec![Some(1_764_064_800_000_000_000); 6])
                .with_timezone("+02:00"),
        );
        let list: ArrayRef = Arc::new(ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
            Some(vec![Some(1), Some(2)]),
            None,
            Some(vec![]),
            Some(vec![None]),
            Some(vec![Some(3)]),
            Some(vec![Some(4), Some(5), Some(6)]),
        ]));
        let schema = Arc::new(Schema::new(vec![
            Field::new("text", DataType::Utf8, true),
            Field::new("view", DataType::Utf8View, true),
            Field::new("large", DataType::LargeUtf8, true),
            Field::new("ints", DataType::Int64, true),
            Field::new("codes", DataType::UInt16, true),
            Field::new("times", times.data_type().clone(), true),
            Field::new("offset_times", offset_times.data_type().clone(), true),
            Field::new("list", list.data_type().clone(), true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![text, view, large, ints, codes, times, offset_times, list],
        )
        .unwrap();
        let out = written(&batch);
        assert_eq!(out, csv_by_display(&batch));
        assert!(
            out.starts_with("plain,a longer string than twelve bytes,l,-5,200,2025-11-25T10:00:00Z,2025-11-25T12:00:00+02:00,\"[1, 2]\"\n"),
            "{out}"
        );
        assert!(out.contains("\n\"say \"\"hi\"\"\",\"x\"\"y\","), "{out}");
    }
}
