-- call-summary: per day (or per calling user), how many calls were tried,
-- how many were answered, the answer-seizure ratio, the average time to
-- ring and the average length of an answered call. `call_tally` (see
-- query/src/call_tally.rs) computes these figures in one pass over the rows.
SELECT
    {group_name},
    tally['calls'] AS calls,
    tally['answered'] AS answered,
    round(100.0 * tally['answered'] / tally['calls'], 2) AS asr_percent,
    round(tally['avg_setup_ms'], 1) AS avg_setup_ms,
    round(tally['avg_answered_duration_ms'] / 1000.0, 1) AS avg_duration_s
FROM (
    SELECT
        {group_label} AS {group_name},
        call_tally(disposition, setup_ms, duration_ms) AS tally
    FROM calls
    WHERE {in_range}
      AND ({user} IS NULL OR caller = {user} OR callee = {user})
    GROUP BY {group}
)
ORDER BY {group_name}
