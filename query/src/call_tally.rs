//! `call_tally(disposition, setup_ms, duration_ms)`: the figures of
//! `call-summary` as one aggregate.
//!
//! The report needs five aggregates over the same rows: calls, answered
//! calls, the answer-seizure ratio, the average setup time and the average
//! length of an answered call. As five built-in aggregates with `FILTER`
//! clauses, DataFusion compares `disposition` with `'answered'` once per
//! filter and walks every batch five times, which made the report about half
//! again as slow as DuckDB on the same files. This aggregate reads each row
//! once and returns a struct:
//!
//! | field | meaning |
//! |---|---|
//! | `calls` | rows |
//! | `answered` | rows whose disposition is `answered` |
//! | `avg_setup_ms` | average of the non-null `setup_ms`, NULL if none |
//! | `avg_answered_duration_ms` | average of the non-null `duration_ms` of answered rows, NULL if none |
//!
//! A group's sums are kept as `f64`, as DataFusion's `avg` keeps them, so the
//! figures equal those of `avg(...)` and no sum of hostile durations can
//! overflow.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, StructArray,
};
use datafusion::arrow::buffer::BooleanBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields, Float64Type, Int64Type};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature,
    TypeSignature, Volatility,
};

/// The value `disposition` has for an answered call.
const ANSWERED: &str = "answered";

/// The aggregate, as registered with a session.
pub fn call_tally_udaf() -> AggregateUDF {
    AggregateUDF::from(CallTally::new())
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct CallTally {
    signature: Signature,
}

impl CallTally {
    fn new() -> Self {
        let args =
            |text: DataType| TypeSignature::Exact(vec![text, DataType::Int64, DataType::Int64]);
        CallTally {
            signature: Signature::one_of(
                vec![
                    args(DataType::Utf8View),
                    args(DataType::Utf8),
                    args(DataType::LargeUtf8),
                ],
                Volatility::Immutable,
            ),
        }
    }
}

fn output_fields() -> Fields {
    Fields::from(vec![
        Field::new("calls", DataType::Int64, false),
        Field::new("answered", DataType::Int64, false),
        Field::new("avg_setup_ms", DataType::Float64, true),
        Field::new("avg_answered_duration_ms", DataType::Float64, true),
    ])
}

impl AggregateUDFImpl for CallTally {
    fn name(&self) -> &str {
        "call_tally"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Struct(output_fields()))
    }

    fn is_nullable(&self) -> bool {
        false
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let field = |part: &str, data_type: DataType| {
            Arc::new(Field::new(
                format_state_name(args.name, part),
                data_type,
                false,
            ))
        };
        Ok(vec![
            field("calls", DataType::Int64),
            field("answered", DataType::Int64),
            field("setup_ms_sum", DataType::Float64),
            field("setup_ms_count", DataType::Int64),
            field("answered_duration_ms_sum", DataType::Float64),
            field("answered_duration_ms_count", DataType::Int64),
        ])
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(SingleTally(Tallies::default())))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        _args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(Tallies::default()))
    }
}

/// One group's running figures.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Tally {
    calls: i64,
    answered: i64,
    setup_ms_sum: f64,
    setup_ms_count: i64,
    answered_duration_ms_sum: f64,
    answered_duration_ms_count: i64,
}

impl Tally {
    fn add_run(&mut self, run: &Run) {
        self.merge(&Tally {
            calls: run.calls,
            answered: run.answered,
            setup_ms_sum: run.setup_ms_sum as f64,
            setup_ms_count: run.setup_ms_count,
            answered_duration_ms_sum: run.duration_ms_sum as f64,
            answered_duration_ms_count: run.duration_ms_count,
        });
    }

    fn merge(&mut self, other: &Tally) {
        self.calls += other.calls;
        self.answered += other.answered;
        self.setup_ms_sum += other.setup_ms_sum;
        self.setup_ms_count += other.setup_ms_count;
        self.answered_duration_ms_sum += other.answered_duration_ms_sum;
        self.answered_duration_ms_count += other.answered_duration_ms_count;
    }
}

/// The figures of a run of rows of one group, kept in registers.
#[derive(Default)]
struct Run {
    calls: i64,
    answered: i64,
    setup_ms_sum: i128,
    setup_ms_count: i64,
    duration_ms_sum: i128,
    duration_ms_count: i64,
}

fn average(sum: f64, count: i64) -> Option<f64> {
    (count > 0).then(|| sum / count as f64)
}

/// The figures of every group, indexed by DataFusion's group index.
#[derive(Debug, Default)]
struct Tallies {
    groups: Vec<Tally>,
}

impl Tallies {
    fn resize(&mut self, total_num_groups: usize) {
        if self.groups.len() < total_num_groups {
            self.groups.resize(total_num_groups, Tally::default());
        }
    }

    /// Adds the rows of one input batch, `group_of(row)` naming each row's group.
    fn add_rows(
        &mut self,
        values: &[ArrayRef],
        group_of: impl Fn(usize) -> usize,
        filter: Option<&BooleanArray>,
    ) -> Result<()> {
        let [disposition, setup, duration] = values else {
            return exec_err!("call_tally takes 3 arguments, got {}", values.len());
        };
        let setup = setup.as_primitive::<Int64Type>();
        let duration = duration.as_primitive::<Int64Type>();
        // Reports read text as views; `sipvault sql` reads the archive's
        // `Utf8`, cast here so that one comparison serves both.
        let disposition = match disposition.data_type() {
            DataType::Utf8View => Arc::clone(disposition),
            DataType::Utf8 | DataType::LargeUtf8 => cast(disposition, &DataType::Utf8View)?,
            other => return exec_err!("call_tally: disposition of type {other}"),
        };
        let text = disposition.as_string_view();
        let answered = answered_view();
        let views = text.views();
        self.add_rows_with(
            |row| (views[row] == answered) & text.is_valid(row),
            setup,
            duration,
            group_of,
            filter,
        );
        Ok(())
    }

    /// A batch of one group (every batch of a day's file) is tallied over
    /// bitmaps by [`single_group_run`]; any other is walked in runs of one
    /// group, summed in registers. Either way the sums are exact `i128`,
    /// which cannot overflow within a batch, folded into the group's `f64`
    /// at the end of the run.
    fn add_rows_with(
        &mut self,
        is_answered: impl Fn(usize) -> bool,
        setup: &Int64Array,
        duration: &Int64Array,
        group_of: impl Fn(usize) -> usize,
        filter: Option<&BooleanArray>,
    ) {
        let rows = setup.len();
        if rows > 0 && (1..rows).all(|row| group_of(row) == group_of(0)) {
            let run = single_group_run(is_answered, setup, duration, filter);
            self.groups[group_of(0)].add_run(&run);
            return;
        }
        let (setup_values, setup_nulls) = (setup.values(), setup.nulls());
        let (duration_values, duration_nulls) = (duration.values(), duration.nulls());
        let mut start = 0;
        while start < rows {
            let group = group_of(start);
            let mut end = start + 1;
            while end < rows && group_of(end) == group {
                end += 1;
            }
            let mut run = Run::default();
            for row in start..end {
                if let Some(filter) = filter
                    && !(filter.is_valid(row) && filter.value(row))
                {
                    continue;
                }
                // Branch-free: whether a call was answered is as good as
                // random from row to row, and a mispredicted branch per row
                // cost more than all the arithmetic.
                run.calls += 1;
                let setup_valid = setup_nulls.is_none_or(|n| n.is_valid(row));
                run.setup_ms_sum += i128::from(setup_values[row] & -i64::from(setup_valid));
                run.setup_ms_count += i64::from(setup_valid);
                let answered = is_answered(row);
                run.answered += i64::from(answered);
                let duration_valid = answered & duration_nulls.is_none_or(|n| n.is_valid(row));
                run.duration_ms_sum +=
                    i128::from(duration_values[row] & -i64::from(duration_valid));
                run.duration_ms_count += i64::from(duration_valid);
            }
            self.groups[group].add_run(&run);
            start = end;
        }
    }

    /// Adds the state arrays of partial aggregates (see `state_fields`).
    fn merge_states(
        &mut self,
        states: &[ArrayRef],
        group_of: impl Fn(usize) -> usize,
    ) -> Result<()> {
        let [
            calls,
            answered,
            setup_sum,
            setup_count,
            duration_sum,
            duration_count,
        ] = states
        else {
            return exec_err!("call_tally: {} state columns, expected 6", states.len());
        };
        let int = |a: &ArrayRef| a.as_primitive::<Int64Type>().values().clone();
        let float = |a: &ArrayRef| a.as_primitive::<Float64Type>().values().clone();
        let (calls, answered, setup_count, duration_count) = (
            int(calls),
            int(answered),
            int(setup_count),
            int(duration_count),
        );
        let (setup_sum, duration_sum) = (float(setup_sum), float(duration_sum));
        for row in 0..calls.len() {
            self.groups[group_of(row)].merge(&Tally {
                calls: calls[row],
                answered: answered[row],
                setup_ms_sum: setup_sum[row],
                setup_ms_count: setup_count[row],
                answered_duration_ms_sum: duration_sum[row],
                answered_duration_ms_count: duration_count[row],
            });
        }
        Ok(())
    }
}

/// The figures of a whole batch that falls in one group (every batch of a
/// report by day: a file holds one day), column by column over bitmaps, in
/// loops the compiler vectorizes.
fn single_group_run(
    is_answered: impl Fn(usize) -> bool,
    setup: &Int64Array,
    duration: &Int64Array,
    filter: Option<&BooleanArray>,
) -> Run {
    let rows = setup.len();
    let valid = |array: &Int64Array| match array.nulls() {
        Some(nulls) => nulls.inner().clone(),
        None => BooleanBuffer::new_set(rows),
    };
    let counted = match filter {
        Some(filter) => match filter.nulls() {
            Some(nulls) => filter.values() & nulls.inner(),
            None => filter.values().clone(),
        },
        None => BooleanBuffer::new_set(rows),
    };
    let answered = &BooleanBuffer::collect_bool(rows, is_answered) & &counted;
    let setup_counted = &valid(setup) & &counted;
    let duration_counted = &valid(duration) & &answered;
    let (setup_ms_sum, setup_ms_count) = masked_sum(setup.values(), &setup_counted);
    let (duration_ms_sum, duration_ms_count) = masked_sum(duration.values(), &duration_counted);
    Run {
        calls: counted.count_set_bits() as i64,
        answered: answered.count_set_bits() as i64,
        setup_ms_sum,
        setup_ms_count,
        duration_ms_sum,
        duration_ms_count,
    }
}

/// The sum and count of the values whose bit in `mask` is set.
///
/// Each value is added as its high and low 32 bits, in `i64`/`u64`
/// accumulators that a batch cannot overflow, so the loop vectorizes and
/// the sum is still exact.
fn masked_sum(values: &[i64], mask: &BooleanBuffer) -> (i128, i64) {
    let chunks = mask.bit_chunks();
    let (mut high, mut low) = (0i64, 0u64);
    let mut add = |bits: u64, values: &[i64]| {
        for (bit, value) in values.iter().enumerate() {
            let value = value & -(((bits >> bit) & 1) as i64);
            high += value >> 32;
            low += value as u64 & 0xffff_ffff;
        }
    };
    let mut whole = values.chunks_exact(64);
    for (bits, values) in chunks.iter().zip(&mut whole) {
        add(bits, values);
    }
    add(chunks.remainder_bits(), whole.remainder());
    let sum = (i128::from(high) << 32) + i128::from(low);
    (sum, mask.count_set_bits() as i64)
}

/// The view of the inline string `answered`: its length in the low 32 bits,
/// its bytes after, zero padded (strings of up to 12 bytes are stored inline).
fn answered_view() -> u128 {
    let mut bytes = [0u8; 16];
    bytes[..4].copy_from_slice(&(ANSWERED.len() as u32).to_le_bytes());
    bytes[4..4 + ANSWERED.len()].copy_from_slice(ANSWERED.as_bytes());
    u128::from_le_bytes(bytes)
}

fn state_arrays(tallies: &[Tally]) -> Vec<ArrayRef> {
    let int = |f: fn(&Tally) -> i64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(tallies.iter().map(f)))
    };
    let float = |f: fn(&Tally) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(tallies.iter().map(f)))
    };
    vec![
        int(|t| t.calls),
        int(|t| t.answered),
        float(|t| t.setup_ms_sum),
        int(|t| t.setup_ms_count),
        float(|t| t.answered_duration_ms_sum),
        int(|t| t.answered_duration_ms_count),
    ]
}

fn output_array(tallies: &[Tally]) -> StructArray {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(
            tallies.iter().map(|t| t.calls),
        )),
        Arc::new(Int64Array::from_iter_values(
            tallies.iter().map(|t| t.answered),
        )),
        Arc::new(Float64Array::from_iter(
            tallies
                .iter()
                .map(|t| average(t.setup_ms_sum, t.setup_ms_count)),
        )),
        Arc::new(Float64Array::from_iter(tallies.iter().map(|t| {
            average(t.answered_duration_ms_sum, t.answered_duration_ms_count)
        }))),
    ];
    StructArray::new(output_fields(), columns, None)
}

impl GroupsAccumulator for Tallies {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.resize(total_num_groups);
        self.add_rows(values, |row| group_indices[row], opt_filter)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        Ok(Arc::new(output_array(
            &emit_to.take_needed(&mut self.groups),
        )))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        Ok(state_arrays(&emit_to.take_needed(&mut self.groups)))
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.resize(total_num_groups);
        self.merge_states(values, |row| group_indices[row])
    }

    /// Each input row as the state of a group of its own, for when
    /// DataFusion skips partial aggregation (many groups of few rows).
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let mut rows = Tallies::default();
        rows.resize(values.first().map_or(0, |v| v.len()));
        rows.add_rows(values, |row| row, opt_filter)?;
        Ok(state_arrays(&rows.groups))
    }

    fn size(&self) -> usize {
        self.groups.capacity() * size_of::<Tally>()
    }
}

/// The aggregate without GROUP BY: one group.
#[derive(Debug)]
struct SingleTally(Tallies);

impl Accumulator for SingleTally {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.0.resize(1);
        self.0.add_rows(values, |_| 0, None)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        self.0.resize(1);
        Ok(ScalarValue::Struct(Arc::new(output_array(&self.0.groups))))
    }

    fn size(&self) -> usize {
        size_of_val(self) + self.0.size()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.0.resize(1);
        state_arrays(&self.0.groups)
            .iter()
            .map(|column| ScalarValue::try_from_array(column, 0))
            .collect()
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.0.resize(1);
        self.0.merge_states(states, |_| 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{LargeStringArray, StringArray, StringViewArray};
    use datafusion::prelude::SessionContext;

    fn batch_values(disposition: ArrayRef) -> Vec<ArrayRef> {
        vec![
            disposition,
            Arc::new(Int64Array::from(vec![
                Some(100),
                None,
                Some(300),
                Some(400),
            ])),
            Arc::new(Int64Array::from(vec![
                Some(5000),
                Some(7000),
                None,
                Some(9000),
            ])),
        ]
    }

    const DISPOSITIONS: [Option<&str>; 4] = [
        Some("answered"),
        Some("answered"),
        Some("answered"),
        Some("a disposition longer than twelve bytes"),
    ];

    #[test]
    fn every_text_type_of_disposition_gives_the_same_tally() {
        let arrays: [ArrayRef; 3] = [
            Arc::new(StringViewArray::from_iter(DISPOSITIONS)),
            Arc::new(StringArray::from_iter(DISPOSITIONS)),
            Arc::new(LargeStringArray::from_iter(DISPOSITIONS)),
        ];
        for disposition in arrays {
            let data_type = disposition.data_type().clone();
            let mut tallies = Tallies::default();
            tallies.resize(1);
            tallies
                .add_rows(&batch_values(disposition), |_| 0, None)
                .unwrap();
            assert_eq!(
                tallies.groups[0],
                Tally {
                    calls: 4,
                    answered: 3,
                    setup_ms_sum: 800.0,
                    setup_ms_count: 3,
                    answered_duration_ms_sum: 12000.0,
                    answered_duration_ms_count: 2,
                },
                "disposition as {data_type}"
            );
        }
    }

    #[test]
    fn null_dispositions_and_filtered_rows_count_as_not_answered_and_not_at_all() {
        let disposition: ArrayRef = Arc::new(StringViewArray::from_iter([
            Some("answered"),
            None,
            Some("busy"),
            Some("answered"),
        ]));
        let filter = BooleanArray::from(vec![Some(true), Some(true), Some(true), None]);
        let mut tallies = Tallies::default();
        GroupsAccumulator::update_batch(
            &mut tallies,
            &batch_values(disposition),
            &[0, 1, 1, 0],
            Some(&filter),
            2,
        )
        .unwrap();
        assert_eq!(
            (tallies.groups[0].calls, tallies.groups[0].answered),
            (1, 1)
        );
        assert_eq!(
            (tallies.groups[1].calls, tallies.groups[1].answered),
            (2, 0)
        );
        assert_eq!(tallies.groups[1].setup_ms_count, 1);
    }

    #[test]
    fn partial_states_merge_to_the_tally_of_all_rows() {
        let mut part = Tallies::default();
        GroupsAccumulator::update_batch(
            &mut part,
            &batch_values(Arc::new(StringViewArray::from_iter(DISPOSITIONS))),
            &[0, 1, 0, 1],
            None,
            2,
        )
        .unwrap();
        let state = GroupsAccumulator::state(&mut part, EmitTo::All).unwrap();
        let mut whole = Tallies::default();
        whole.merge_batch(&state, &[0, 0], 1).unwrap();
        whole.merge_batch(&state, &[0, 0], 1).unwrap();
        assert_eq!(whole.groups[0].calls, 8);
        assert_eq!(whole.groups[0].answered, 6);
        assert_eq!(whole.groups[0].setup_ms_sum, 1600.0);
    }

    /// A batch in one group goes through the bitmap path, a batch of several
    /// groups row by row; both must give the same figures, also for a length
    /// that is not a multiple of 64.
    #[test]
    fn the_bitmap_path_and_the_row_path_agree() {
        let rows = 1_000;
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut value = |n: u64| (!n.is_multiple_of(7)).then(|| (next() % 100_000) as i64 - 50_000);
        let dispositions: Vec<Option<&str>> = (0..rows)
            .map(|i| match i % 5 {
                0 | 2 | 3 => Some("answered"),
                1 => Some("busy"),
                _ => None,
            })
            .collect();
        let setup: Vec<Option<i64>> = (0..rows as u64).map(|i| value(i * 3 + 1)).collect();
        let duration: Vec<Option<i64>> = (0..rows as u64).map(|i| value(i * 5 + 2)).collect();
        let values: Vec<ArrayRef> = vec![
            Arc::new(StringViewArray::from_iter(dispositions)),
            Arc::new(Int64Array::from(setup)),
            Arc::new(Int64Array::from(duration)),
        ];
        let filter =
            BooleanArray::from_iter((0..rows).map(|i| (i % 11 != 0).then_some(i % 13 != 0)));

        let mut one_group = Tallies::default();
        GroupsAccumulator::update_batch(&mut one_group, &values, &vec![0; rows], Some(&filter), 1)
            .unwrap();
        let mut two_groups = Tallies::default();
        let alternating: Vec<usize> = (0..rows).map(|i| (i / 3) % 2).collect();
        GroupsAccumulator::update_batch(&mut two_groups, &values, &alternating, Some(&filter), 2)
            .unwrap();
        let mut merged = two_groups.groups[0];
        merged.merge(&two_groups.groups[1]);
        assert_eq!(one_group.groups[0], merged);
        assert!(merged.calls > 0 && merged.answered > 0 && merged.answered_duration_ms_count > 0);
    }

    #[test]
    fn masked_sums_are_exact_at_the_ends_of_the_i64_range() {
        let values: Vec<i64> = (0..200)
            .map(|i| match i % 3 {
                0 => i64::MAX,
                1 => i64::MIN,
                _ => i64::MAX - i,
            })
            .collect();
        let mask = BooleanBuffer::collect_bool(values.len(), |i| i % 4 != 1);
        let expected: i128 = values
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 4 != 1)
            .map(|(_, v)| i128::from(*v))
            .sum();
        assert_eq!(masked_sum(&values, &mask), (expected, 150));
    }

    /// Through SQL, grouped and not, the figures equal the built-in aggregates'.
    #[tokio::test]
    async fn sql_figures_equal_the_built_in_aggregates() {
        let ctx = SessionContext::new();
        ctx.register_udaf(call_tally_udaf());
        let sql = |q: &str| {
            let ctx = ctx.clone();
            let q = q.to_string();
            async move {
                let batches = ctx.sql(&q).await.unwrap().collect().await.unwrap();
                datafusion::arrow::util::pretty::pretty_format_batches(&batches)
                    .unwrap()
                    .to_string()
            }
        };
        let rows = "(VALUES ('d1', 'answered', 100, 5000), ('d1', 'busy', 300, NULL), \
                    ('d2', 'answered', NULL, 1000), ('d2', 'answered', 50, NULL), \
                    ('d3', 'cancelled', NULL, NULL)) AS t(day, disposition, setup_ms, duration_ms)";
        let tally = format!(
            "SELECT day, s['calls'] AS calls, s['answered'] AS answered, \
             s['avg_setup_ms'] AS setup, s['avg_answered_duration_ms'] AS duration FROM \
             (SELECT day, call_tally(disposition, CAST(setup_ms AS BIGINT), \
             CAST(duration_ms AS BIGINT)) AS s FROM {rows} GROUP BY day) ORDER BY day"
        );
        let built_in = format!(
            "SELECT day, count(*) AS calls, \
             count(*) FILTER (WHERE disposition = 'answered') AS answered, \
             avg(setup_ms) AS setup, \
             avg(duration_ms) FILTER (WHERE disposition = 'answered') AS duration \
             FROM {rows} GROUP BY day ORDER BY day"
        );
        assert_eq!(sql(&tally).await, sql(&built_in).await);
        let whole = sql(&format!(
            "SELECT call_tally(disposition, CAST(setup_ms AS BIGINT), \
             CAST(duration_ms AS BIGINT))['calls'] AS calls FROM {rows}"
        ))
        .await;
        assert!(whole.contains("| 5     |"), "{whole}");
    }
}
